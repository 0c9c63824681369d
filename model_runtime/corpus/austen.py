"""Source: Jane Austen's six novels (Debian ``r-cran-janeaustenr``), stored as R data.

The installed R package keeps its data in R's lazy-load database: ``Rdata.rdx`` (a gzipped
serialized index: variable name -> offset and length in ``Rdata.rdb``) and ``Rdata.rdb``
(records of a 4-byte big-endian uncompressed length followed by a zlib stream of one
serialized object). Each object is a character vector of the novel's lines, blank lines
between paragraphs. Plain ``.rda`` files holding such vectors are read as well. PyPI's
``rdata`` parses the serialized objects.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from model_runtime.corpus.documents import Document, SourceModuleMissingError, require_path
from model_runtime.corpus.text import split_paragraphs, unwrap_prose

DEFAULT_DIR = Path("/usr/lib/R/site-library/janeaustenr/data")
DEBIAN_PACKAGE = "r-cran-janeaustenr"
TITLES = {
    "sensesensibility": "Sense and Sensibility",
    "prideprejudice": "Pride and Prejudice",
    "mansfieldpark": "Mansfield Park",
    "emma": "Emma",
    "northangerabbey": "Northanger Abbey",
    "persuasion": "Persuasion",
}
_CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\.?\s*$", re.I)
_VOLUME = re.compile(r"^\s*(volume\s+[ivx]+|end of (the )?\w+ volume\.?)\s*$", re.I)
_ITALIC = re.compile(r"(?<!\w)_([^_\n]+)_(?!\w)")


def _rdata() -> Any:
    try:
        import rdata  # the corpus extra; imported here so the package loads without it
    except ModuleNotFoundError as error:
        raise SourceModuleMissingError("austen", "rdata", package="rdata") from error
    return rdata


def read_lazyload_db(directory: Path, *, stem: str = "Rdata") -> dict[str, Any]:
    """All objects of an R lazy-load database (``<stem>.rdx`` + ``<stem>.rdb``), converted."""
    rdata = _rdata()
    index = rdata.read_rds(directory / f"{stem}.rdx")
    database = (directory / f"{stem}.rdb").read_bytes()
    objects: dict[str, Any] = {}
    for name, (offset, length) in index["variables"].items():
        record = database[int(offset) : int(offset) + int(length)]
        # 4-byte uncompressed length, then zlib (R's compression type 1, the default)
        serialized = zlib.decompress(record[4:])
        parsed = rdata.parser.parse_data(serialized, extension=".rds")
        objects[str(name)] = rdata.conversion.convert(parsed)
    return objects


def source_files(location: Path = DEFAULT_DIR) -> list[Path]:
    """The files this source reads: the data directory's files, or the one ``.rda`` file."""
    require_path(location, source="austen", manager="Debian", package=DEBIAN_PACKAGE)
    if location.is_dir():
        return sorted(path for path in location.iterdir() if path.is_file())
    return [location]


def read_novels(location: Path = DEFAULT_DIR) -> dict[str, list[str]]:
    """Novel name -> lines, from a lazy-load database directory, a directory of ``.rda`` files
    or one ``.rda`` file. Objects that are not character vectors are skipped."""
    require_path(location, source="austen", manager="Debian", package=DEBIAN_PACKAGE)
    objects: dict[str, Any] = {}
    if location.is_dir() and (location / "Rdata.rdx").exists():
        objects.update(read_lazyload_db(location))
    else:
        files = sorted(location.glob("*.rda")) if location.is_dir() else [location]
        rdata = _rdata()
        for path in files:
            objects.update({str(k): v for k, v in rdata.read_rda(path).items()})
    return {name: value for name, value in sorted(objects.items()) if _is_lines(value)}


def _is_lines(value: Any) -> bool:
    kind = getattr(getattr(value, "dtype", None), "kind", "")
    return kind in ("U", "O") and getattr(value, "ndim", 0) == 1


def chapters(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(heading, body lines) per chapter; front matter and volume markers are dropped."""
    found: list[tuple[str, list[str]]] = []
    for line in lines:
        if _CHAPTER.match(line):
            found.append((line.strip(), []))
        elif found and not _VOLUME.match(line):
            found[-1][1].append(line)
    return found


def chapter_text(heading: str, body: list[str]) -> str:
    """A chapter as paragraphs of running text; ``_italics_`` lose their underscores."""
    paragraphs = [unwrap_prose(p) for p in split_paragraphs(body)]
    return _ITALIC.sub(r"\1", "\n\n".join([heading, *paragraphs]))


def load_austen(
    location: Path = DEFAULT_DIR, *, titles: Mapping[str, str] = TITLES
) -> Iterator[Document]:
    """One document per chapter, id ``austen/<novel>/<n>``; the text opens with the novel's
    title and the chapter heading."""
    for name, lines in read_novels(location).items():
        title = titles.get(name, name)
        for n, (heading, body) in enumerate(chapters([str(line) for line in lines])):
            text = chapter_text(heading, body)
            yield Document(id=f"austen/{name}/{n}", text=f"{title}\n\n{text}")
