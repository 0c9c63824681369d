"""The figures of a finished run, as the model card and ``export --metrics`` take them."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest

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
