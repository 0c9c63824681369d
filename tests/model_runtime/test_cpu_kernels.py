"""Building and loading palmloop's CPU kernels: decided once per process, built where the CPU
can run them, and a clean fallback to torch's operations where it cannot or must not."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model_runtime import bf16_pointwise, bf16_row_product, cpu_kernels, packed_linear
from model_runtime.config import PaLMConfig
from model_runtime.cpu_features import cpu_flags
from model_runtime.palm import PaLM


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.mark.skipif(
    not cpu_flags() >= cpu_kernels.REQUIRED_CPU_FLAGS,
    reason="this CPU lacks AVX512-BF16 / AVX512-BW / AVX512-VL: the kernels are not used here",
)
def test_the_kernels_build_and_load_on_this_cpu() -> None:
    module = cpu_kernels.load()
    assert module is not None, cpu_kernels.why_unavailable()
    assert cpu_kernels.why_unavailable() is None
    assert {"row_product_sum", "swiglu_into", "rotate_qk"} <= set(dir(module))


def test_switched_off_they_are_not_built(monkeypatch: pytest.MonkeyPatch) -> None:
    _forget_decision(monkeypatch)
    monkeypatch.setenv(cpu_kernels.SWITCH, "0")
    built: list[bool] = []
    monkeypatch.setattr(cpu_kernels, "_build", lambda: built.append(True))
    assert cpu_kernels.load() is None
    assert built == []
    assert f"{cpu_kernels.SWITCH} turns them off" == cpu_kernels.why_unavailable()
    x, w = _bf16(1, 64, seed=21), _bf16(8, 64, seed=22)
    assert bf16_row_product.row_product_sum((x,), (w,)) is None
    assert bf16_pointwise.swiglu(x, w[:1]) is None
    with torch.inference_mode():  # the model's products still work, through oneDNN
        torch.testing.assert_close(packed_linear.linear(x, w), F.linear(x, w), atol=0.05, rtol=0.01)


def test_switched_off_the_model_gives_what_it_gives_with_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A prefill and a decode step through torch's operations alone against the same with the
    kernels (where this CPU runs them): the same logits to bf16 accuracy."""
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=512, dim=128, depth=3, heads=2, dim_head=64, max_seq_len=64)
    model = PaLM(config).bfloat16().eval()
    tokens = torch.randint(1, 512, (2, 12))
    with torch.no_grad():
        with_kernels = model(tokens)
        _forget_decision(monkeypatch)
        monkeypatch.setenv(cpu_kernels.SWITCH, "0")
        without = model(tokens)
    assert cpu_kernels.load() is None
    torch.testing.assert_close(with_kernels, without, atol=0.05, rtol=0.05)
    assert (with_kernels.argmax(-1) == without.argmax(-1)).float().mean() >= 0.9


def test_a_cpu_without_the_instructions_does_not_build_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forget_decision(monkeypatch)
    monkeypatch.delenv(cpu_kernels.SWITCH, raising=False)
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert cpu_kernels.load() is None
    assert cpu_kernels.why_unavailable() == "this CPU lacks avx512_bf16, avx512bw, avx512vl"


def test_a_failed_build_falls_back_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _forget_decision(monkeypatch)
    monkeypatch.delenv(cpu_kernels.SWITCH, raising=False)
    monkeypatch.setattr(cpu_kernels, "cpu_flags", lambda: cpu_kernels.REQUIRED_CPU_FLAGS)

    def no_compiler() -> None:
        raise RuntimeError("Error building extension: g++ not found")

    monkeypatch.setattr(cpu_kernels, "_build", no_compiler)
    assert cpu_kernels.load() is None
    assert cpu_kernels.load() is None  # decided once: no second attempt, no second warning
    reason = cpu_kernels.why_unavailable()
    assert reason is not None and "g++ not found" in reason
    warnings = [r for r in caplog.records if "CPU kernels not in use" in r.getMessage()]
    assert len(warnings) == 1


def test_a_lock_left_by_a_dead_build_is_removed(tmp_path: Path) -> None:
    """torch waits forever on a build directory's lock file; one older than a build could take
    was left by a build that was killed."""
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "lock").touch()
    old = time.time() - cpu_kernels.STALE_LOCK_SECONDS - 60
    os.utime(stale / "lock", (old, old))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "lock").touch()
    cpu_kernels._remove_stale_lock(stale)
    cpu_kernels._remove_stale_lock(fresh)
    cpu_kernels._remove_stale_lock(tmp_path / "never-built")
    assert not (stale / "lock").exists()
    assert (fresh / "lock").exists()  # another process may be building right now


def _forget_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh process's view: nothing decided yet (restored after the test)."""
    monkeypatch.setattr(cpu_kernels, "_settled", False)
    monkeypatch.setattr(cpu_kernels, "_module", None)
    monkeypatch.setattr(cpu_kernels, "_why_not", None)
