"""Source: the Jargon File 4.4.7, hacker slang and folklore (Debian ``jargon-text``, public
domain). Each lexicon entry is one document; so is each chapter or appendix section.

The text (``jargon.txt.gz``) is indented by three spaces, headings start at column 0,
entries open with ``:term: pronunciation, part of speech``, cross-references are ``{term}``.
"""

from __future__ import annotations

import gzip
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

from model_runtime.corpus.documents import Document, require_path
from model_runtime.corpus.text import split_paragraphs, unwrap_prose

DEFAULT_FILE = Path("/usr/share/doc/jargon-text/jargon.txt.gz")
DEBIAN_PACKAGE = "jargon-text"
BASE_INDENT = 3

_ENTRY = re.compile(r"^ {3}:([^:]+(?::[^:\s][^:]*)*):(.*)$")
_EMPTY_PRONUNCIATION = re.compile(r"^//,?\s*")
_CROSS_REFERENCE = re.compile(r"\{([^{}\n]+)\}")
_BOX_DRAWING = re.compile(r"[\u2500-\u257f]")
_BULLET = "\u2022"
# A table of contents or headword index: a run of one-line paragraphs this short.
_LIST_LINE_MAX = 60
_LIST_RUN_MIN = 4


def source_files(path: Path = DEFAULT_FILE) -> list[Path]:
    """The one file this source reads."""
    return [require_path(path, source="jargon", manager="Debian", package=DEBIAN_PACKAGE)]


def read_jargon(path: Path = DEFAULT_FILE) -> str:
    """The Jargon File as text (gzip-compressed or plain)."""
    require_path(path, source="jargon", manager="Debian", package=DEBIAN_PACKAGE)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return raw.decode("utf-8", errors="replace")


def _render_paragraph(lines: list[str]) -> str:
    first = lines[0].strip()
    indent = len(lines[0]) - len(lines[0].lstrip())
    if first.startswith(_BULLET):
        lines = [lines[0].replace(_BULLET, "", 1), *lines[1:]]
        return "- " + unwrap_prose(lines)
    if indent > BASE_INDENT:  # an example, a diagram, a quotation laid out by hand
        return textwrap.dedent("\n".join(lines))
    return unwrap_prose(lines, min_wrapped_width=40)


def _drop_lists_of_titles(paragraphs: list[list[str]]) -> list[list[str]]:
    """Remove runs of one-line, short paragraphs (tables of contents, headword indexes)."""
    short = [
        len(p) == 1 and len(p[0].strip()) <= _LIST_LINE_MAX and not p[0].rstrip().endswith(".")
        for p in paragraphs
    ]
    keep = [True] * len(paragraphs)
    start = 0
    while start < len(paragraphs):
        end = start
        while end < len(paragraphs) and short[end]:
            end += 1
        if end - start >= _LIST_RUN_MIN:
            keep[start:end] = [False] * (end - start)
        start = max(end, start + 1)
    return [p for p, k in zip(paragraphs, keep, strict=True) if k]


def render_body(lines: list[str]) -> str:
    """Paragraphs of a section or entry body: prose unwrapped, tables and index lists dropped,
    ``{cross references}`` reduced to their text."""
    lines = [line for line in lines if not _BOX_DRAWING.search(line)]
    paragraphs = _drop_lists_of_titles(split_paragraphs(lines))
    text = "\n\n".join(_render_paragraph(p) for p in paragraphs)
    return _CROSS_REFERENCE.sub(r"\1", text)


def jargon_documents(text: str) -> Iterator[Document]:
    """Split the Jargon File into sections (at column-0 headings) and lexicon entries."""
    sections: list[tuple[str, list[str]]] = []
    for line in text.split("\n"):
        if line.strip() and not line.startswith(" ") and not _BOX_DRAWING.search(line):
            sections.append((line.strip(), []))
        elif sections:
            sections[-1][1].append(line)
    for n, (title, lines) in enumerate(sections):
        entry_starts = [k for k, line in enumerate(lines) if _ENTRY.match(line)]
        if not entry_starts:
            body = render_body(lines)
            if title.startswith("(version"):
                title = f"The Jargon File {title}"
            if body:
                yield Document(id=f"jargon/section/{n}", text=f"{title}\n\n{body}")
            continue
        for k, start in enumerate(entry_starts):  # the lexicon: text before the first entry
            end = entry_starts[k + 1] if k + 1 < len(entry_starts) else len(lines)  # is an index
            match = _ENTRY.match(lines[start])
            assert match is not None
            term = match.group(1).strip()
            rest = _EMPTY_PRONUNCIATION.sub("", match.group(2).strip())
            head = f"{term}: {rest}" if rest else term
            body = render_body(lines[start + 1 : end])
            yield Document(id=f"jargon/entry/{term}", text=f"{head}\n\n{body}" if body else head)


def load_jargon(path: Path = DEFAULT_FILE) -> Iterator[Document]:
    """Documents of the installed Jargon File."""
    yield from jargon_documents(read_jargon(path))
