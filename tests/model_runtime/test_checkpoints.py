"""Checkpoint directories: bit-exact round trips, clear errors on damage, atomic publication."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from model_runtime import checkpoints
from model_runtime.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from model_runtime.lora import add_lora
from model_runtime.palm import PaLM

TOKENIZER_JSON = '{"model": {"type": "BPE"}, "note": "stand-in tokenizer text"}'


def _assert_same_weights(a: PaLM, b: PaLM) -> None:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert state_a[key].dtype == state_b[key].dtype, key
        assert torch.equal(state_a[key], state_b[key]), key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_save_load_round_trip_is_bit_exact(
    make_model: Callable[..., PaLM], tmp_path: Path, dtype: torch.dtype
) -> None:
    model = make_model(qk_norm=True).to(dtype)
    target = tmp_path / "v1"
    sha = save_checkpoint(model, target, tokenizer_json=TOKENIZER_JSON, metrics={"loss": 1.25})
    assert sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "meta.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert sha == checkpoints.sha256_file(target / "model.safetensors")

    loaded = load_checkpoint(target)
    _assert_same_weights(loaded.model, model)
    assert loaded.config == model.config
    assert loaded.tokenizer_json == TOKENIZER_JSON
    assert loaded.meta["sha256"] == sha
    assert loaded.meta["metrics"] == {"loss": 1.25}
    assert loaded.meta["dtype"] == str(dtype).removeprefix("torch.")
    assert not loaded.model.training
    tokens = torch.randint(0, 64, (2, 6))
    with torch.inference_mode():
        assert torch.equal(loaded.model(tokens), model.eval()(tokens))


def test_load_casts_to_the_requested_dtype(tiny_model: PaLM, tmp_path: Path) -> None:
    model = tiny_model.to(torch.bfloat16)
    save_checkpoint(model, tmp_path / "ckpt", tokenizer_json=None)
    loaded = load_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    assert loaded.tokenizer_json is None
    assert not (tmp_path / "ckpt" / "tokenizer.json").exists()
    for key, value in loaded.model.state_dict().items():
        assert value.dtype == torch.float32
        assert torch.equal(value, model.state_dict()[key].float()), key


def test_config_json_carries_format_version(tiny_model: PaLM, tmp_path: Path) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer_json=None)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["format_version"] == 1
    assert config["dim"] == 32


def test_corrupted_byte_names_the_weights_file(tiny_model: PaLM, tmp_path: Path) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer_json=None)
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit inside the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 mismatch"):
        load_checkpoint(tmp_path / "ckpt")


def test_truncated_weights_file_is_reported(tiny_model: PaLM, tmp_path: Path) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer_json=None)
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated"):
        load_checkpoint(tmp_path / "ckpt")


@pytest.mark.parametrize("name", ["meta.json", "model.safetensors", "config.json"])
def test_missing_file_is_named(tiny_model: PaLM, tmp_path: Path, name: str) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer_json=TOKENIZER_JSON)
    (tmp_path / "ckpt" / name).unlink()
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.") + ": missing"):
        load_checkpoint(tmp_path / "ckpt")


def test_altered_config_or_tokenizer_is_caught(tiny_model: PaLM, tmp_path: Path) -> None:
    save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer_json=TOKENIZER_JSON)
    tokenizer = tmp_path / "ckpt" / "tokenizer.json"
    tokenizer.write_text(TOKENIZER_JSON.replace("stand-in", "stand_in"))  # same length
    with pytest.raises(CheckpointError, match=r"tokenizer\.json: sha256 mismatch"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_checkpoint(tmp_path / "absent")


def test_overwrite_publishes_the_new_version_without_litter(
    make_model: Callable[..., PaLM], tmp_path: Path
) -> None:
    target = tmp_path / "active"
    save_checkpoint(make_model(seed=1), target, tokenizer_json=None)
    new = make_model(seed=2)
    save_checkpoint(new, target, tokenizer_json=None, metrics={"step": 2})
    _assert_same_weights(load_checkpoint(target).model, new)
    assert [p.name for p in tmp_path.iterdir()] == ["active"]


def _failing_replace(
    monkeypatch: pytest.MonkeyPatch, fail_when: Callable[[Path, Path], bool]
) -> None:
    real_replace = os.replace

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if fail_when(Path(src), Path(dst)):
            raise OSError("simulated crash while publishing")
        real_replace(src, dst)

    monkeypatch.setattr(checkpoints.os, "replace", replace)


@pytest.mark.parametrize(
    "fail_when",
    [
        lambda src, dst: ".staging-" in src.name,  # the new version moving into place
        lambda src, dst: ".old-" in dst.name,  # the old version moving aside
    ],
    ids=["swap-in", "move-aside"],
)
def test_crash_while_publishing_keeps_the_old_checkpoint_and_no_litter(
    make_model: Callable[..., PaLM],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    fail_when: Callable[[Path, Path], bool],
) -> None:
    target = tmp_path / "active"
    old = make_model(seed=1)
    save_checkpoint(old, target, tokenizer_json=TOKENIZER_JSON)
    _failing_replace(monkeypatch, fail_when)
    with pytest.raises(OSError, match="simulated crash"):
        save_checkpoint(make_model(seed=2), target, tokenizer_json=None)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["active"]
    loaded = load_checkpoint(target)
    _assert_same_weights(loaded.model, old)
    assert loaded.tokenizer_json == TOKENIZER_JSON


def test_crash_while_writing_leaves_nothing_behind(
    tiny_model: PaLM, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_save_model(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "save_model", broken_save_model)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tiny_model, tmp_path / "new", tokenizer_json=None)
    assert list(tmp_path.iterdir()) == []


def test_model_with_lora_adapters_is_refused(tiny_model: PaLM, tmp_path: Path) -> None:
    add_lora(tiny_model, "actor", rank=2, alpha=2)
    with pytest.raises(ValueError, match="LoRA"):
        save_checkpoint(tiny_model, tmp_path / "ckpt", tokenizer_json=None)
    assert list(tmp_path.iterdir()) == []
