"""The figures of a finished run, as the model card and ``export --metrics`` take them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

from model_runtime.checkpoints import sha256_file
from model_runtime.training.config import TrainConfig
from model_runtime.training.summary import keyed_by_stage, main, run_summary
from model_runtime.training.trainer import Trainer


def test_a_finished_run_reports_held_out_perplexity_tokens_and_time(
    make_train_config: Callable[..., TrainConfig], capsys: pytest.CaptureFixture[str]
) -> None:
    config = make_train_config(max_steps=4, eval_every=2)
    trainer = Trainer(config)
    trainer.setup()
    trainer.train()
    summary = run_summary(Path(config.output_dir))
    assert summary["stage"] == "pretrain"
    assert summary["steps"] == 4
    assert trainer.last_eval is not None
    assert summary["held_out_loss"] == pytest.approx(trainer.last_eval.loss)
    assert summary["held_out_perplexity"] == pytest.approx(math.exp(summary["held_out_loss"]))
    assert summary["tokens_trained"] == 4 * config.tokens_per_step
    assert 0 <= summary["training_hours"] < 1
    assert summary["config"] == json.loads(json.dumps(config.to_dict()))
    train_file, eval_file = config.train_files[0], config.eval_files[0]
    tokenizer_file = Path(str(config.tokenizer))
    assert summary["inputs"] == {
        train_file: sha256_file(Path(train_file)),
        eval_file: sha256_file(Path(eval_file)),
        str(tokenizer_file): sha256_file(tokenizer_file),
    }

    assert main([str(config.output_dir)]) == 0
    assert json.loads(capsys.readouterr().out) == {"pretrain": summary}


def test_runs_of_the_same_stage_are_numbered_in_order() -> None:
    first = {"stage": "sft", "steps": 300}
    second = {"stage": "sft", "steps": 600}
    third = {"stage": "sft", "steps": 900}
    pretrain = {"stage": "pretrain", "steps": 1200}
    assert keyed_by_stage([pretrain, first, second, third]) == {
        "pretrain": pretrain,
        "sft": first,
        "sft-2": second,
        "sft-3": third,
    }


def test_an_unfinished_run_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([str(tmp_path)]) == 1
    assert "no final checkpoint" in capsys.readouterr().err
    assert main([]) == 2


def test_a_run_started_from_weights_names_them_and_their_tokenizer_among_its_inputs(
    make_train_config: Callable[..., TrainConfig], chat_files: tuple[Path, Path]
) -> None:
    """The chain of a multi-stage build: each stage's inputs hold the weights it started from,
    so a changed pretraining shows in the SFT's record too."""
    first = make_train_config(max_steps=2, eval_every=2)
    start = Path(first.output_dir) / "final"
    tuned = make_train_config(
        stage="sft",
        init_from=str(start),
        tokenizer=None,
        model=None,
        train_files=[str(chat_files[0])],
        eval_files=[str(chat_files[1])],
        max_steps=2,
        eval_every=2,
    )
    for config in (first, tuned):  # pretraining, then tuning from its final weights
        trainer = Trainer(config)
        trainer.setup()
        trainer.train()
    inputs = run_summary(Path(tuned.output_dir))["inputs"]
    assert inputs[str(start / "model.safetensors")] == sha256_file(start / "model.safetensors")
    assert inputs[str(start / "tokenizer.json")] == sha256_file(start / "tokenizer.json")
    assert set(inputs) == {
        str(chat_files[0]),
        str(chat_files[1]),
        str(start / "model.safetensors"),
        str(start / "tokenizer.json"),
    }
