"""Exact and near-exact deduplication of documents, conversations and paragraphs.

Keys are 16-byte BLAKE2b digests. The *exact* key hashes the normalised text as written; the
*near* key hashes it case-folded with every run of non-alphanumeric characters reduced to one
space, so copies that differ only in case, punctuation or spacing collide. Paragraph-level
deduplication removes, from a later document, a paragraph (of at least ``min_paragraph_chars``
once near-normalised) already written in an earlier one: boilerplate repeated across pages,
quotations repeated across fortune files.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

Verdict = Literal["unique", "exact", "near"]

_NON_ALNUM = re.compile(r"[\W_]+")
_FENCE = "```"


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def near_form(text: str) -> str:
    """Case-folded, punctuation and spacing reduced to single spaces.

    >>> near_form("Hello,  World!")
    'hello world'
    """
    return _NON_ALNUM.sub(" ", text.casefold()).strip()


def exact_key(text: str) -> bytes:
    return _digest(text)


def near_key(text: str) -> bytes:
    return _digest(near_form(text))


def paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines; a fenced code block stays one paragraph."""
    out: list[str] = []
    open_fence = False
    for piece in text.split("\n\n"):
        if open_fence:
            out[-1] = f"{out[-1]}\n\n{piece}"
        else:
            out.append(piece)
        fences = sum(1 for line in piece.split("\n") if line.startswith(_FENCE))
        open_fence = open_fence != (fences % 2 == 1)
    return out


@dataclass
class DedupStats:
    """Counts, for the manifest."""

    exact_duplicates: int = 0
    near_duplicates: int = 0
    repeated_paragraphs: int = 0
    emptied_by_paragraphs: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def add(self, other: DedupStats) -> None:
        self.exact_duplicates += other.exact_duplicates
        self.near_duplicates += other.near_duplicates
        self.repeated_paragraphs += other.repeated_paragraphs
        self.emptied_by_paragraphs += other.emptied_by_paragraphs


@dataclass(frozen=True)
class ParagraphFilter:
    """A document with its repeated paragraphs taken out, and the keys of those it keeps."""

    text: str
    removed: int
    new_keys: frozenset[bytes]


@dataclass
class Deduplicator:
    """Remembers what has been kept; one instance per output kind (pretrain, chat)."""

    min_paragraph_chars: int = 60
    _exact: set[bytes] = field(default_factory=set)
    _near: set[bytes] = field(default_factory=set)
    _paragraphs: set[bytes] = field(default_factory=set)

    def check(self, text: str) -> Verdict:
        """Classify ``text`` against everything remembered; remember it when unique."""
        exact, near = exact_key(text), near_key(text)
        if exact in self._exact:
            return "exact"
        if near in self._near:
            return "near"
        self._exact.add(exact)
        self._near.add(near)
        return "unique"

    def filter_paragraphs(self, text: str) -> ParagraphFilter:
        """Drop paragraphs already kept elsewhere (or earlier in ``text``); nothing is
        remembered until :meth:`remember` is called with the result's keys."""
        kept: list[str] = []
        new_keys: set[bytes] = set()
        removed = 0
        for paragraph in paragraphs(text):
            form = near_form(paragraph)
            if len(form) < self.min_paragraph_chars:
                kept.append(paragraph)
                continue
            key = _digest(form)
            if key in self._paragraphs or key in new_keys:
                removed += 1
                continue
            new_keys.add(key)
            kept.append(paragraph)
        return ParagraphFilter("\n\n".join(kept), removed, frozenset(new_keys))

    def remember(self, keys: frozenset[bytes]) -> None:
        self._paragraphs.update(keys)
