"""reST to plain text: the markup of the Python documentation sources."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.corpus.documents import SourceMissingError
from model_runtime.corpus.python_docs import load_python_docs, split_sections
from model_runtime.corpus.rst import Block, rst_blocks, rst_to_text
from model_runtime.corpus.rst_inline import clean_inline

SNIPPET = """\
:mod:`shutil` --- High-level file operations
============================================

.. module:: shutil
   :synopsis: High-level file operations.

.. index::
   single: file; copying

**Source code:** :source:`Lib/shutil.py`

--------------

The :mod:`shutil` module offers operations on files, see :func:`~os.path.join`
and :ref:`the tutorial <tut-files>`.  Read :pep:`8` and `the site <https://example.org>`_.

.. function:: copyfile(src, dst, *, follow_symlinks=True)

   Copy the file named *src* to **dst**.

   .. versionchanged:: 3.3
      Added *follow_symlinks* argument.

   .. note::

      Not all platforms provide this.

Example::

   >>> copyfile('a', 'b')
   'b'

.. code-block:: python
   :emphasize-lines: 1

   print("hi")

+----------+--------------+
| Option   | Meaning      |
+==========+==============+
| ``-v``   | verbose      |
|          | output       |
+----------+--------------+

=====  =====
Name   Value
=====  =====
``a``  one
``b``  two
=====  =====

* first item
  continues here
* second item

.. _label:

.. This is a comment
   spanning lines.

Directory operations
--------------------

.. versionadded:: 3.8
"""


def test_snippet_renders_as_plain_text() -> None:
    text = rst_to_text(SNIPPET)
    assert text.split("\n\n") == [
        "shutil --- High-level file operations",
        "Source code: Lib/shutil.py",
        "The shutil module offers operations on files, see join and the tutorial. "
        "Read PEP 8 and the site.",
        "copyfile(src, dst, *, follow_symlinks=True)",
        "Copy the file named src to dst.",
        "Changed in version 3.3: Added follow_symlinks argument.",
        "Note: Not all platforms provide this.",
        "Example:",
        "```\n>>> copyfile('a', 'b')\n'b'\n```",
        '```\nprint("hi")\n```',
        "Option | Meaning\n-v | verbose output",
        "Name | Value\na | one\nb | two",
        "- first item continues here\n- second item",
        "Directory operations",
        "New in version 3.8.",
    ]


def test_bookkeeping_markup_is_gone() -> None:
    text = rst_to_text(SNIPPET)
    for leftover in ("synopsis", "single:", ":func:", "``", "label", "comment", "https://"):
        assert leftover not in text.replace("```", "")


def test_headings_carry_levels_in_order_of_first_use() -> None:
    headings = [b for b in rst_blocks(SNIPPET) if b.kind == "heading"]
    assert [(b.text, b.level) for b in headings] == [
        ("shutil --- High-level file operations", 1),
        ("Directory operations", 2),
    ]


@pytest.mark.parametrize(
    ("markup", "plain"),
    [
        (":func:`~os.path.join`", "join"),
        (":meth:`!str.join`", "str.join"),
        (":ref:`text <label>`", "text"),
        (":ref:`bare-label`", "bare label"),
        (":rfc:`2822#section-3`", "RFC 2822"),
        (":c:type:`\\ Py_ssize_t`", "Py_ssize_t"),
        (":samp:`print({x})`", "print(x)"),
        (":menuselection:`Start --> Programs`", "Start > Programs"),
        ("``a\\nb``", "a\\nb"),
        ("*args* and **kw**", "args and kw"),
        ("a footnote [#]_ here", "a footnote here"),
        ("|version| is", "version is"),
        ("2 * 3 * 4", "2 * 3 * 4"),
    ],
)
def test_inline_markup(markup: str, plain: str) -> None:
    assert clean_inline(markup) == plain


def test_literal_block_inside_a_list_item_ends_at_the_item_text() -> None:
    source = "* Use it::\n\n     import foo\n     foo()\n\n  Then more text.\n"
    assert rst_to_text(source) == "- Use it:\n\n```\nimport foo\nfoo()\n```\n\nThen more text."


def test_sections_merge_until_long_enough() -> None:
    blocks = [
        Block("heading", "A", 1),
        Block("text", "x" * 10),
        Block("heading", "B", 2),
        Block("text", "y" * 30),
        Block("heading", "C", 2),
        Block("text", "z"),
    ]
    blocks += [Block("heading", "D", 2), Block("text", "w" * 25), Block("heading", "E", 2)]
    chunks = split_sections(blocks, min_section_chars=20)
    assert [[b.text[:1] for b in chunk] for chunk in chunks] == [
        ["A", "x", "B", "y"],
        ["C", "z", "D", "w", "E"],  # the short last section joins the one before
    ]


def test_file_metadata_fields_are_dropped() -> None:
    source = ":orphan:\n\nTitle\n=====\n\n:Author: Someone\n"
    assert rst_to_text(source) == "Title\n\nAuthor: Someone"


def test_loader_reads_rst_txt_files_and_skips_legal_text(tmp_path: Path) -> None:
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "shutil.rst.txt").write_text(SNIPPET, encoding="utf-8")
    (tmp_path / "license.rst.txt").write_text("License\n=======\n\nLegal text.\n")
    (tmp_path / "notes.txt").write_text("not a source file")
    documents = list(load_python_docs(tmp_path))
    assert [d.id for d in documents] == ["python-docs/library/shutil.rst.txt#0"]
    assert documents[0].text.startswith("shutil --- High-level file operations\n\n")


def test_missing_directory_names_the_package_and_the_install_script(tmp_path: Path) -> None:
    with pytest.raises(SourceMissingError) as error:
        list(load_python_docs(tmp_path / "absent"))
    assert "python3.11-doc" in str(error.value)
    assert "scripts/install-corpus-sources.sh" in str(error.value)
