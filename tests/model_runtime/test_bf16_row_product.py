"""The bf16 decoding kernel (row_product_sum): the products of F.linear (float32 sums, rounded
once), used by the model's one-row products where it runs. Building, switching off and falling
back: test_cpu_kernels.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model_runtime import bf16_row_product, cpu_kernels, packed_linear
from model_runtime.config import PaLMConfig
from model_runtime.cpu_features import cpu_flags
from model_runtime.palm import KVCache, PaLM

needs_kernel_cpu = pytest.mark.skipif(
    not cpu_flags() >= cpu_kernels.REQUIRED_CPU_FLAGS,
    reason="this CPU lacks AVX512-BF16 / AVX512-BW / AVX512-VL: the kernel is not used here",
)


def _bf16(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).bfloat16()


def _reference(inputs: list[torch.Tensor], weights: list[torch.Tensor]) -> torch.Tensor:
    """The exact sum in float64 (every bf16 product is exact there)."""
    total = sum(F.linear(x.double(), w.double()) for x, w in zip(inputs, weights, strict=True))
    assert isinstance(total, torch.Tensor)
    return total


def _assert_rounded_once(out: torch.Tensor, exact: torch.Tensor) -> None:
    """``out`` is the exact value rounded to bf16, give or take float32 summation order: within
    one bf16 step (2^-7 relative) of it, plus a float32 sum's error for values near 0."""
    error = (out.double() - exact).abs()
    allowed = exact.abs() * 2.0**-7 + 1e-4 * exact.abs().max()
    assert bool((error <= allowed).all()), float((error - allowed).max())


@needs_kernel_cpu
@pytest.mark.parametrize("rows_in", [1, 2])
@pytest.mark.parametrize("rows_out", [1, 5, 64, 1000])
@pytest.mark.parametrize("width", [16, 32, 100, 128, 300, 768])
def test_products_are_exact_sums_rounded_once(rows_in: int, rows_out: int, width: int) -> None:
    x, w = _bf16(rows_in, width, seed=1), _bf16(rows_out, width, seed=2)
    out = bf16_row_product.row_product_sum((x,), (w,))
    assert out is not None and out.shape == (rows_in, rows_out) and out.dtype == torch.bfloat16
    _assert_rounded_once(out, _reference([x], [w]))


@needs_kernel_cpu
def test_a_sum_of_products_over_different_widths_is_rounded_once() -> None:
    inputs = [_bf16(1, 1, 192, seed=3), _bf16(1, 1, 77, seed=4), _bf16(1, 1, 512, seed=5)]
    weights = [_bf16(96, 192, seed=6), _bf16(96, 77, seed=7), _bf16(96, 512, seed=8)]
    out = bf16_row_product.row_product_sum(inputs, weights)
    assert out is not None and out.shape == (1, 1, 96)
    _assert_rounded_once(out[0], _reference([x[0] for x in inputs], weights))


@needs_kernel_cpu
def test_two_rows_of_a_sum_are_each_their_own_sum() -> None:
    inputs = [_bf16(2, 1, 160, seed=23), _bf16(2, 1, 96, seed=24)]  # a decode step at batch 2
    weights = [_bf16(50, 160, seed=25), _bf16(50, 96, seed=26)]
    out = bf16_row_product.row_product_sum(inputs, weights)
    assert out is not None and out.shape == (2, 1, 50)
    for row in range(2):
        alone = bf16_row_product.row_product_sum([x[row] for x in inputs], weights)
        assert alone is not None and torch.equal(out[row], alone)
        _assert_rounded_once(out[row], _reference([x[row] for x in inputs], weights))


@needs_kernel_cpu
def test_a_non_contiguous_input_row_is_read_correctly() -> None:
    wide = _bf16(1, 2 * 160, seed=9)
    x = wide[:, ::2]  # every other column: strided
    w = _bf16(40, 160, seed=10)
    out = bf16_row_product.row_product_sum((x,), (w,))
    assert out is not None
    _assert_rounded_once(out, _reference([x.contiguous()], [w]))


@needs_kernel_cpu
def test_tensors_the_kernel_does_not_take_are_left_to_the_caller() -> None:
    w = _bf16(24, 64, seed=11)
    assert bf16_row_product.row_product_sum((_bf16(3, 64, seed=12),), (w,)) is None  # 3 rows
    rows_differ = (_bf16(2, 64, seed=12), _bf16(1, 32, seed=13))
    assert bf16_row_product.row_product_sum(rows_differ, (w, _bf16(24, 32, seed=14))) is None
    assert bf16_row_product.row_product_sum((_bf16(1, 64, seed=12).float(),), (w,)) is None
    assert bf16_row_product.row_product_sum((_bf16(1, 32, seed=12),), (w[:, ::2],)) is None
    mismatched = (_bf16(1, 64, seed=12), _bf16(1, 64, seed=13))
    assert bf16_row_product.row_product_sum(mismatched, (w, _bf16(25, 64, seed=14))) is None


@needs_kernel_cpu
def test_the_model_s_one_row_products_go_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = bf16_row_product.row_product_sum

    def counting(
        inputs: tuple[torch.Tensor, ...], weights: tuple[torch.Tensor, ...]
    ) -> torch.Tensor | None:
        calls.append(len(inputs))
        return real(inputs, weights)

    monkeypatch.setattr(bf16_row_product, "row_product_sum", counting)
    w = torch.nn.Parameter(_bf16(48, 64, seed=15))
    with torch.inference_mode():
        one = packed_linear.linear(_bf16(1, 1, 64, seed=16), w)
        two = packed_linear.linear(_bf16(2, 1, 64, seed=16), w)
        many = packed_linear.linear(_bf16(1, 3, 64, seed=17), w)
        summed = packed_linear.linear_sum(
            (_bf16(1, 64, seed=18), _bf16(1, 32, seed=19)), (w, _bf16(48, 32, seed=20))
        )
    assert calls == [1, 1, 2]  # the 3-row product stayed with oneDNN
    assert one.shape == (1, 1, 48) and two.shape == (2, 1, 48)
    assert many.shape == (1, 3, 48) and summed.shape == (1, 48)


@needs_kernel_cpu
def test_cached_decoding_with_the_kernel_matches_a_full_forward() -> None:
    """The decode steps (one row each, through the kernel) against one forward pass over the
    whole sequence (many rows, through oneDNN): the same logits to bf16 accuracy."""
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=512, dim=128, depth=3, heads=2, dim_head=64, max_seq_len=64)
    model = PaLM(config).bfloat16().eval()
    tokens = torch.randint(1, 512, (1, 12))
    with torch.no_grad():
        full = model(tokens)  # (1, 12, V)
        cache = KVCache.empty(config, 1, device="cpu", dtype=torch.bfloat16)
        steps = [model(tokens[:, :4], cache=cache)[:, -1]]
        steps += [model(tokens[:, i : i + 1], cache=cache)[:, -1] for i in range(4, 12)]
    stepped = torch.stack(steps, dim=1)  # (1, 9, V)
    torch.testing.assert_close(stepped, full[:, 3:], atol=0.05, rtol=0.05)
    assert torch.equal(stepped.argmax(-1), full[:, 3:].argmax(-1))
