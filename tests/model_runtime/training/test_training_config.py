"""TrainConfig: JSON in, clear errors out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from model_runtime.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[3]

MINIMAL: dict[str, Any] = {
    "stage": "pretrain",
    "output_dir": "var/train/x",
    "train_files": ["data/*.jsonl"],
    "tokenizer": "models/base",
    "model": {"dim": 64, "depth": 2, "heads": 2},
    "seq_len": 64,
    "batch_size": 8,
    "max_steps": 10,
    "lr": 1e-3,
}


def write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_reads_a_file_fills_defaults_and_round_trips(tmp_path: Path) -> None:
    config = TrainConfig.from_file(write(tmp_path, MINIMAL))
    assert config.output_dir == Path("var/train/x")
    assert config.train_files == ("data/*.jsonl",)
    assert (config.grad_accum_steps, config.precision, config.grad_clip) == (1, "auto", 1.0)
    assert config.tokens_per_step == 8 * 64
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    model = config.model_config(vocab_size=300)
    assert (model.vocab_size, model.dim, model.dim_head) == (300, 64, 64)


def test_unknown_key_is_named_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, {**MINIMAL, "learning_rate": 0.1})
    with pytest.raises(ValueError, match=r"config\.json: unknown keys learning_rate"):
        TrainConfig.from_file(path)


def test_missing_key_and_wrong_types_are_named(tmp_path: Path) -> None:
    without = {k: v for k, v in MINIMAL.items() if k != "max_steps"}
    with pytest.raises(ValueError, match="missing required keys max_steps"):
        TrainConfig.from_dict(without)
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        TrainConfig.from_dict({**MINIMAL, "batch_size": "8"})
    with pytest.raises(ValueError, match="batch_size must be an integer"):
        TrainConfig.from_dict({**MINIMAL, "batch_size": True})
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig.from_dict({**MINIMAL, "precision": "fp16"})
    with pytest.raises(ValueError, match="train_files must be a list"):
        TrainConfig.from_dict({**MINIMAL, "train_files": "data.jsonl"})
    broken = tmp_path / "broken.json"
    broken.write_text('{"stage": "pretrain",', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        TrainConfig.from_file(broken)


def test_inconsistent_values_are_refused() -> None:
    with pytest.raises(ValueError, match="exactly one of 'model' and 'init_from'"):
        TrainConfig.from_dict({**MINIMAL, "init_from": "models/base"})
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig.from_dict({**MINIMAL, "min_lr": 1.0})
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TrainConfig.from_dict({**MINIMAL, "batch_size": 0})
    with pytest.raises(ValueError, match=r"model: unknown PaLM config keys: width"):
        TrainConfig.from_dict({**MINIMAL, "model": {**MINIMAL["model"], "width": 3}})
    no_tokenizer = {k: v for k, v in MINIMAL.items() if k != "tokenizer"}
    with pytest.raises(ValueError, match="needs a tokenizer"):
        TrainConfig.from_dict(no_tokenizer)


def test_the_example_configs_parse() -> None:
    paths = sorted((REPO / "configs" / "train").glob("*.json"))
    assert REPO / "configs" / "train" / "tiny.json" in paths
    for path in paths:
        TrainConfig.from_file(path)
