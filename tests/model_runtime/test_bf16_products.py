"""bf16 products through the float32 GEMM: chosen by measured speed (or the environment), the
same numbers as bf16 autocast's products, forward and backward, eager and compiled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from model_runtime import bf16_products, palm
from model_runtime.config import PaLMConfig
from model_runtime.engine.versions import load_version
from model_runtime.palm import PaLM
from model_runtime.training.step import CausalLMLoss, linear_cross_entropy_sum


class _ProductDtypes(TorchDispatchMode):
    """Records the dtype of every matrix product that runs (forward and backward)."""

    PRODUCTS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear")

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func.overloadpacket.__name__ in self.PRODUCTS:
            self.seen.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def _route(monkeypatch: pytest.MonkeyPatch, on: bool) -> None:
    monkeypatch.setattr(bf16_products, "_decision", on)


def _no_measuring() -> tuple[float, float]:
    raise AssertionError("measured although the environment decided")


@pytest.mark.parametrize(("mode", "expected"), [("native", False), ("float32", True)])
def test_the_environment_decides_without_measuring(
    mode: str, expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bf16_products, "_decision", None)
    monkeypatch.setattr(bf16_products, "product_rates", _no_measuring)
    monkeypatch.setenv(bf16_products.ENV, mode.upper())
    assert bf16_products.float32_faster() is expected


def test_an_unknown_mode_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bf16_products, "_decision", None)
    monkeypatch.setenv(bf16_products.ENV, "fast")
    with pytest.raises(ValueError, match=r"PALMLOOP_BF16_PRODUCTS='fast'.*auto, native, float32"):
        bf16_products.float32_faster()


@pytest.mark.parametrize(
    ("rates", "expected"),
    [((160.0, 310.0), True), ((430.0, 200.0), False), ((100.0, 110.0), False)],
)
def test_auto_takes_float32_only_when_clearly_faster(
    rates: tuple[float, float], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bf16_products, "_decision", None)
    monkeypatch.delenv(bf16_products.ENV, raising=False)
    calls = []
    monkeypatch.setattr(bf16_products, "product_rates", lambda: calls.append(1) or rates)
    assert bf16_products.float32_faster() is expected
    assert bf16_products.float32_faster() is expected
    assert calls == [1]  # once per process


def test_product_rates_measures_bf16_then_float32(monkeypatch: pytest.MonkeyPatch) -> None:
    timed: list[torch.dtype] = []
    product = torch.mm

    def recorded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        timed.append(a.dtype)
        return product(a, b)

    monkeypatch.setattr(torch, "mm", recorded)
    bf16, fp32 = bf16_products.product_rates(side=128, repeats=2)
    assert bf16 > 0 and fp32 > 0
    assert timed == [torch.bfloat16] * 3 + [torch.float32] * 3  # warm-up, then the repeats


def _operands(
    shape: tuple[int, ...] = (3, 5, 32), out: int = 24
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=generator, requires_grad=True)
    weight = torch.randn(out, shape[-1], generator=generator, requires_grad=True)
    return x, weight


def _autocast_linear(on: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, ...]:
    _route(monkeypatch, on)
    x, weight = _operands()
    with _ProductDtypes() as products:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert bf16_products.rerouted(x) is on
            out = bf16_products.linear(x, weight)
        grad = torch.linspace(-1, 1, out.numel()).reshape(out.shape).bfloat16()
        out.backward(grad)
    # every product, forward and backward, in float32 through the route, in bf16 without
    assert products.seen == ({torch.float32} if on else {torch.bfloat16})
    assert x.grad is not None and weight.grad is not None
    return out, x.grad, weight.grad


def test_rerouted_linear_gives_autocasts_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    native = _autocast_linear(False, monkeypatch)
    wide = _autocast_linear(True, monkeypatch)
    for a, b in zip(native, wide, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(b, a, rtol=1.6e-2, atol=1e-2)  # bf16: 8 significant bits
    out, grad_x, grad_w = wide
    assert out.dtype == torch.bfloat16
    assert grad_x.dtype == grad_w.dtype == torch.float32  # the inputs' dtypes, as autocast
    # exactly the float32 product of the bf16-rounded operands, rounded once
    x, weight = _operands()
    exact = F.linear(x.detach().bfloat16().float(), weight.detach().bfloat16().float())
    assert torch.equal(out, exact.bfloat16())
    # gradients rounded to bf16, as a bf16 product's are
    assert torch.equal(grad_w, grad_w.bfloat16().float())


def test_without_autocast_linear_is_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    _route(monkeypatch, True)
    x, weight = _operands()
    assert torch.equal(bf16_products.linear(x, weight), F.linear(x, weight))


def test_product_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu = torch.device("cpu")
    _route(monkeypatch, True)
    assert bf16_products.product_dtype(torch.bfloat16, cpu) == torch.float32
    assert bf16_products.product_dtype(torch.float32, cpu) == torch.float32
    _route(monkeypatch, False)
    assert bf16_products.product_dtype(torch.bfloat16, cpu) == torch.bfloat16


def _loss_and_grads(on: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, ...]:
    _route(monkeypatch, on)
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(2, 300, 16, generator=generator, requires_grad=True)
    weight = torch.randn(50, 16, generator=generator, requires_grad=True)
    labels = torch.randint(0, 50, (2, 300), generator=generator)
    labels[0, :7] = -100  # ignored positions
    with _ProductDtypes() as products:
        loss = linear_cross_entropy_sum(
            hidden, weight, labels, compute_dtype=torch.bfloat16, chunk_rows=64
        )
        loss.backward()
    assert products.seen == ({torch.float32} if on else {torch.bfloat16})
    assert hidden.grad is not None and weight.grad is not None
    return loss.detach(), hidden.grad, weight.grad


def test_the_chunked_loss_through_float32_matches_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    native = _loss_and_grads(False, monkeypatch)
    wide = _loss_and_grads(True, monkeypatch)
    for a, b in zip(native, wide, strict=True):
        assert a.dtype == b.dtype
        torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)


def _batched_operands(addend: bool) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Attention's shapes in small: bf16 queries (B, r, dh), keys^T (B, dh, S), a causal mask
    (1, r, S) shared by the batch."""
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(2, 12, 16, generator=generator).bfloat16().requires_grad_()
    b = torch.randn(2, 16, 12, generator=generator).bfloat16().requires_grad_()
    mask = torch.full((12, 12), float("-inf")).triu(1).bfloat16().unsqueeze(0)
    return (mask if addend else None), a, b


def _batched(on: bool, addend: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.Tensor, ...]:
    _route(monkeypatch, on)
    mask, a, b = _batched_operands(addend)
    with _ProductDtypes() as products:
        out = bf16_products.baddbmm(mask, a, b, alpha=0.25) if addend else bf16_products.bmm(a, b)
        weights = torch.linspace(-1, 1, out.numel()).reshape(out.shape).bfloat16()
        out.masked_fill(out.isinf(), 0).mul(weights).sum().backward()
    assert products.seen == ({torch.float32} if on else {torch.bfloat16})
    assert a.grad is not None and b.grad is not None
    return out.detach(), a.grad, b.grad


@pytest.mark.parametrize("addend", [True, False], ids=["baddbmm", "bmm"])
def test_rerouted_batched_products_give_bf16s_numbers(
    addend: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    native = _batched(False, addend, monkeypatch)
    wide = _batched(True, addend, monkeypatch)
    for x, y in zip(native, wide, strict=True):
        assert x.dtype == y.dtype == torch.bfloat16 and x.shape == y.shape
        torch.testing.assert_close(y, x, rtol=1.6e-2, atol=1e-2)
    # exactly the float32 product of the operands, scaled, masked and rounded once
    mask, a, b = _batched_operands(addend)
    if addend:
        exact = torch.baddbmm(mask.float(), a.float(), b.float(), alpha=0.25)
    else:
        exact = torch.bmm(a.float(), b.float())
    assert torch.equal(wide[0], exact.bfloat16())


def test_batched_products_of_float32_or_without_the_route_are_plain(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _route(monkeypatch, True)
    mask, a, b = _batched_operands(True)
    wide = (mask.float(), a.detach().float(), b.detach().float())  # type: ignore[union-attr]
    with _ProductDtypes() as products:
        out = bf16_products.baddbmm(*wide, alpha=0.5)
    assert products.seen == {torch.float32}
    assert torch.equal(out, torch.baddbmm(*wide, alpha=0.5))
    _route(monkeypatch, False)
    assert torch.equal(bf16_products.bmm(a.detach(), b.detach()), torch.bmm(a.detach(), b.detach()))


def test_a_training_step_runs_every_product_through_float32_attentions_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Attention by batched products (enough query rows) takes the route like the linears."""
    torch.manual_seed(0)
    config = PaLMConfig(vocab_size=64, dim=32, depth=1, heads=2, dim_head=16, max_seq_len=128)
    model = PaLM(config).train()
    tokens = torch.randint(0, 64, (4, 129))
    assert palm.PRODUCTS_ATTENTION_FROM_ROWS <= 4 * 128 * 2
    for on in (False, True):
        _route(monkeypatch, on)
        with _ProductDtypes() as products:
            CausalLMLoss(model, "bf16")(tokens[:, :-1], tokens[:, 1:]).backward()
        assert products.seen == ({torch.float32} if on else {torch.bfloat16})


# The compiled step runs in a process of its own: compiled graphs keep state alive after
# ``torch._dynamo.reset()`` (torch 2.13), which later tests that count live tensors would see.
_COMPILED_STEP = """
import json, torch
from model_runtime import bf16_products, palm
from model_runtime.config import PaLMConfig
from model_runtime.config import PaLMConfig
from model_runtime.palm import PaLM
from model_runtime.training.step import CausalLMLoss

def grads(model, tokens, compiled):
    module = CausalLMLoss(model, "bf16")
    run = torch.compile(module) if compiled else module
    model.zero_grad(set_to_none=True)
    loss = run(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

torch.manual_seed(0)
config = PaLMConfig(vocab_size=128, dim=64, depth=2, heads=2, dim_head=32, max_seq_len=128)
model = PaLM(config).train()
# 4 x 128 tokens x 2 heads: attention by batched products (palm.PRODUCTS_ATTENTION_FROM_ROWS)
tokens = torch.randint(0, 128, (4, 129))
bf16_products._decision = False
native_loss, native = grads(model, tokens, compiled=False)
_, compiled_native = grads(model, tokens, compiled=True)
out = {"native_loss": native_loss}
bf16_products._decision = True
for compiled in (False, True):
    torch._dynamo.reset()
    loss, got = grads(model, tokens, compiled)
    out[str(compiled)] = {
        "loss": loss,
        "errors": {n: float((g - native[n]).norm() / native[n].norm()) for n, g in got.items()},
    }
# a compiled graph that ignored the route would give the compiled native bits exactly
out["compiled_route_differs"] = any(not torch.equal(got[n], compiled_native[n]) for n in got)
print(json.dumps(out))
"""


def test_a_training_step_through_float32_matches_bf16_eager_and_compiled() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _COMPILED_STEP],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    for compiled in ("False", "True"):
        run = figures[compiled]
        assert run["loss"] == pytest.approx(figures["native_loss"], rel=1e-2)
        assert len(run["errors"]) == 10  # every parameter has a gradient
        worst = max(run["errors"].items(), key=lambda item: item[1])
        assert worst[1] < 0.02, (compiled, worst)
    assert figures["compiled_route_differs"]


def test_loading_a_bf16_policy_decides_then(
    tiny_policy_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Timed while the engine loads, not in the first answer's prefill."""
    monkeypatch.setattr(bf16_products, "_decision", None)
    monkeypatch.delenv(bf16_products.ENV, raising=False)
    monkeypatch.setattr(bf16_products, "product_rates", lambda: (100.0, 300.0))
    load_version(tiny_policy_dir, device="cpu", dtype=torch.float32)
    assert bf16_products._decision is None  # float32 serving has nothing to decide
    load_version(tiny_policy_dir, device="cpu", dtype=torch.bfloat16)
    assert bf16_products._decision is True


_DECIDED_WHILE_TRACED = """
import sys, torch
import model_runtime.engine
from model_runtime import bf16_products
dynamo_on_import = "torch._dynamo" in sys.modules

@torch.compile(backend="eager")
def scaled(x):
    return x * 2 if bf16_products.float32_faster() else x * 3

out = scaled(torch.ones(2))
print(dynamo_on_import, bf16_products._decision, out.tolist())
"""


@pytest.mark.parametrize("mode", ["float32", "native"])
def test_the_decision_is_made_eagerly_even_when_a_trace_asks_first(mode: str) -> None:
    """Importing the engine does not import torch._dynamo (2.5 s of every process's start);
    a compiled function that asks first still gets the decision, made outside its graph."""
    done = subprocess.run(
        [sys.executable, "-c", _DECIDED_WHILE_TRACED],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "PALMLOOP_BF16_PRODUCTS": mode},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    dynamo_on_import, decision, out = done.stdout.split(maxsplit=2)
    assert dynamo_on_import == "False"
    assert decision == str(mode == "float32")
    assert out.strip() == ("[2.0, 2.0]" if mode == "float32" else "[3.0, 3.0]")
