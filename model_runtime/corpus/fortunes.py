"""Source: Debian's fortune cookie files (``fortunes`` + ``fortunes-min``): quotations, jokes,
short verse. Each cookie (between ``%`` lines) is one document.

Only the top-level data files are read (each has a ``.dat`` index beside it); the offensive set
that Debian ships separately in ``fortunes-off`` lives in an ``off/`` subdirectory and is never
read, nor is any file named in ``exclude`` (ASCII drawings by default).
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

from model_runtime.corpus.documents import Document, require_path
from model_runtime.corpus.text import unwrap_prose

DEFAULT_DIR = Path("/usr/share/games/fortunes")
DEBIAN_PACKAGES = ("fortunes", "fortunes-min")
DEFAULT_EXCLUDE = ("ascii-art",)
OFFENSIVE_DIRS = ("off",)
# A line shorter than this ended by choice (verse, a signature), not by the wrap at ~72.
MIN_WRAPPED_WIDTH = 50
# Lines that start a new line even after a long one: an attribution, an IRC speaker, an action
# (``* nick waves``), a speaker label in a dialogue (``Q:``, ``Kirk:``).
_COLUMN_GAP = re.compile(r"\S {6,}\S")
_OWN_LINE = re.compile(r"^(?:--|<[^>\s]+>|\*\s|[A-Z][\w.' ]{0,20}:\s)")


def source_files(
    root: Path = DEFAULT_DIR, *, exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> list[Path]:
    """Fortune data files: regular files with a ``.dat`` index, no ``.u8`` aliases."""
    require_path(root, source="fortunes", manager="Debian", package=DEBIAN_PACKAGES[0])
    return sorted(
        path
        for path in root.iterdir()
        if path.is_file()
        and not path.is_symlink()
        and path.suffix not in (".dat", ".u8")
        and path.name not in exclude
        and path.name not in OFFENSIVE_DIRS
        and path.with_name(path.name + ".dat").exists()
    )


def split_cookies(text: str) -> list[str]:
    """The cookies of one fortune file: blocks between lines holding only ``%``."""
    cookies: list[str] = []
    current: list[str] = []
    for line in text.split("\n"):
        if line.strip() == "%":
            cookies.append("\n".join(current))
            current = []
        else:
            current.append(line)
    cookies.append("\n".join(current))
    return [cookie for cookie in cookies if cookie.strip()]


def clean_cookie(cookie: str) -> str:
    """Rejoin a cookie's hard-wrapped prose; keep verse lines, dialogue turns, attributions.

    A paragraph starts after a blank line or where a line is indented deeper than the one
    before it (fortunes mark paragraphs with a leading tab). A cookie laid out in columns
    (tables, verse side by side, drawings) is kept line for line."""
    lines = cookie.expandtabs(8).split("\n")
    if any(_COLUMN_GAP.search(line) for line in lines):
        return textwrap.dedent("\n".join(lines)).strip("\n")  # laid out in columns: as is
    paragraphs: list[list[str]] = []
    previous_indent = -1
    for raw in lines:
        if not raw.strip():
            previous_indent = -1
            continue
        indent = len(raw) - len(raw.lstrip())
        in_attribution = bool(paragraphs) and paragraphs[-1][0].lstrip().startswith("--")
        if previous_indent >= 0 and in_attribution:
            paragraphs[-1].append(raw)  # "-- Author, Title" wrapped onto an indented line
        elif previous_indent < 0 or indent > previous_indent or not paragraphs:
            paragraphs.append([raw])
        else:
            paragraphs[-1].append(raw)
        previous_indent = indent
    # a paragraph that is only an attribution sticks to the text above it
    rendered: list[str] = []
    for lines in paragraphs:
        if lines[0].lstrip().startswith("--"):  # an attribution wrapped by hand: one line
            text = unwrap_prose(lines)
        else:
            text = unwrap_prose(lines, min_wrapped_width=MIN_WRAPPED_WIDTH, break_before=_OWN_LINE)
        if text.startswith("--") and rendered:
            rendered[-1] = f"{rendered[-1]}\n{text}"
        else:
            rendered.append(text)
    return "\n\n".join(rendered)


def load_fortunes(
    root: Path = DEFAULT_DIR, *, exclude: tuple[str, ...] = DEFAULT_EXCLUDE
) -> Iterator[Document]:
    """One document per cookie, id ``fortunes/<file>#<n>``."""
    for path in source_files(root, exclude=exclude):
        text = path.read_text(encoding="utf-8", errors="replace")
        for n, cookie in enumerate(split_cookies(text)):
            yield Document(id=f"fortunes/{path.name}#{n}", text=clean_cookie(cookie))
