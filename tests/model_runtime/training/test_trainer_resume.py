"""The trainer: exact resume, a killed run, accumulation, evaluation, the command line."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model_runtime import bf16_products
from model_runtime.checkpoints import load_checkpoint
from model_runtime.training import trainer as trainer_module
from model_runtime.training.cli import add_train_parser, main
from model_runtime.training.config import TrainConfig
from model_runtime.training.state import read_metrics
from model_runtime.training.step import resolve_precision
from model_runtime.training.trainer import ResumeError, Trainer

STEPS = 8


def train_losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(output_dir) if r["kind"] == "train"]


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(output_dir / "final").model.state_dict()


def run(config: TrainConfig, max_new_steps: int | None = None) -> Trainer:
    trainer = Trainer(config)
    trainer.setup()
    trainer.train(max_new_steps=max_new_steps)
    return trainer


@pytest.fixture
def straight(make_train_config: Callable[..., TrainConfig]) -> TrainConfig:
    """An uninterrupted bf16 run of STEPS steps."""
    config = make_train_config(max_steps=STEPS)
    run(config)
    return config


def test_stop_save_and_resume_in_a_new_trainer_is_bit_identical(
    straight: TrainConfig, make_train_config: Callable[..., TrainConfig]
) -> None:
    expected = train_losses(straight.output_dir)
    assert [step for step, _ in expected] == list(range(1, STEPS + 1))
    assert expected[-1][1] < expected[0][1]  # it does learn

    config = make_train_config(max_steps=STEPS)
    first = Trainer(config)
    first.setup()
    first.train(max_new_steps=STEPS // 2)
    first.save_state()
    del first
    second = Trainer(config)
    second.setup()
    assert (second.step, second.micro_step) == (STEPS // 2, STEPS // 2)
    result = second.train()
    assert result.finished and len(result.losses) == STEPS // 2
    assert train_losses(config.output_dir) == expected  # exact floats
    resumed, reference = final_weights(config.output_dir), final_weights(straight.output_dir)
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)


def test_a_killed_run_resumes_from_its_last_checkpoint(
    straight: TrainConfig, make_train_config: Callable[..., TrainConfig]
) -> None:
    config = make_train_config(max_steps=STEPS, save_every=2)
    run(config, max_new_steps=5)  # "killed" after step 5: checkpoints at 2 and 4 only
    out = Path(config.output_dir)
    assert json.loads((out / "latest.json").read_text())["step"] == 4
    assert not (out / "final").exists()
    # A save that died halfway (no trainer state, no latest.json update) is ignored.
    shutil.copytree(out / "checkpoints" / "step_0000004", out / "checkpoints" / "step_0000006")
    (out / "checkpoints" / "step_0000006" / "trainer_state.pt").unlink()

    trainer = Trainer(config)
    trainer.setup()
    assert trainer.step == 4
    assert [step for step, _ in train_losses(out)] == [1, 2, 3, 4]  # step 5 was lost
    trainer.train()
    assert train_losses(out) == train_losses(straight.output_dir)
    resumed, reference = final_weights(out), final_weights(straight.output_dir)
    assert all(torch.equal(resumed[name], reference[name]) for name in reference)
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step_0000006", "step_0000008"]  # keep_checkpoints = 2


def test_resume_refuses_a_changed_batch_or_corrupted_state(
    make_train_config: Callable[..., TrainConfig],
) -> None:
    config = make_train_config(max_steps=2)
    run(config)
    with pytest.raises(ResumeError, match="batch_size was 4, is now 2"):
        Trainer(config.replace(batch_size=2)).setup()
    state = Path(config.output_dir) / "checkpoints" / "step_0000002" / "trainer_state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    with pytest.raises(ResumeError, match="sha256 mismatch"):
        Trainer(config).setup()


def test_gradient_accumulation_equals_the_bigger_batch(
    make_train_config: Callable[..., TrainConfig],
) -> None:
    one = make_train_config(max_steps=4, precision="fp32", batch_size=4)
    two = make_train_config(max_steps=4, precision="fp32", batch_size=2, grad_accum_steps=2)
    run(one)
    run(two)
    a, b = train_losses(one.output_dir), train_losses(two.output_dir)
    assert [s for s, _ in a] == [s for s, _ in b]
    assert all(abs(x - y) < 1e-5 for (_, x), (_, y) in zip(a, b, strict=True))
    wa, wb = final_weights(one.output_dir), final_weights(two.output_dir)
    assert all(torch.allclose(wa[n], wb[n], atol=1e-5) for n in wa)


def test_evaluation_reports_loss_and_perplexity_over_the_held_out_targets(
    make_train_config: Callable[..., TrainConfig],
) -> None:
    config = make_train_config(max_steps=2, eval_batches=None, eval_every=1)
    trainer = run(config)
    assert trainer.eval_rows is not None
    result = trainer.last_eval
    assert result is not None
    assert result.tokens == trainer.eval_rows.num_targets
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert 0 < result.loss < math.log(trainer.tokenizer.vocab_size) + 1
    evals = [r for r in read_metrics(config.output_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [1, 2]
    meta = json.loads((Path(config.output_dir) / "final" / "meta.json").read_text())
    assert meta["metrics"]["eval_loss"] == pytest.approx(result.loss)
    # "auto" precision, resolved for this CPU, is recorded with the model
    assert meta["metrics"]["precision"] == resolve_precision("auto", torch.device("cpu"))
    if meta["metrics"]["precision"] == "bf16":  # and how this CPU computed its products
        expected = "float32_gemm" if bf16_products.float32_faster() else "native"
        assert meta["metrics"]["bf16_products"] == expected
    else:
        assert "bf16_products" not in meta["metrics"]


def test_command_line_trains_from_a_config_file(
    make_train_config: Callable[..., TrainConfig],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_train_config(max_steps=5)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(config.to_dict()))
    assert main(["--config", str(path), "--set", "max_steps=2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 2 and summary["finished"] is True
    assert (Path(config.output_dir) / "final" / "model.safetensors").is_file()
    assert main(["--config", str(path), "--set", "max_step=2"]) == 1
    assert "unknown keys max_step" in capsys.readouterr().err

    import argparse

    parser = argparse.ArgumentParser()
    add_train_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", str(path)])
    assert args.func.__name__ == "run_train" and args.config == path


def test_every_rank_computes_bf16_products_as_rank_0_chose(
    make_train_config: Callable[..., TrainConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The choice goes through the trainer's broadcast (rank 0's flag on every rank): here a
    broadcast that answers the other way, as a rank 0 that measured differently would."""
    monkeypatch.setattr(bf16_products, "_decision", None)
    monkeypatch.delenv(bf16_products.ENV, raising=False)
    monkeypatch.setattr(bf16_products, "product_rates", lambda: (100.0, 300.0))  # float32 wins
    monkeypatch.setattr(trainer_module, "broadcast_flag", lambda flag, context: not flag)
    trainer = Trainer(make_train_config(max_steps=1, precision="bf16"))
    trainer.setup()
    assert bf16_products.float32_faster() is False  # rank 0's choice, not this process's
