"""The training corpus: real text from packages that install offline, cleaned, deduplicated,
split and recorded.

Pretraining text: the Python 3.11 documentation (``python_docs``, reST stripped by ``rst``),
the Brown corpus (``brown``), Jane Austen's novels (``austen``), Debian's fortunes
(``fortunes``) and the Jargon File (``jargon``). Chat transcripts: the Chit-Chat Challenge
(``chitchat``) and the ChatterBot corpus (``chatterbot``). ``sources`` registers them,
``build`` runs the pipeline (``text`` normalisation, ``dedup``, ``splits``), ``formats``
defines and reads the output files, ``manifest`` records and verifies what was written,
``cli`` is ``corpus build``. Install the sources with ``scripts/install-corpus-sources.sh``.
"""
