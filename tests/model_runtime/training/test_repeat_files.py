"""``repeat_files``: a small source's items appear n times per epoch; everything else once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from model_runtime.tokenizer import ChatTokenizer
from model_runtime.training.config import TrainConfig
from model_runtime.training.inputs import load_training_data


@pytest.fixture
def extra_chats(tmp_path: Path) -> Path:
    path = tmp_path / "extra.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": "the cat"}, {"role": "assistant", "content": c}]}
        for c in ("A red barn.", "Two dogs ran.", "The bird sang softly.")
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def sft_targets(config: TrainConfig, tokenizer: ChatTokenizer) -> int:
    return load_training_data(config, tokenizer).train.num_targets


def test_a_repeated_sft_file_adds_its_targets_that_many_times(
    make_train_config: Callable[..., TrainConfig],
    chat_files: tuple[Path, Path],
    extra_chats: Path,
    tokenizer: ChatTokenizer,
) -> None:
    common = {"stage": "sft", "seq_len": 32, "eval_files": [str(chat_files[1])]}
    base = make_train_config(train_files=[str(chat_files[0])], **common)
    once = make_train_config(train_files=[str(chat_files[0]), str(extra_chats)], **common)
    thrice = make_train_config(
        train_files=[str(chat_files[0]), str(extra_chats)],
        repeat_files={str(extra_chats): 3},
        **common,
    )
    extra = sft_targets(once, tokenizer) - sft_targets(base, tokenizer)
    assert extra > 0
    assert sft_targets(thrice, tokenizer) - sft_targets(base, tokenizer) == 3 * extra


def test_a_repeated_pretraining_file_is_read_that_many_times(
    make_train_config: Callable[..., TrainConfig],
    pretrain_files: tuple[Path, Path],
    tokenizer: ChatTokenizer,
) -> None:
    once = make_train_config()
    twice = make_train_config(repeat_files={str(pretrain_files[0]): 2})
    a = load_training_data(once, tokenizer).train
    b = load_training_data(twice, tokenizer).train
    # Every token of the file is a target once per repetition (rows are packed streams).
    assert b.num_targets == pytest.approx(2 * a.num_targets, rel=0.02)


def test_repeat_files_must_name_training_files_with_positive_counts(
    make_train_config: Callable[..., TrainConfig], tokenizer: ChatTokenizer, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"repeat_files\['x.jsonl'\] must be an integer >= 1"):
        make_train_config(repeat_files={"x.jsonl": 0})
    with pytest.raises(ValueError, match="must be an integer"):
        make_train_config(repeat_files={"x.jsonl": 1.5})
    stranger = tmp_path / "stranger.jsonl"
    stranger.write_text('{"text": "hello"}\n', encoding="utf-8")
    config = make_train_config(repeat_files={str(stranger): 2})
    with pytest.raises(ValueError, match="not training files"):
        load_training_data(config, tokenizer)
