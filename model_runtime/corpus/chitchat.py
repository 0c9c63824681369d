"""Source: the Chit-Chat Challenge dataset (PyPI ``chitchat-dataset``, MIT): about 7k text
chats between two people, collected by BYU's Perception, Control and Cognition lab.

``dataset.json`` maps a chat id to ``{"messages": [[{"text", "sender", "timestamp"}, ...], ...]}``:
each inner list is one turn (consecutive messages of one sender). The person who opens the
chat becomes the ``user``, the other the ``assistant``; a turn's messages are joined by newlines.
Chats where nobody answered are dropped, and a chat ends on the assistant's last turn.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from model_runtime.corpus.documents import (
    ChatTurn,
    Conversation,
    Role,
    SourceMissingError,
    require_path,
)

PYPI_PACKAGE = "chitchat-dataset"
MODULE = "chitchat_dataset"


def default_file() -> Path:
    """``dataset.json`` inside the installed package (found without importing it)."""
    spec = find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise SourceMissingError(
            "chitchat", Path(f"<{MODULE} package>"), manager="PyPI", package=PYPI_PACKAGE
        )
    return Path(next(iter(spec.submodule_search_locations))) / "dataset.json"


def source_files(path: Path) -> list[Path]:
    """The one file this source reads."""
    return [require_path(path, source="chitchat", manager="PyPI", package=PYPI_PACKAGE)]


def chat_turns(
    messages: list[list[dict[str, Any]]], *, separator: str = "\n"
) -> tuple[ChatTurn, ...]:
    """Turns of one chat, roles by sender (first sender = user); a trailing user turn and
    empty turns are dropped; consecutive turns of one sender are merged."""
    first_sender: str | None = None
    turns: list[ChatTurn] = []
    for turn in messages:
        texts = [str(m.get("text", "")).strip() for m in turn]
        content = separator.join(text for text in texts if text)
        if not turn or not content:
            continue
        sender = str(turn[0].get("sender", ""))
        first_sender = sender if first_sender is None else first_sender
        role: Role = "user" if sender == first_sender else "assistant"
        if turns and turns[-1].role == role:
            turns[-1] = ChatTurn(role, turns[-1].content + separator + content)
        else:
            turns.append(ChatTurn(role, content))
    if turns and turns[-1].role == "user":
        turns.pop()
    return tuple(turns) if len(turns) >= 2 else ()


def load_chitchat(path: Path | None = None, *, separator: str = "\n") -> Iterator[Conversation]:
    """One conversation per chat with an answer, id ``chitchat/<chat id>``, in file order."""
    path = default_file() if path is None else path
    require_path(path, source="chitchat", manager="PyPI", package=PYPI_PACKAGE)
    with path.open(encoding="utf-8") as handle:
        chats: dict[str, dict[str, Any]] = json.load(handle)
    for chat_id, chat in chats.items():
        turns = chat_turns(chat.get("messages", []), separator=separator)
        if turns:
            yield Conversation(id=f"chitchat/{chat_id}", messages=turns)
