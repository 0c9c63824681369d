"""Packed bf16 linear layers: same products as F.linear, and never a stale copy of a weight; on
a CPU whose float32 GEMM is the faster (bf16 emulated, or slower bf16 kernels), many-row products
in float32 with the same guarantees. One-row
products go to bf16_row_product's kernel where it runs (test_bf16_row_product.py); here it is
turned off, so that every product takes the oneDNN path under test."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from model_runtime import bf16_row_product, packed_linear
from model_runtime.packed_linear import forget_packed, linear, linear_sum, uses_packed
from model_runtime.palm import KVCache, PaLM

needs_bf16_kernels = pytest.mark.skipif(
    not packed_linear._bf16_kernels(), reason="this CPU or build has no oneDNN bf16 kernels"
)

# bf16 products: 8 mantissa bits, values here of order 1-10
BF16_ATOL = 0.1


@pytest.fixture(autouse=True)
def _without_row_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16_row_product, "row_product_sum", lambda inputs, weights: None)


@pytest.fixture(params=["native", "float32"])
def bf16_arithmetic(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test under both kinds of CPU: bf16 products faster natively, where every product is
    packed bf16, and faster through the float32 GEMM, where (for these small tensors) products of
    2 rows or more run in float32 and one-row products stay packed."""
    native = request.param == "native"
    monkeypatch.setattr(packed_linear, "float32_faster", lambda: not native)
    monkeypatch.setattr(packed_linear, "FLOAT32_FROM_ROWS", 2)
    return str(request.param)


def _held_copies(in_float32: bool) -> int:
    table = packed_linear._SINGLE_FLOAT32 if in_float32 else packed_linear._SINGLE
    return len(table._entries)


def _weight(rows: int = 24, cols: int = 16, seed: int = 0) -> torch.nn.Parameter:
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(rows, cols, generator=generator).bfloat16())


def _input(*shape: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).bfloat16()


@needs_bf16_kernels
@pytest.mark.parametrize("shape", [(1, 16), (3, 16), (2, 1, 16), (2, 5, 16)])
def test_packed_product_equals_f_linear(shape: tuple[int, ...], bf16_arithmetic: str) -> None:
    weight, x = _weight(), _input(*shape)
    in_float32 = bf16_arithmetic == "float32" and x.numel() > x.shape[-1]
    held = _held_copies(in_float32)
    with torch.inference_mode():
        assert uses_packed(x, weight)
        out = linear(x, weight)
        again = linear(x, weight)  # from the held copy
    assert _held_copies(in_float32) == held + 1
    expected = F.linear(x, weight.detach())
    assert out.shape == expected.shape == (*shape[:-1], 24) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, atol=BF16_ATOL, rtol=0)
    assert torch.equal(out, again)
    if in_float32:  # one float32 product, rounded once
        wide = F.linear(x.float(), weight.detach().float()).bfloat16()
        torch.testing.assert_close(out, wide, atol=1e-2, rtol=1e-2)


@needs_bf16_kernels
@pytest.mark.usefixtures("bf16_arithmetic")
def test_sum_of_products_is_one_product_over_concatenations() -> None:
    w1, w2 = _weight(24, 16, seed=0), _weight(24, 40, seed=2)
    x1, x2 = _input(2, 3, 16, seed=3), _input(2, 3, 40, seed=4)
    with torch.inference_mode():
        out = linear_sum((x1, x2), (w1, w2))
    expected = F.linear(x1.float(), w1.detach().float()) + F.linear(x2.float(), w2.detach().float())
    torch.testing.assert_close(out.float(), expected, atol=BF16_ATOL, rtol=0)
    with pytest.raises(ValueError, match="one weight per input"):
        linear_sum((x1,), (w1, w2))


@needs_bf16_kernels
@pytest.mark.usefixtures("bf16_arithmetic")
def test_inputs_side_by_side_in_one_tensor_are_not_copied(monkeypatch: pytest.MonkeyPatch) -> None:
    """A prefill writes attention and SwiGLU into one joined tensor: the product reads it as
    it is, and gives what it gives for separate inputs."""
    w1, w2 = _weight(24, 16, seed=0), _weight(24, 40, seed=2)
    joined = _input(2, 3, 56, seed=5)
    x1, x2 = joined.split_with_sizes([16, 40], dim=-1)
    seen: list[torch.Tensor] = []
    concatenated = packed_linear._concatenated

    def spying(inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        seen.append(concatenated(inputs))
        return seen[-1]

    monkeypatch.setattr(packed_linear, "_concatenated", spying)
    with torch.inference_mode():
        out = linear_sum((x1, x2), (w1, w2))
        apart = linear_sum((x1.contiguous(), x2.contiguous()), (w1, w2))
        swapped = linear_sum((x2, x1), (w2, w1))  # not in the order they lie: concatenated
    assert seen[0].data_ptr() == joined.data_ptr() and seen[0].shape == joined.shape
    assert seen[1].data_ptr() != joined.data_ptr() and seen[2].data_ptr() != joined.data_ptr()
    assert torch.equal(out, apart)
    torch.testing.assert_close(swapped.float(), out.float(), atol=BF16_ATOL, rtol=0)


def _changes() -> list[tuple[str, Callable[[torch.nn.Parameter], None]]]:
    def scale(w: torch.nn.Parameter) -> None:
        with torch.no_grad():
            w.mul_(-2)  # as an optimizer step does

    def one_row(w: torch.nn.Parameter) -> None:
        with torch.no_grad():
            w[3:5].copy_(torch.ones(2, w.shape[1]))  # through a view, as a LoRA merge does

    def inside_inference_mode(w: torch.nn.Parameter) -> None:
        with torch.inference_mode(), torch.no_grad():
            w.add_(1)

    def replace_data(w: torch.nn.Parameter) -> None:
        w.data = torch.full_like(w.data, 0.5)  # new storage, as module.to() does

    def load_state(w: torch.nn.Parameter) -> None:
        layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, dtype=torch.bfloat16)
        layer.weight = w
        layer.load_state_dict({"weight": torch.randn(w.shape).bfloat16()})

    return [
        ("scale", scale),
        ("one_row", one_row),
        ("inference_mode", inside_inference_mode),
        ("replace_data", replace_data),
        ("load_state_dict", load_state),
    ]


@needs_bf16_kernels
@pytest.mark.usefixtures("bf16_arithmetic")
@pytest.mark.parametrize("change", [c for _, c in _changes()], ids=[n for n, _ in _changes()])
def test_a_changed_weight_is_repacked(change: Callable[[torch.nn.Parameter], None]) -> None:
    weight, other = _weight(), _weight(24, 8, seed=5)
    x, y = _input(2, 16), _input(2, 8)
    with torch.inference_mode():
        before = linear(x, weight)
        before_sum = linear_sum((x, y), (weight, other))
    change(weight)
    with torch.inference_mode():
        after = linear(x, weight)
        after_sum = linear_sum((x, y), (weight, other))
    expected = F.linear(x, weight.detach())
    expected_sum = F.linear(x.float(), weight.detach().float()) + F.linear(
        y.float(), other.detach().float()
    )
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, atol=BF16_ATOL, rtol=0)
    assert not torch.allclose(before_sum, after_sum)
    torch.testing.assert_close(after_sum.float(), expected_sum, atol=BF16_ATOL, rtol=0)


@needs_bf16_kernels
@pytest.mark.usefixtures("bf16_arithmetic")
def test_forget_packed_drops_a_copy_changed_behind_the_version_counter() -> None:
    weight, x = _weight(), _input(2, 16)
    with torch.inference_mode():
        linear(x, weight)
    weight.data.mul_(3)  # .data bypasses the version counter: the documented exception
    forget_packed(weight)
    with torch.inference_mode():
        out = linear(x, weight)
    torch.testing.assert_close(out, F.linear(x, weight.detach()), atol=BF16_ATOL, rtol=0)


def test_training_float32_and_inference_tensors_take_the_plain_path() -> None:
    weight, x = _weight(), _input(2, 16)
    assert not uses_packed(x, weight)  # grad enabled and weight.requires_grad: autograd needed
    out = linear(x, weight)
    out.float().sum().backward()
    assert weight.grad is not None and weight.grad.shape == weight.shape
    with torch.inference_mode():
        assert not uses_packed(x.float(), weight.detach().float())
        frozen = torch.randn(24, 16).bfloat16()  # an inference tensor: no version counter
        assert not uses_packed(x, frozen)
        torch.testing.assert_close(linear(x, frozen), F.linear(x, frozen))


@needs_bf16_kernels
def test_a_packed_copy_goes_with_its_weight(bf16_arithmetic: str) -> None:
    in_float32 = bf16_arithmetic == "float32"
    held = _held_copies(in_float32)
    weight = _weight()
    with torch.inference_mode():
        linear(_input(2, 16), weight)
    assert _held_copies(in_float32) == held + 1
    del weight
    gc.collect()
    assert _held_copies(in_float32) == held


def _decode_logits(model: PaLM, tokens: torch.Tensor) -> torch.Tensor:
    """Prefill 5 tokens, then decode the rest one at a time: (B, T, V) logits."""
    with torch.inference_mode():
        cache = KVCache.empty(model.config, tokens.shape[0], device="cpu", dtype=torch.bfloat16)
        pieces = [model(tokens[:, :5], cache=cache)]
        pieces += [model(tokens[:, t : t + 1], cache=cache) for t in range(5, tokens.shape[1])]
    return torch.cat(pieces, dim=1)


def _unpacked_copy(model: PaLM) -> PaLM:
    """The same weights as inference tensors, which are never packed: the F.linear path."""
    with torch.inference_mode():
        copy = PaLM(model.config).eval().to(torch.bfloat16)
        copy.load_state_dict(model.state_dict())
    return copy


@needs_bf16_kernels
@pytest.mark.usefixtures("bf16_arithmetic")
def test_bf16_model_packed_matches_unpacked_and_follows_training(tiny_model: PaLM) -> None:
    model = tiny_model.to(torch.bfloat16)
    tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=torch.Generator())
    packed = _decode_logits(model, tokens)
    torch.testing.assert_close(
        packed, _decode_logits(_unpacked_copy(model), tokens), atol=2e-2, rtol=0
    )

    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05)
    model(tokens).logsumexp(-1).mean().backward()
    optimizer.step()  # in-place updates of weights that were packed above
    trained = _decode_logits(model, tokens)
    assert not torch.allclose(trained, packed, atol=0.1)
    torch.testing.assert_close(
        trained, _decode_logits(_unpacked_copy(model), tokens), atol=2e-2, rtol=0
    )
