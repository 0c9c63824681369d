"""What a training run reads: its tokenizer and its train / held-out token rows.

The tokenizer comes from ``config.tokenizer``, else from the ``init_from`` checkpoint, else it
is trained on the training split (rank 0 trains and saves ``output_dir/tokenizer.json``; a
resumed run reuses that file).

Token rows are cached under ``output_dir/data_cache/`` in a ``.npz`` keyed by the sha256 of
everything they depend on (the files' bytes, the tokenizer, the data settings), so a resumed run
skips tokenizing the corpus again (and in a distributed run only rank 0 tokenizes); a changed
file or setting gives another key.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model_runtime.checkpoints import load_checkpoint
from model_runtime.tokenizer import ChatMessage, ChatTokenizer, train_tokenizer
from model_runtime.training import data as data_lib
from model_runtime.training.config import TrainConfig
from model_runtime.training.data import IndexArray, TokenRows
from model_runtime.training.distributed import DistributedContext, barrier

TOKENIZER_FILE = "tokenizer.json"
CACHE_DIR = "data_cache"
_CACHE_VERSION = 1


@dataclass(frozen=True)
class TrainingData:
    """Rows to train on, and held-out rows to evaluate on (None when there are none)."""

    train: TokenRows
    eval: TokenRows | None


def load_tokenizer(config: TrainConfig, context: DistributedContext) -> ChatTokenizer:
    """The run's tokenizer; see the module docstring."""
    if config.tokenizer is not None:
        return ChatTokenizer.from_file(config.tokenizer)
    if config.init_from is not None:
        loaded = load_checkpoint(config.init_from)
        if loaded.tokenizer_json is None:
            raise ValueError(f"{config.init_from} holds no tokenizer.json: set 'tokenizer'")
        return ChatTokenizer.from_str(loaded.tokenizer_json)
    vocab_size = config.tokenizer_vocab_size
    assert vocab_size is not None  # TrainConfig requires one tokenizer source
    path = Path(config.output_dir) / TOKENIZER_FILE
    if context.is_main and not path.is_file():
        texts = _tokenizer_texts(config)
        with tempfile.TemporaryDirectory() as scratch:
            text_file = Path(scratch) / "train.txt"
            text_file.write_text("\n\n".join(texts), encoding="utf-8")
            tokenizer = train_tokenizer([text_file], vocab_size)
        tokenizer.save(path)
    barrier(context)
    return ChatTokenizer.from_file(path)


def load_training_data(
    config: TrainConfig, tokenizer: ChatTokenizer, context: DistributedContext | None = None
) -> TrainingData:
    """Train and held-out rows for ``config``, from the cache when it has them. In a
    distributed run rank 0 builds and caches them while the other ranks wait, then read it."""
    train_files = data_lib.expand_files(config.train_files)
    eval_files = data_lib.expand_files(config.eval_files) if config.eval_files else []
    key = _cache_key(config, tokenizer, train_files, eval_files)
    cache = Path(config.output_dir) / CACHE_DIR / f"{key}.npz"
    built: TrainingData | None = None
    if not cache.is_file() and (context is None or context.is_main):
        if config.stage == "pretrain":
            built = _pretraining_data(config, tokenizer, train_files, eval_files)
        else:
            built = _sft_data(config, tokenizer, train_files, eval_files)
        _write_cache(cache, built)
    if context is not None:
        barrier(context)
    return built if built is not None else _read_cache(cache)


def _split(config: TrainConfig, count: int) -> tuple[IndexArray, IndexArray]:
    """(train, held-out) indices of the training files' items; none held out when
    ``eval_files`` gives the held-out split."""
    if config.eval_files:
        return np.arange(count, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return data_lib.split_held_out(count, config.eval_fraction, config.seed)


def _tokenizer_texts(config: TrainConfig) -> list[str]:
    files = data_lib.expand_files(config.train_files)
    if config.stage == "pretrain":
        documents = data_lib.read_documents(files)
        train_index, _ = _split(config, len(documents))
        return [documents[i] for i in train_index]
    chats = data_lib.read_conversations(files)
    train_index, _ = _split(config, len(chats))
    return [message.content for i in train_index for message in chats[i]]


def repeat_counts(config: TrainConfig, train_files: list[Path]) -> list[int]:
    """How many times each of ``train_files`` is used per epoch (``repeat_files``, else 1);
    ``ValueError`` for a ``repeat_files`` entry that is not one of the training files."""
    wanted = {Path(path).resolve(): times for path, times in (config.repeat_files or {}).items()}
    resolved = [path.resolve() for path in train_files]
    unknown = [str(path) for path in wanted if path not in resolved]
    if unknown:
        raise ValueError(f"repeat_files names files that are not training files: {unknown}")
    return [int(wanted.get(path, 1)) for path in resolved]


def _repeated(train_index: IndexArray, items_per_file: list[int], repeats: list[int]) -> IndexArray:
    """``train_index`` with each item repeated as often as its file asks."""
    per_item = np.repeat(np.asarray(repeats, dtype=np.int64), items_per_file)
    return np.repeat(train_index, per_item[train_index])


def _pretraining_data(
    config: TrainConfig, tokenizer: ChatTokenizer, train_files: list[Path], eval_files: list[Path]
) -> TrainingData:
    per_file = [data_lib.read_documents([path]) for path in train_files]
    documents = [document for file_documents in per_file for document in file_documents]
    train_index, held_index = _split(config, len(documents))
    train_index = _repeated(
        train_index, [len(d) for d in per_file], repeat_counts(config, train_files)
    )
    held = data_lib.read_documents(eval_files) if eval_files else [documents[i] for i in held_index]
    train = [documents[i] for i in train_index]
    rows = data_lib.pretraining_rows(tokenizer, train, seq_len=config.seq_len, seed=config.seed)
    eval_rows = None
    if held:
        eval_rows = data_lib.pretraining_rows(
            tokenizer, held, seq_len=config.seq_len, seed=config.seed
        )
    return TrainingData(train=rows, eval=eval_rows)


def _sft_data(
    config: TrainConfig, tokenizer: ChatTokenizer, train_files: list[Path], eval_files: list[Path]
) -> TrainingData:
    per_file = [data_lib.read_conversations([path]) for path in train_files]
    chats = [chat for file_chats in per_file for chat in file_chats]
    train_index, held_index = _split(config, len(chats))
    train_index = _repeated(
        train_index, [len(c) for c in per_file], repeat_counts(config, train_files)
    )
    held: Sequence[Sequence[ChatMessage]] = (
        data_lib.read_conversations(eval_files) if eval_files else [chats[i] for i in held_index]
    )

    def rows_of(conversations: Sequence[Sequence[ChatMessage]]) -> TokenRows:
        return data_lib.sft_rows(
            tokenizer,
            conversations,
            seq_len=config.seq_len,
            seed=config.seed,
            packing=config.sft_packing,
        )

    return TrainingData(
        train=rows_of([chats[i] for i in train_index]),
        eval=rows_of(held) if held else None,
    )


def _cache_key(
    config: TrainConfig, tokenizer: ChatTokenizer, train_files: list[Path], eval_files: list[Path]
) -> str:
    digest = hashlib.sha256()
    settings: dict[str, object] = {
        "version": _CACHE_VERSION,
        "stage": config.stage,
        "seq_len": config.seq_len,
        "seed": config.seed,
        "sft_packing": config.sft_packing,
        "eval_fraction": config.eval_fraction if not eval_files else None,
        "train": [str(path) for path in train_files],
        "eval": [str(path) for path in eval_files],
    }
    if config.repeat_files:
        settings["repeats"] = repeat_counts(config, train_files)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(hashlib.sha256(tokenizer.to_str().encode()).digest())
    for path in [*train_files, *eval_files]:
        file_digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                file_digest.update(chunk)
        digest.update(file_digest.digest())
    return digest.hexdigest()[:32]


def _write_cache(path: Path, data: TrainingData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"train_tokens": data.train.tokens, "train_targets": data.train.targets}
    if data.eval is not None:
        arrays.update(eval_tokens=data.eval.tokens, eval_targets=data.eval.targets)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(staging, **arrays)  # type: ignore[arg-type]
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def _read_cache(path: Path) -> TrainingData:
    with np.load(path) as arrays:
        train = TokenRows(arrays["train_tokens"], arrays["train_targets"])
        held = None
        if "eval_tokens" in arrays:
            held = TokenRows(arrays["eval_tokens"], arrays["eval_targets"])
    return TrainingData(train=train, eval=held)
