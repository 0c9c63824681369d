"""The engine's serving dtype: ``"auto"`` is bf16 where the hardware multiplies it, float32 where
bf16 would be emulated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model_runtime.engine import Engine, EngineConfig
from model_runtime.engine import engine as engine_module


@pytest.mark.parametrize(("native", "expected"), [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_is_bf16_only_where_the_cpu_has_it(
    native: bool, expected: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "native_bf16_cpu", lambda: native)
    assert engine_module.fastest_dtype("cpu") == expected
    assert EngineConfig(dtype="auto").torch_dtype == expected
    # an explicit dtype or None (as saved) is taken as it is
    assert EngineConfig(dtype="bfloat16").torch_dtype == torch.bfloat16
    assert EngineConfig(dtype="float32").torch_dtype == torch.float32
    assert EngineConfig().torch_dtype is None


def test_an_unknown_dtype_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="'auto'"):
        EngineConfig(dtype="float16")  # type: ignore[arg-type]


@pytest.mark.parametrize("native", [True, False])
def test_an_engine_loaded_with_auto_serves_in_that_dtype(
    native: bool, tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_module, "native_bf16_cpu", lambda: native)
    engine = Engine.from_checkpoint(tiny_policy_dir, EngineConfig(dtype="auto"))
    try:
        dtypes = {p.dtype for p in engine.model.parameters()}
        assert dtypes == {torch.bfloat16 if native else torch.float32}
    finally:
        engine.close()
