"""Training data: documents and chats -> fixed-length token rows -> (inputs, labels) batches.

Every dataset here is a :class:`TokenRows`: N rows of ``T + 1`` token ids and, per id, whether
it is a target (an id the model is trained to predict from the ids before it). A row gives
``inputs = row[:-1]`` and ``labels[j] = row[j + 1]`` where that id is a target, else
``IGNORE_INDEX`` (-100, which ``F.cross_entropy`` skips).

- Pretraining (:func:`pack_documents`): documents (shuffled by seed) are joined into one stream
  with ``<|endoftext|>`` after each, and the stream is cut into rows that overlap by one id
  (row i holds ids ``i*T .. i*T + T``), so every id of the stream but the first is a target
  exactly once. The last row is padded with ``<pad>`` ids that are not targets.
- SFT (:func:`pack_chats`): each conversation is encoded by the chat template; the targets are
  its ``assistant_mask`` (assistant text and the ``<|end|>`` closing each assistant turn). With
  packing, whole conversations are laid one after the other into rows, ``<|endoftext|>`` (not a
  target) between them, a conversation that does not fit starting the next row; without packing
  each row holds one conversation. A conversation longer than a row is cut to ``T + 1`` ids.

:class:`BatchOrder` is the order rows are drawn in: a new seeded permutation each epoch, read
``batch_size`` rows at a time, a pure function of (seed, micro-batch index), so a resumed run
needs only the index to continue with the same batches.
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch

from model_runtime.chat_template import Role
from model_runtime.tokenizer import ChatEncoding, ChatMessage, ChatTokenizer

IGNORE_INDEX = -100
_ENCODE_CHUNK = 512  # documents per tokenizer batch: bounds the Python lists alive at once

IdArray = npt.NDArray[np.int32]
MaskArray = npt.NDArray[np.bool_]
IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Batch:
    """``inputs`` (B, T) int64 ids; ``labels`` (B, T) int64, the id to predict after each input
    position or ``IGNORE_INDEX``."""

    inputs: torch.Tensor
    labels: torch.Tensor

    @property
    def num_targets(self) -> int:
        """Positions that count in the loss."""
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> Batch:
        return Batch(self.inputs.to(device), self.labels.to(device))


class TokenRows:
    """N rows of ``T + 1`` ids (``tokens``, int32) and target flags (``targets``, bool), both
    (N, T + 1). ``targets[:, 0]`` is never used (the first id has nothing before it)."""

    def __init__(self, tokens: IdArray, targets: MaskArray) -> None:
        if tokens.ndim != 2 or tokens.shape != targets.shape or tokens.shape[1] < 2:
            raise ValueError(
                f"tokens and targets must both be (N, T + 1) with T >= 1, got "
                f"{tokens.shape} and {targets.shape}"
            )
        self.tokens = tokens
        self.targets = targets

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def seq_len(self) -> int:
        """T: the input length of a row."""
        return int(self.tokens.shape[1]) - 1

    @property
    def num_targets(self) -> int:
        return int(self.targets[:, 1:].sum())

    def batch(self, rows: Sequence[int] | IndexArray) -> Batch:
        """The rows ``rows`` (in that order) as a :class:`Batch` of shape (len(rows), T)."""
        index = np.asarray(rows, dtype=np.int64)
        tokens = torch.from_numpy(self.tokens[index].astype(np.int64))  # (B, T + 1)
        targets = torch.from_numpy(self.targets[index])  # (B, T + 1)
        labels = tokens[:, 1:].masked_fill(~targets[:, 1:], IGNORE_INDEX)  # (B, T)
        return Batch(inputs=tokens[:, :-1].contiguous(), labels=labels)

    def labels_of(self, row: int) -> list[int]:
        """The label vector of one row (what :meth:`batch` puts in ``labels``)."""
        return [int(x) for x in self.batch([row]).labels[0]]


def expand_files(patterns: Sequence[str]) -> list[Path]:
    """Files named by ``patterns`` (globs allowed, ``**`` recursive), each once, in pattern
    order and sorted within a pattern. ``FileNotFoundError`` for a pattern matching no file."""
    found: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            matches = [p for p in matches if p.is_file()]
        else:
            matches = [Path(pattern)] if Path(pattern).is_file() else []
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        for path in matches:
            if path.resolve() not in seen:
                seen.add(path.resolve())
                found.append(path)
    return found


def read_documents(paths: Iterable[Path]) -> list[str]:
    """Pretraining documents: a ``.jsonl`` file gives one per line (its ``"text"``), any other
    file is one document. Empty documents are dropped."""
    documents: list[str] = []
    for path in paths:
        if path.suffix == ".jsonl":
            for where, record in _jsonl_records(path):
                text = record.get("text")
                if not isinstance(text, str):
                    raise ValueError(f"{where}: expected a string field 'text'")
                documents.append(text)
        else:
            documents.append(path.read_text(encoding="utf-8"))
    return [doc for doc in documents if doc.strip()]


def read_conversations(paths: Iterable[Path]) -> list[list[ChatMessage]]:
    """Chats from ``.jsonl`` files, one ``{"messages": [{"role", "content"}, ...]}`` per line
    (other keys are ignored). ``ValueError`` naming file and line for a malformed one."""
    conversations: list[list[ChatMessage]] = []
    for path in paths:
        if path.suffix != ".jsonl":
            raise ValueError(f"{path}: SFT data must be .jsonl files of {{'messages': [...]}}")
        for where, record in _jsonl_records(path):
            messages = record.get("messages")
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"{where}: expected a non-empty list field 'messages'")
            turns: list[ChatMessage] = []
            for index, message in enumerate(messages):
                if not isinstance(message, dict) or not isinstance(message.get("content"), str):
                    raise ValueError(f"{where}: message {index} needs 'role' and 'content'")
                try:
                    role = cast(Role, message.get("role"))
                    turns.append(ChatMessage(role=role, content=message["content"]))
                except ValueError as error:
                    raise ValueError(f"{where}: message {index}: {error}") from None
            conversations.append(turns)
    return conversations


def _jsonl_records(path: Path) -> Iterable[tuple[str, dict[str, object]]]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{where}: not valid JSON: {error}") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object")
            yield where, record


def seeded_permutation(n: int, seed: int, stream: int = 0) -> IndexArray:
    """A permutation of ``range(n)`` fixed by (seed, stream)."""
    return np.random.default_rng([seed, stream]).permutation(n).astype(np.int64)


def split_held_out(n: int, fraction: float, seed: int) -> tuple[IndexArray, IndexArray]:
    """Indices (train, held_out) of ``n`` items, about ``fraction`` of them held out (at least
    one when ``fraction > 0`` and ``n > 1``); fixed by ``seed``, each in increasing order."""
    if fraction <= 0.0 or n < 2:
        return np.arange(n, dtype=np.int64), np.zeros(0, dtype=np.int64)
    count = min(n - 1, max(1, round(n * fraction)))
    order = seeded_permutation(n, seed, stream=1)
    return np.sort(order[count:]), np.sort(order[:count])


def encode_documents(tokenizer: ChatTokenizer, documents: Sequence[str]) -> list[IdArray]:
    """Token ids of each document (special-token parsing off), as int32 arrays."""
    out: list[IdArray] = []
    for start in range(0, len(documents), _ENCODE_CHUNK):
        chunk = tokenizer.encode_texts(documents[start : start + _ENCODE_CHUNK])
        out.extend(np.asarray(ids, dtype=np.int32) for ids in chunk)
    return out


def pack_documents(
    documents: Sequence[IdArray | Sequence[int]], *, seq_len: int, eos_id: int, pad_id: int
) -> TokenRows:
    """Join ``documents`` (in the given order) with ``eos_id`` after each and cut the stream
    into rows of ``seq_len + 1`` ids overlapping by one; see the module docstring."""
    pieces: list[IdArray] = []
    eos = np.asarray([eos_id], dtype=np.int32)
    for doc in documents:
        pieces.append(np.asarray(doc, dtype=np.int32))
        pieces.append(eos)
    if not pieces:
        raise ValueError("no documents to pack")
    stream = np.concatenate(pieces)  # (L,)
    length = int(stream.shape[0])
    rows = max(1, -(-(length - 1) // seq_len))  # ceil((L - 1) / T)
    padded_len = rows * seq_len + 1
    padded = np.full(padded_len, pad_id, dtype=np.int32)
    padded[:length] = stream
    starts = np.arange(rows, dtype=np.int64)[:, None] * seq_len  # (N, 1)
    index = starts + np.arange(seq_len + 1, dtype=np.int64)[None, :]  # (N, T + 1)
    tokens = padded[index]
    targets = index < length
    targets[:, 0] = False
    return TokenRows(tokens, targets)


def pack_chats(
    encodings: Sequence[ChatEncoding],
    *,
    seq_len: int,
    eos_id: int,
    pad_id: int,
    packing: bool,
) -> TokenRows:
    """Lay chat encodings into rows of ``seq_len + 1`` ids, targets = assistant mask; see the
    module docstring. Conversations left without a target after cutting are dropped."""
    width = seq_len + 1
    rows_ids: list[list[int]] = []
    rows_mask: list[list[bool]] = []
    current_ids: list[int] = []
    current_mask: list[bool] = []
    for encoding in encodings:
        ids = encoding.ids[:width]
        mask = encoding.assistant_mask[:width]
        if not any(mask[1:]):
            continue
        if current_ids and (not packing or len(current_ids) + 1 + len(ids) > width):
            rows_ids.append(current_ids)
            rows_mask.append(current_mask)
            current_ids, current_mask = [], []
        if current_ids:
            current_ids.append(eos_id)
            current_mask.append(False)
        current_ids.extend(ids)
        current_mask.extend(mask)
    if current_ids:
        rows_ids.append(current_ids)
        rows_mask.append(current_mask)
    if not rows_ids:
        raise ValueError("no conversation with an assistant turn to train on")
    tokens = np.full((len(rows_ids), width), pad_id, dtype=np.int32)
    targets = np.zeros((len(rows_ids), width), dtype=np.bool_)
    for row, (ids, mask) in enumerate(zip(rows_ids, rows_mask, strict=True)):
        tokens[row, : len(ids)] = ids
        targets[row, : len(mask)] = mask
    targets[:, 0] = False
    return TokenRows(tokens, targets)


def pretraining_rows(
    tokenizer: ChatTokenizer, documents: Sequence[str], *, seq_len: int, seed: int
) -> TokenRows:
    """Encode ``documents``, shuffle their order by ``seed``, pack them."""
    order = seeded_permutation(len(documents), seed, stream=2)
    encoded = encode_documents(tokenizer, [documents[i] for i in order])
    return pack_documents(
        encoded, seq_len=seq_len, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id
    )


def sft_rows(
    tokenizer: ChatTokenizer,
    conversations: Sequence[Sequence[ChatMessage]],
    *,
    seq_len: int,
    seed: int,
    packing: bool,
) -> TokenRows:
    """Encode ``conversations`` with the chat template, shuffle by ``seed``, lay into rows."""
    order = seeded_permutation(len(conversations), seed, stream=2)
    encodings = [
        tokenizer.encode_chat(conversations[i], add_generation_prompt=False) for i in order
    ]
    return pack_chats(
        encodings,
        seq_len=seq_len,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        packing=packing,
    )


class BatchOrder:
    """Which rows make up global micro-batch ``k``: positions ``k*B .. k*B + B - 1`` of the
    endless sequence formed by one seeded permutation of the N rows per epoch."""

    def __init__(self, num_rows: int, batch_size: int, seed: int) -> None:
        if num_rows < 1 or batch_size < 1:
            raise ValueError(f"need rows and batch_size >= 1, got {num_rows}, {batch_size}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.seed = seed
        self._epoch = -1
        self._perm = np.zeros(0, dtype=np.int64)

    def _permutation(self, epoch: int) -> IndexArray:
        if epoch != self._epoch:
            self._perm = seeded_permutation(self.num_rows, self.seed, stream=1000 + epoch)
            self._epoch = epoch
        return self._perm

    def epoch_of(self, micro_step: int) -> float:
        """Epochs completed (fractional) after ``micro_step`` micro-batches."""
        return micro_step * self.batch_size / self.num_rows

    def rows(self, micro_step: int) -> IndexArray:
        """Row indices (B,) of global micro-batch ``micro_step`` (0-based)."""
        positions = micro_step * self.batch_size + np.arange(self.batch_size, dtype=np.int64)
        out = np.empty(self.batch_size, dtype=np.int64)
        for i, position in enumerate(positions):
            epoch, offset = divmod(int(position), self.num_rows)
            out[i] = self._permutation(epoch)[offset]
        return out


def shard(rows: IndexArray, rank: int, world_size: int) -> IndexArray:
    """This rank's contiguous share of a global batch's rows (shares differ by at most one)."""
    return np.array_split(rows, world_size)[rank]
