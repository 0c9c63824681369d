"""Tiny data, tokenizer and trainer configs shared by the training tests (fixtures only)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from model_runtime.tokenizer import ChatTokenizer, train_tokenizer
from model_runtime.training.config import TrainConfig

# fmt: off
WORDS = (
    "the", "cat", "sat", "on", "a", "mat", "while", "two", "dogs", "ran", "past", "old", "red",
    "barn", "and", "bird", "sang", "softly", "in", "tall", "green", "tree", "near", "water",
    "under", "blue", "sky", "every", "morning",
)
# fmt: on


def sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + "."
        for _ in range(count)
    ]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    """Byte-level BPE with 320 ids trained on the tiny word list."""
    path = tmp_path_factory.mktemp("tok") / "text.txt"
    path.write_text("\n".join(sentences(400, seed=1)), encoding="utf-8")
    return train_tokenizer([path], 320)


@pytest.fixture(scope="session")
def tokenizer_file(tokenizer: ChatTokenizer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tokenizer.save(tmp_path_factory.mktemp("tokfile"))


@pytest.fixture(scope="session")
def pretrain_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train.jsonl, valid.jsonl) of {"text"} documents of 2-6 sentences."""
    root = tmp_path_factory.mktemp("pretrain")
    rng = random.Random(2)
    paths = []
    for name, count, offset in (("train", 60, 0), ("valid", 8, 5000)):
        path = root / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for index in range(count):
                text = " ".join(sentences(rng.randint(2, 6), seed=offset + index))
                handle.write(json.dumps({"text": text}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


@pytest.fixture(scope="session")
def chat_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(train.jsonl, valid.jsonl) of {"messages"} chats with one or two exchanges."""
    root = tmp_path_factory.mktemp("sft")
    rng = random.Random(3)
    paths = []
    for name, count in (("train", 40), ("valid", 6)):
        path = root / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as handle:
            for index in range(count):
                messages: list[dict[str, str]] = []
                if index % 3 == 0:
                    messages.append({"role": "system", "content": "Be brief."})
                for turn in range(rng.randint(1, 2)):
                    seed = rng.randrange(10_000) + turn
                    messages.append({"role": "user", "content": sentences(1, seed)[0]})
                    messages.append({"role": "assistant", "content": sentences(1, seed + 1)[0]})
                handle.write(json.dumps({"messages": messages, "id": f"{name}-{index}"}) + "\n")
        paths.append(path)
    return paths[0], paths[1]


TINY_MODEL = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16, "max_seq_len": 32}


@pytest.fixture
def tiny_model_fields() -> dict[str, int]:
    """PaLMConfig fields of the trainer tests' model (vocab from the tokenizer): ~25k params."""
    return dict(TINY_MODEL)


@pytest.fixture
def make_train_config(
    tmp_path: Path, tokenizer_file: Path, pretrain_files: tuple[Path, Path]
) -> Callable[..., TrainConfig]:
    """A tiny pretraining config (dim 32, depth 2, seq 16, batch 4, 6 steps); keyword
    overrides replace fields (``output_dir`` defaults to a fresh directory per call)."""
    counter = iter(range(1000))

    def build(**overrides: Any) -> TrainConfig:
        fields: dict[str, Any] = {
            "stage": "pretrain",
            "output_dir": str(tmp_path / f"run{next(counter)}"),
            "train_files": [str(pretrain_files[0])],
            "eval_files": [str(pretrain_files[1])],
            "tokenizer": str(tokenizer_file),
            "model": TINY_MODEL,
            "seq_len": 16,
            "batch_size": 4,
            "max_steps": 6,
            "lr": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 2,
            "eval_batches": 2,
            "seed": 0,
            "device": "cpu",
            "progress_bar": False,
        }
        fields.update(overrides)
        return TrainConfig.from_dict(fields)

    return build
