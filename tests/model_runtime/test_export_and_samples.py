"""``export`` (a trained checkpoint -> a bf16 serving directory) and ``samples`` (Markdown
answers for the model card), through the package CLI on a real tiny policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model_runtime.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from model_runtime.cli import main
from model_runtime.samples import Sample, sample_answers, to_markdown
from model_runtime.tokenizer import ChatTokenizer


def test_export_writes_a_verified_bf16_copy_that_answers_like_the_original(
    tiny_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    figures = tmp_path / "figures.json"
    figures.write_text(json.dumps({"held_out_perplexity": 12.5}))
    out = tmp_path / "served"
    assert (
        main(
            [
                "export",
                "--model",
                str(tiny_policy_dir),
                "--out",
                str(out),
                "--metrics",
                str(figures),
            ]
        )
        == 0
    )
    assert "bfloat16" in capsys.readouterr().out
    original = load_checkpoint(tiny_policy_dir)
    exported = load_checkpoint(out)
    assert exported.meta["dtype"] == "bfloat16"
    assert exported.model.embed.weight.dtype == torch.bfloat16
    assert exported.meta["metrics"]["held_out_perplexity"] == 12.5
    assert exported.meta["metrics"]["exported_from"]["sha256"] == original.meta["sha256"]
    assert exported.tokenizer_json == original.tokenizer_json
    size = (out / "model.safetensors").stat().st_size
    assert size < 0.55 * (tiny_policy_dir / "model.safetensors").stat().st_size
    ids = torch.tensor([[1, 7, 9, 11, 13]])
    with torch.inference_mode():
        reference = original.model(ids)
        served = exported.model.float()(ids)
    assert torch.allclose(served, reference, atol=0.1)


def test_export_refuses_a_checkpoint_without_a_tokenizer(
    tiny_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = tmp_path / "bare"
    save_checkpoint(load_checkpoint(tiny_policy_dir).model, bare, tokenizer_json=None)
    assert main(["export", "--model", str(bare), "--out", str(tmp_path / "x")]) == 1
    assert "no tokenizer.json" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_export_of_a_corrupted_checkpoint_fails_and_writes_nothing(
    tiny_policy_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    save_checkpoint(
        load_checkpoint(tiny_policy_dir).model,
        broken,
        tokenizer_json=(tiny_policy_dir / "tokenizer.json").read_text(),
    )
    with (broken / "model.safetensors").open("r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\xff" * 8)
    with pytest.raises(CheckpointError):
        load_checkpoint(broken)
    assert main(["export", "--model", str(broken), "--out", str(tmp_path / "y")]) == 1
    assert not (tmp_path / "y").exists()


def test_samples_are_reproducible_and_rendered_as_markdown(
    tiny_policy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# everyday prompts\nHello there\n\nWhat is tea?\n")
    args = [
        "samples",
        "--model",
        str(tiny_policy_dir),
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "12",
    ]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert first.count("**User:**") == 2
    assert "**User:** Hello there" in first and "**User:** What is tea?" in first
    assert "# everyday" not in first

    loaded = load_checkpoint(tiny_policy_dir)
    tokenizer = ChatTokenizer.from_str(loaded.tokenizer_json or "")
    [sample] = sample_answers(loaded.model, tokenizer, ["What is tea?"], seed=1, max_new_tokens=12)
    assert sample.finish_reason in ("stop", "length")
    assert 0 < sample.tokens <= 12


def test_markdown_quotes_every_answer_line() -> None:
    text = to_markdown([Sample("Hi", "One.\n\nTwo.", "stop", 4)])
    assert text == "**User:** Hi\n\n> One.\n>\n> Two.\n\n*finish: stop, 4 tokens*\n"
