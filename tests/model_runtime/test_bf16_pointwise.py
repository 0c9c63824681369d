"""The fused SwiGLU and rotary kernels: float32 arithmetic rounded once to bf16, inputs read
where they lie in the fused projection, and the model's prefill and decoding routed through
them where they run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_runtime import bf16_pointwise, bf16_prefill_attention, cpu_kernels, palm
from model_runtime.config import PaLMConfig
from model_runtime.cpu_features import cpu_flags
from model_runtime.palm import PaLM
from model_runtime.rotary import RotaryTables

pytestmark = pytest.mark.skipif(
    not cpu_flags() >= cpu_kernels.REQUIRED_CPU_FLAGS,
    reason="this CPU lacks AVX512-BF16 / AVX512-BW / AVX512-VL: the kernels are not used here",
)


def _bf16(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=generator) * scale).bfloat16()


def _assert_rounded_once(out: torch.Tensor, exact: torch.Tensor) -> None:
    """Within half a bf16 step (2^-8 relative) of the exact value, plus float32 arithmetic's
    own error (a few 2^-23 relative, and an absolute 1e-30 for values that underflow)."""
    error = (out.double() - exact).abs()
    allowed = exact.abs() * (2.0**-8 + 2.0**-20) + 1e-30
    assert bool((error <= allowed).all()), float((error / exact.abs().clamp(min=1e-30)).max())


@pytest.mark.parametrize("width", [1, 7, 16, 31, 100, 3072])
def test_swiglu_is_the_exact_value_rounded_once(width: int) -> None:
    value, gate = _bf16(5, width, seed=1, scale=3.0), _bf16(5, width, seed=2, scale=4.0)
    out = bf16_pointwise.swiglu(value, gate)
    assert out is not None and out.shape == (5, width) and out.dtype == torch.bfloat16
    _assert_rounded_once(out, F.silu(gate.double()) * value.double())


def test_swiglu_at_the_ends_of_the_range() -> None:
    gate = torch.tensor([[-1e4, -100.0, -88.5, -20.0, -1e-3, 0.0, 1e-3, 20.0, 88.5, 100.0, 1e4]])
    gate = gate.bfloat16()
    value = torch.full_like(gate, 1.5)
    out = bf16_pointwise.swiglu(value, gate)
    assert out is not None and bool(torch.isfinite(out).all())
    _assert_rounded_once(out, F.silu(gate.double()) * 1.5)


def test_swiglu_of_nan_is_nan() -> None:
    gate = torch.tensor([[float("nan"), 1.0, -1.0]]).bfloat16()
    out = bf16_pointwise.swiglu(torch.ones_like(gate), gate)
    assert (
        out is not None and bool(torch.isnan(out[0, 0])) and bool(torch.isfinite(out[0, 1:]).all())
    )


def test_swiglu_reads_slices_of_a_fused_output_and_writes_into_one() -> None:
    """The prefill's case: value and gate are column ranges of the fused projection, and the
    result goes into the second part of the output projection's joined input."""
    fused = _bf16(2, 9, 40, seed=3, scale=2.0)
    value, gate = fused[..., 8:24], fused[..., 24:40]
    joined = torch.full((2, 9, 20), 7.0, dtype=torch.bfloat16)
    target = joined[..., 4:]
    assert bf16_pointwise.swiglu(value, gate, out=target) is target
    _assert_rounded_once(target, F.silu(gate.double()) * value.double())
    assert bool((joined[..., :4] == 7.0).all())  # nothing written outside ``out``


def test_swiglu_leaves_what_it_does_not_take_to_torch() -> None:
    value, gate = _bf16(3, 8, seed=4), _bf16(3, 8, seed=5)
    assert bf16_pointwise.swiglu(value.float(), gate.float()) is None
    assert bf16_pointwise.swiglu(value[:, ::2], gate[:, ::2]) is None  # last axis strided
    assert bf16_pointwise.swiglu(value, gate[:2]) is None  # shapes differ
    assert bf16_pointwise.swiglu(value.t(), gate.t()) is None
    trained = value.float().requires_grad_().bfloat16()
    assert bf16_pointwise.swiglu(trained, gate) is None  # autograd: no backward here
    with torch.no_grad():
        assert bf16_pointwise.swiglu(trained, gate) is not None


def _config(heads: int = 3, dim_head: int = 64) -> PaLMConfig:
    return PaLMConfig(
        vocab_size=64,
        dim=heads * dim_head,
        depth=1,
        heads=heads,
        dim_head=dim_head,
        max_seq_len=1024,
    )


@pytest.mark.parametrize("dim_head", [64, 18, 2])
@pytest.mark.parametrize("start", [0, 700])
def test_rotation_is_the_complex_product_rounded_once(dim_head: int, start: int) -> None:
    config = _config(dim_head=dim_head)
    rotary = RotaryTables.span(config, start, 6, torch.device("cpu"))
    qk = _bf16(2, 6, config.heads + 1, dim_head, seed=6, scale=2.0)
    rotated = bf16_pointwise.rotate_qk(qk, rotary.queries[:, :, 0], rotary.keys)
    assert rotated is not None
    q, k = rotated
    assert q.shape == (2, 6, 3, dim_head) and k.shape == (2, 6, dim_head)
    assert q.is_contiguous() and k.is_contiguous()
    pairs = torch.view_as_complex(qk.double().reshape(2, 6, 4, dim_head // 2, 2))
    exact = torch.view_as_real(pairs * rotary.joint.to(torch.complex128)).flatten(-2)
    _assert_rounded_once(q, exact[:, :, :3])
    _assert_rounded_once(k, exact[:, :, 3])
    torch.testing.assert_close(q, rotary.rotate_queries(qk[:, :, :3]), atol=0, rtol=2**-7)


def test_rotation_with_per_row_positions_reads_each_row_s_factors() -> None:
    """A left-padded batch: rows at different positions, factors (B, T, ...)."""
    config = _config()
    positions = torch.tensor([[0, 0, 1, 2], [5, 6, 7, 8]])
    rotary = RotaryTables.build(config, positions)
    qk = _bf16(2, 4, config.heads + 1, 64, seed=7)
    rotated = bf16_pointwise.rotate_qk(qk, rotary.queries[:, :, 0], rotary.keys)
    assert rotated is not None
    expected = rotary.rotate_joint(qk)
    torch.testing.assert_close(rotated[0], expected[:, :, :3], atol=0, rtol=2**-7)
    torch.testing.assert_close(rotated[1], expected[:, :, 3], atol=0, rtol=2**-7)


def test_rotation_leaves_what_it_does_not_take_to_torch() -> None:
    config = _config()
    rotary = RotaryTables.span(config, 0, 4, torch.device("cpu"))
    qk = _bf16(1, 4, config.heads + 1, 64, seed=8)
    factors = (rotary.queries[:, :, 0], rotary.keys)
    assert bf16_pointwise.rotate_qk(qk.float(), *factors) is None
    assert bf16_pointwise.rotate_qk(qk[:, :3], *factors) is None  # positions differ
    assert bf16_pointwise.rotate_qk(qk[..., :32], *factors) is None  # head size differs
    assert bf16_pointwise.rotate_qk(qk[:, :, :1], *factors) is None  # no query head
    trained = qk.float().requires_grad_().bfloat16()
    assert bf16_pointwise.rotate_qk(trained, *factors) is None


def test_the_model_s_prefill_and_decoding_run_through_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    for name in ("swiglu", "rotate_qk"):
        real = getattr(bf16_pointwise, name)

        def counting(*args: object, _real=real, _name=name, **kwargs: object) -> object:
            result = _real(*args, **kwargs)
            calls.append(_name if result is not None else f"{_name}: fell back")
            return result

        monkeypatch.setattr(bf16_pointwise, name, counting)
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=128, dim=128, depth=2, heads=2, dim_head=64, max_seq_len=32)
    model = PaLM(config).bfloat16().eval()
    cache = palm.KVCache.empty(config, 1, device="cpu", dtype=torch.bfloat16)
    with torch.no_grad():
        model(torch.randint(1, 128, (1, 6)), cache=cache)  # prefill
        model(torch.randint(1, 128, (1, 1)), cache=cache)  # a decoding step
    assert calls == ["rotate_qk", "swiglu"] * 4
    calls.clear()
    model.float().train()
    model(torch.randint(1, 128, (1, 6))).sum().backward()  # training: torch's operations
    assert all(call.endswith("fell back") for call in calls)


def test_evaluation_under_autocast_runs_through_the_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The trainer evaluates float32 weights under bf16 autocast without autograd: activations
    are bf16, so the kernels take them, and the loss is the training forward's."""
    taken: list[bool] = []
    for module, name in ((bf16_pointwise, "swiglu"), (bf16_prefill_attention, "prefill_attention")):
        real = getattr(module, name)

        def counting(*args: object, _real=real, **kwargs: object) -> object:
            result = _real(*args, **kwargs)
            taken.append(result is not None)
            return result

        monkeypatch.setattr(module, name, counting)
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=128, dim=128, depth=2, heads=2, dim_head=64, max_seq_len=32)
    model = PaLM(config).eval()
    tokens = torch.randint(1, 128, (2, 12))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            evaluated = model(tokens)
        assert taken == [True] * 4  # attention and SwiGLU in each of two layers
        trained = model(tokens)
    torch.testing.assert_close(evaluated, trained.detach(), atol=0.1, rtol=0.05)
