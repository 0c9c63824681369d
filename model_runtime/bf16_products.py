"""bf16 matrix products through the float32 GEMM, on CPUs where that is the faster way.

A bf16 product (bf16 operands, float32 sums, a bf16 result) can be computed by oneDNN's bf16
kernels, or by widening the operands to float32 and calling the float32 GEMM: the product of two
bf16 numbers is exact in float32, so both give the same result up to the order of the sums. Which
is faster depends on the CPU, and not only on whether it has bf16 instructions:

- AMD Zen 4 (AVX512-BF16): oneDNN's bf16 ran ~2-4x float32 (see :mod:`cpu_features`).
- A 2-core Intel Xeon VM with AVX512-BF16 but no AMX (Emerald Rapids): oneDNN's bf16 162
  GFLOP/s against MKL's float32 310 (2048^3, 2 threads); a 10M PaLM's training step 908 ms in
  bf16 autocast, 555 ms in float32.
- Without AVX512-BF16, oneDNN emulates bf16: 44 against 107 GFLOP/s.

:func:`float32_faster` times both once per process (four 1024^3 products in each dtype:
~0.1 s here, ~0.3 s where bf16 is emulated, more at one thread) at the thread count of the
moment: the engine asks while it loads a bf16 policy, the trainer in its set-up (rank 0 alone,
the other ranks take its choice); ``PALMLOOP_BF16_PRODUCTS=native`` or ``float32`` decides
instead. Where the
float32 GEMM wins, :func:`linear` computes a bf16-autocast ``F.linear`` with it (training keeps
bf16's numbers and its half-size saved activations), the trainer's chunked loss does the same
(:func:`product_dtype`), attention's batched products (:func:`baddbmm`, :func:`bmm`: scores and
their weighted values, training and prefill) too, and inference's many-row products run against
float32 copies of the weights (:mod:`packed_linear`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

ENV = "PALMLOOP_BF16_PRODUCTS"
MODES = ("auto", "native", "float32")
# The float32 GEMM must beat the bf16 one by this much: widening the operands costs a pass over
# them, and near a tie the choice would flip between processes.
MARGIN = 1.15
_SIDE = 1024

_decision: bool | None = None
_deciding = threading.Lock()


def float32_faster() -> bool:
    """Whether bf16 products run faster through the float32 GEMM here (decided once per
    process; call it before ``torch.compile`` traces a caller, which then sees a constant)."""
    if _decision is None:
        if torch.compiler.is_compiling():  # measured eagerly, outside the graph
            torch.compiler.disable(_decide)()  # type: ignore[no-untyped-call]
        else:  # not as a decorator: that imports torch._dynamo (2.5 s) with this module
            _decide()
    return bool(_decision)


def _decide() -> None:
    with _deciding:  # two threads asking first: one measures, alone
        if _decision is None:
            _measure_or_read_environment()


def _measure_or_read_environment() -> None:
    global _decision
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {', '.join(MODES)}")
    if mode != "auto":
        _decision = mode == "float32"
        return
    bf16, fp32 = product_rates()
    _decision = fp32 > MARGIN * bf16
    log.info(
        "bf16 products: %s (bf16 GEMM %.0f GFLOP/s, float32 GEMM %.0f GFLOP/s, %d threads)",
        "through the float32 GEMM" if _decision else "native",
        bf16,
        fp32,
        torch.get_num_threads(),
    )


def product_rates(side: int = _SIDE, repeats: int = 3) -> tuple[float, float]:
    """GFLOP/s of a ``side``^3 product in bf16 and in float32 on the CPU (best of ``repeats``)."""
    flops = 2 * side**3
    rates = []
    with torch.inference_mode():
        for dtype in (torch.bfloat16, torch.float32):
            a = torch.randn(side, side).to(dtype)
            b = torch.randn(side, side).to(dtype)
            torch.mm(a, b)  # warm-up: kernel selection, page faults
            best = float("inf")
            for _ in range(repeats):
                started = time.perf_counter()
                torch.mm(a, b)
                best = min(best, time.perf_counter() - started)
            rates.append(flops / best / 1e9)
    return rates[0], rates[1]


def chosen_way() -> str:
    """The choice as recorded with a run: ``"float32_gemm"`` or ``"native"``."""
    return "float32_gemm" if float32_faster() else "native"


def settle(choice: bool) -> None:
    """Take ``choice`` as this process's decision: a distributed trainer's ranks take rank 0's,
    so that each computes the same numbers (two measurements near the margin could differ)."""
    global _decision
    _decision = choice


def rerouted(x: torch.Tensor) -> bool:
    """Whether a product with ``x`` here is a bf16-autocast product on a CPU that computes those
    faster through the float32 GEMM. Whatever its number of rows: autocast runs the trainer's
    products, thousands of rows each (inference's few-row products, which stay bf16, go through
    :mod:`packed_linear` without autocast)."""
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and float32_faster()
    )


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)``, the same numbers as bf16 autocast gives (operands rounded to
    bf16, float32 sums, a bf16 result, gradients rounded to bf16 then to their inputs' dtypes);
    through the float32 GEMM where that is faster."""
    if not rerouted(x):
        return F.linear(x, weight)
    if torch.compiler.is_compiling():
        # the same as plain operations, whose backward autograd derives: a traced custom
        # autograd function keeps tensors alive after the compiled graph is dropped (torch
        # 2.13), and the compiler chooses itself what to keep for backward
        with torch.autocast("cpu", enabled=False):
            wide = F.linear(x.to(torch.bfloat16).float(), weight.to(torch.bfloat16).float())
            return wide.to(torch.bfloat16)
    out: torch.Tensor = _Float32Linear.apply(x, weight)  # type: ignore[no-untyped-call]
    return out


class _Float32Linear(torch.autograd.Function):
    """bf16 ``F.linear`` by the float32 GEMM, eagerly. Keeps the bf16 operands for backward (as
    autocast does), widening them again there."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            x16, w16 = x.to(torch.bfloat16), weight.to(torch.bfloat16)
            ctx.save_for_backward(x16, w16)
            ctx.dtypes = (x.dtype, weight.dtype)
            return F.linear(x16.float(), w16.float()).to(torch.bfloat16)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x16, w16 = ctx.saved_tensors
        x_dtype, w_dtype = ctx.dtypes
        with torch.autocast("cpu", enabled=False):
            g = grad.to(torch.bfloat16).float()  # what the bf16 product's backward receives
            grad_x = grad_w = None
            if ctx.needs_input_grad[0]:
                grad_x = (g @ w16.float()).to(torch.bfloat16).to(x_dtype)
            if ctx.needs_input_grad[1]:
                rows = g.reshape(-1, g.shape[-1])  # (N, out)
                inputs = x16.reshape(-1, x16.shape[-1]).float()  # (N, in)
                grad_w = (rows.T @ inputs).to(torch.bfloat16).to(w_dtype)
        return grad_x, grad_w


def baddbmm(
    addend: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0
) -> torch.Tensor:
    """``torch.baddbmm(addend, a, b, alpha=alpha)`` (``torch.bmm(a, b)`` when ``addend`` is
    None, where ``alpha`` must be 1), the same numbers as bf16 gives (float32 sums, the result
    rounded once to bf16, gradients rounded to bf16); through the float32 GEMM for bf16
    operands on a CPU where that is faster. Attention's products: where oneDNN emulates bf16
    (no AVX512-BF16) its batched products ran at ~55 GFLOP/s against ~300 for float32's (8 x
    512 x 64 by 64 x 256, 2 threads), a fifth of a 10M PaLM's training step (149 of 786 ms).
    Eagerly the bf16 operands are kept for backward; a compiled graph may keep float32 copies
    (a 40M step's peak memory 1,935 -> 2,064 MB)."""
    if addend is None and alpha != 1.0:
        raise ValueError("alpha needs an addend: bmm has none")
    if not (a.dtype == b.dtype == torch.bfloat16 and a.device.type == "cpu" and float32_faster()):
        if addend is None:
            return torch.bmm(a, b)
        return torch.baddbmm(addend, a, b, alpha=alpha)
    if torch.compiler.is_compiling():  # plain operations, as in linear()
        with torch.autocast("cpu", enabled=False):
            return _widened_product(addend, a, b, alpha).to(torch.bfloat16)
    out: torch.Tensor = _Float32Baddbmm.apply(addend, a, b, alpha)  # type: ignore[no-untyped-call]
    return out


def bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``torch.bmm(a, b)`` as :func:`baddbmm` computes it."""
    return baddbmm(None, a, b)


def _widened_product(
    addend: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float
) -> torch.Tensor:
    """:func:`baddbmm`'s product in float32, before its rounding to bf16."""
    if addend is None:
        return torch.bmm(a.float(), b.float())
    return torch.baddbmm(addend.float(), a.float(), b.float(), alpha=alpha)


class _Float32Baddbmm(torch.autograd.Function):
    """bf16 ``baddbmm`` by the float32 GEMM, eagerly; keeps the bf16 operands for backward."""

    @staticmethod
    def forward(
        ctx: Any, addend: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, alpha: float
    ) -> torch.Tensor:
        with torch.autocast("cpu", enabled=False):
            ctx.save_for_backward(a, b)
            ctx.alpha = alpha
            ctx.addend_shape = None if addend is None else addend.shape
            return _widened_product(addend, a, b, alpha).to(torch.bfloat16)

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, None]:
        a, b = ctx.saved_tensors
        with torch.autocast("cpu", enabled=False):
            g = grad.to(torch.bfloat16).float()  # what the bf16 product's backward receives
            if ctx.alpha != 1.0:
                g = g * ctx.alpha
            grad_addend = grad_a = grad_b = None
            if ctx.needs_input_grad[0]:
                grad_addend = grad.sum_to_size(ctx.addend_shape)
            if ctx.needs_input_grad[1]:
                grad_a = torch.bmm(g, b.float().transpose(1, 2)).to(torch.bfloat16)
            if ctx.needs_input_grad[2]:
                grad_b = torch.bmm(a.float().transpose(1, 2), g).to(torch.bfloat16)
        return grad_addend, grad_a, grad_b, None


def product_dtype(compute_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype to multiply ``compute_dtype`` operands in: float32 for bf16 on a CPU whose
    float32 GEMM is the faster (the caller rounds results to ``compute_dtype``), else
    ``compute_dtype`` itself."""
    if compute_dtype == torch.bfloat16 and device.type == "cpu" and float32_faster():
        return torch.float32
    return compute_dtype
