"""Source: the ChatterBot corpus (PyPI ``chatterbot-corpus``, BSD-3-Clause): about 2k short
English question/answer exchanges in YAML, by topic.

Each file holds ``conversations: [[statement, reply, statement, ...], ...]``; statements
alternate between the ``user`` (first) and the ``assistant``.
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from model_runtime.corpus.documents import (
    ChatTurn,
    Conversation,
    SourceMissingError,
    SourceModuleMissingError,
    require_path,
)

PYPI_PACKAGE = "chatterbot-corpus"
MODULE = "chatterbot_corpus"
DEFAULT_LANGUAGES = ("english",)


def default_dir() -> Path:
    """``data/`` inside the installed package (found without importing it)."""
    spec = find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissingError(
            "chatterbot", Path(f"<{MODULE} package>"), manager="PyPI", package=PYPI_PACKAGE
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def source_files(root: Path, *, languages: tuple[str, ...] = DEFAULT_LANGUAGES) -> list[Path]:
    """The YAML files of the chosen languages, in a stable order."""
    require_path(root, source="chatterbot", manager="PyPI", package=PYPI_PACKAGE)
    return sorted(path for lang in languages for path in (root / lang).glob("*.yml"))


def exchange_turns(statements: list[Any]) -> tuple[ChatTurn, ...]:
    """Alternate user/assistant over the statements; a trailing user statement is dropped."""
    texts = [str(s).strip() for s in statements if s is not None and str(s).strip()]
    if len(texts) % 2:
        texts.pop()
    return tuple(
        ChatTurn("user" if k % 2 == 0 else "assistant", text) for k, text in enumerate(texts)
    )


def load_chatterbot(
    root: Path | None = None, *, languages: tuple[str, ...] = DEFAULT_LANGUAGES
) -> Iterator[Conversation]:
    """One conversation per exchange, id ``chatterbot/<language>/<file stem>#<n>``."""
    try:
        import yaml
    except ModuleNotFoundError as error:
        raise SourceModuleMissingError("chatterbot", "yaml", package="PyYAML") from error
    root = default_dir() if root is None else root
    for path in source_files(root, languages=languages):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for n, statements in enumerate(data.get("conversations") or []):
            turns = exchange_turns(list(statements or []))
            if turns:
                yield Conversation(
                    id=f"chatterbot/{path.parent.name}/{path.stem}#{n}", messages=turns
                )
