"""Source: the reST sources of the Python 3.11 documentation (Debian ``python3.11-doc``).

Each ``*.rst.txt`` file is cut into documents at its headings; a section shorter than
``min_section_chars`` is kept together with the sections after it, so a document is a
readable stretch of a page, not a lone heading.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from model_runtime.corpus.documents import Document, require_path
from model_runtime.corpus.rst import Block, render_blocks, rst_blocks

DEFAULT_DIR = Path("/usr/share/doc/python3.11/html/_sources")
DEBIAN_PACKAGE = "python3.11-doc"
# legal text and the contents page are not documentation prose
DEFAULT_EXCLUDE = ("license.rst.txt", "copyright.rst.txt", "contents.rst.txt")


def source_files(
    root: Path = DEFAULT_DIR, *, exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> list[Path]:
    """The ``*.rst.txt`` files under ``root`` in a stable order."""
    require_path(root, source="python-docs", manager="Debian", package=DEBIAN_PACKAGE)
    return sorted(
        path for path in root.rglob("*.rst.txt") if path.relative_to(root).as_posix() not in exclude
    )


def split_sections(blocks: list[Block], *, min_section_chars: int) -> list[list[Block]]:
    """Cut at headings; a chunk grows past later headings until it holds ``min_section_chars``,
    and a short last chunk is merged into the one before it."""
    chunks: list[list[Block]] = []
    current: list[Block] = []
    size = 0
    for block in blocks:
        if block.kind == "heading" and current and size >= min_section_chars:
            chunks.append(current)
            current, size = [], 0
        current.append(block)
        size += len(block.text)
    if current and chunks and size < min_section_chars:
        chunks[-1].extend(current)  # a short last section (footnotes) joins the one before
    elif current:
        chunks.append(current)
    return chunks


def load_python_docs(
    root: Path = DEFAULT_DIR,
    *,
    min_section_chars: int = 1500,
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE,
) -> Iterator[Document]:
    """One document per section group, id ``python-docs/<relative path>#<n>``."""
    for path in source_files(root, exclude=exclude):
        relative = path.relative_to(root).as_posix()
        blocks = rst_blocks(path.read_text(encoding="utf-8"))
        for n, chunk in enumerate(split_sections(blocks, min_section_chars=min_section_chars)):
            yield Document(id=f"python-docs/{relative}#{n}", text=render_blocks(chunk))
