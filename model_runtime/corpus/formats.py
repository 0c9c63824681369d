"""The corpus's file formats, written by ``corpus build`` and read by the trainers.

- ``pretrain/<split>.jsonl``: one document per line, ``{"id", "source", "text"}``.
- ``pretrain/<split>.txt``: the same documents as plain text, separated by blank lines (for
  tokenizer training; document boundaries are in the JSONL).
- ``chat/<split>.jsonl``: one conversation per line,
  ``{"id", "source", "messages": [{"role": "user"|"assistant"|"system", "content"}, ...]}``.
- ``chat/<split>.txt``: every message's content, conversations separated by blank lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_runtime.corpus.documents import ROLES, ChatTurn, Conversation, Document

PRETRAIN_DIR = "pretrain"
CHAT_DIR = "chat"


@dataclass(frozen=True)
class PretrainRecord:
    id: str
    source: str
    text: str


@dataclass(frozen=True)
class ChatRecord:
    id: str
    source: str
    messages: tuple[ChatTurn, ...]


def pretrain_line(document: Document, source: str) -> str:
    """One JSONL line (newline included)."""
    record = {"id": document.id, "source": source, "text": document.text}
    return json.dumps(record, ensure_ascii=False) + "\n"


def chat_line(conversation: Conversation, source: str) -> str:
    """One JSONL line (newline included)."""
    messages = [{"role": turn.role, "content": turn.content} for turn in conversation.messages]
    record = {"id": conversation.id, "source": source, "messages": messages}
    return json.dumps(record, ensure_ascii=False) + "\n"


def chat_text(conversation: Conversation) -> str:
    """A conversation's message contents, one paragraph each (the ``.txt`` twin)."""
    return "\n\n".join(turn.content for turn in conversation.messages)


def _lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, json.loads(line)


def read_pretrain(path: Path) -> Iterator[PretrainRecord]:
    """Documents of a ``pretrain/<split>.jsonl`` file, in order."""
    for _, record in _lines(path):
        yield PretrainRecord(str(record["id"]), str(record["source"]), str(record["text"]))


def read_chat(path: Path) -> Iterator[ChatRecord]:
    """Conversations of a ``chat/<split>.jsonl`` file, in order; a bad role is a ValueError."""
    for number, record in _lines(path):
        turns = []
        for message in record["messages"]:
            role = message["role"]
            if role not in ROLES:
                raise ValueError(f"{path}:{number}: unknown role {role!r}")
            turns.append(ChatTurn(role, str(message["content"])))
        yield ChatRecord(str(record["id"]), str(record["source"]), tuple(turns))
