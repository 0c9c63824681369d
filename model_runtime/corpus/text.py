"""Text normalisation shared by the corpus sources: unicode, whitespace, hard-wrapped prose."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Characters that look like spaces or line breaks but are not the plain ones.
_SPACE_TABLE = str.maketrans(
    {
        "\u00a0": " ",  # no-break space
        "\u2007": " ",
        "\u202f": " ",
        "\u2028": "\n",  # line separator
        "\u2029": "\n\n",  # paragraph separator
        "\f": "\n\n",
        "\v": "\n",
    }
)
# C0 controls except \t and \n, DEL, zero-width characters and the byte-order mark.
_INVISIBLE = re.compile(r"[\x00-\x08\x0e-\x1f\x7f\u200b\u200c\u200d\u2060\ufeff]")
_BLANK_RUN = re.compile(r"\n{3,}")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")


def normalize_text(text: str) -> str:
    """NFC, ``\\n`` line ends, no invisible characters, tabs expanded, no trailing spaces,
    at most one blank line in a row and none at either end. Leading indentation is kept
    (code blocks); spaces inside a line are left alone."""
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").translate(_SPACE_TABLE)
    text = _INVISIBLE.sub("", text)
    lines = [line.expandtabs(4).rstrip() for line in text.split("\n")]
    return _BLANK_RUN.sub("\n\n", "\n".join(lines)).strip("\n")


def collapse_spaces(line: str) -> str:
    """Runs of spaces between words become one (prose typed with two spaces after a full stop)."""
    return _INNER_SPACES.sub(" ", line.strip())


def split_paragraphs(lines: Iterable[str]) -> list[list[str]]:
    """Group lines into paragraphs at blank lines; lines keep their indentation."""
    paragraphs: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if line.strip():
            current.append(line.rstrip())
        elif current:
            paragraphs.append(current)
            current = []
    if current:
        paragraphs.append(current)
    return paragraphs


def unwrap_prose(
    lines: list[str], *, min_wrapped_width: int = 0, break_before: re.Pattern[str] | None = None
) -> str:
    """Join the hard-wrapped lines of one paragraph into running text.

    A line break is kept where the line before it is shorter than ``min_wrapped_width`` (verse,
    a signature, an address: lines that ended by choice, not by the wrap) or where the next
    line matches ``break_before`` (an attribution ``-- Author``, a speaker ``<nick>``).
    ``min_wrapped_width=0`` and no ``break_before`` join every line.
    """
    pieces: list[str] = []
    previous_width = 0
    for line in lines:
        text = collapse_spaces(line)
        if not text:
            continue
        if pieces:
            keep_break = previous_width < min_wrapped_width or bool(
                break_before and break_before.match(text)
            )
            pieces.append("\n" if keep_break else " ")
        pieces.append(text)
        previous_width = len(line.strip())
    return "".join(pieces)


def letter_ratio(text: str) -> float:
    """Fraction of non-space characters that are letters (ASCII art and tables score low)."""
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return 0.0
    return sum(c.isalpha() for c in visible) / len(visible)


def looks_like_text(text: str, *, min_chars: int, min_letter_ratio: float) -> bool:
    """Long enough and mostly letters."""
    return len(text) >= min_chars and letter_ratio(text) >= min_letter_ratio
