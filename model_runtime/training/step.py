"""The pieces of one optimizer step, shared by the trainer and ``bench/training.py``.

- :func:`resolve_precision`: what ``"auto"`` precision means on a device.
- :func:`autocast`: bf16 ``torch.autocast`` (matmuls in bf16, weights and optimizer in fp32).
- :func:`lm_loss_sum`: summed next-token cross-entropy over the labelled positions, from logits.
- :func:`linear_cross_entropy_sum` / :class:`CausalLMLoss`: the same loss straight from the
  trunk's hidden states and the (tied) output projection, a block of rows at a time, never
  holding the (B, T, V) logits; what the trainer runs.
- :func:`build_adamw`: AdamW with weight decay on the matmul weights only; embeddings (tied to
  the output projection here) and norm gains are not decayed.
- :func:`freeze_all_but_last_blocks`: train only the last N transformer blocks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model_runtime.bf16_cross_entropy import cross_entropy_rows
from model_runtime.bf16_products import float32_faster, product_dtype
from model_runtime.cpu_features import native_bf16_cpu
from model_runtime.palm import PaLM
from model_runtime.training.config import ComputePrecision, Precision
from model_runtime.training.data import IGNORE_INDEX


def resolve_precision(precision: Precision, device: torch.device) -> ComputePrecision:
    """``"auto"``: bf16 where ``device`` computes it natively and faster than fp32 (a CUDA device
    that supports it; a CPU with AVX512-BF16 or AMX whose bf16 products beat its float32 GEMM,
    :mod:`bf16_products`), fp32 elsewhere: emulated bf16 trains slower than fp32, and where the
    float32 GEMM is the faster, plain fp32 steps were 5-10% faster than bf16 through it (10M
    548 vs 607-619 ms, 40M 2077-2118 vs 2191-2200 ms on an Intel Xeon without AMX). Other values
    as given."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if native_bf16_cpu() and not float32_faster() else "fp32"
    return "fp32"


def autocast(
    device: torch.device, precision: ComputePrecision
) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on ``device`` for ``precision == "bf16"``, a no-op context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def lm_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over labelled positions of ``-log p(label)``: logits (B, T, V), labels (B, T) int64
    with ``IGNORE_INDEX`` where there is no target -> scalar float32."""
    vocab = logits.shape[-1]
    return F.cross_entropy(
        logits.reshape(-1, vocab).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )


# Rows of hidden states per block of the chunked loss: a (rows, V) block of logits is 4 MiB in
# bf16 at V = 8192 (8 MiB as torch's float32 log-probabilities), small enough to stay in cache
# while it is used three times.
LOSS_CHUNK_ROWS = 256
# Blocks whose logit gradients are kept (in the compute dtype) for one weight-gradient
# product: a (V, D) product, its conversion to float32 and its addition once per 1,024 rows
# rather than per block, and a longer inner dimension for the product (measured on 2 cores:
# the loss's forward and backward at 2,048 rows, V 8,192, D 512 in bf16 went from 220 and 208
# ms to 191 and 194 ms, medians of 6 in two runs; unchanged at D 256).
LOSS_WEIGHT_GRAD_BLOCKS = 4


def _block_loss(
    logits: torch.Tensor, labels: torch.Tensor, grad_out: torch.Tensor | None
) -> torch.Tensor:
    """The summed cross-entropy of a block of ``logits`` (n, V) against ``labels`` (n,)
    (``IGNORE_INDEX`` rows count 0), in float32; with ``grad_out`` (n, V), writes the logits'
    gradient ``softmax - onehot(label)`` there (zero rows where ignored), rounded once. bf16
    logits on a CPU take palmloop's kernel (one pass per row), others torch's operations."""
    losses = cross_entropy_rows(logits, labels, ignore_index=IGNORE_INDEX, grad_out=grad_out)
    if losses is not None:
        return losses.sum()
    ignored = labels == IGNORE_INDEX  # (n,)
    safe = labels.masked_fill(ignored, 0)[:, None]  # (n, 1)
    # in float32 from the compute-dtype logits, without a widened copy of them
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float32)  # (n, V)
    picked = logp.gather(1, safe).squeeze(1)  # (n,)
    if grad_out is not None:
        grad = logp.exp_()  # softmax (``picked`` is a copy)
        grad.scatter_add_(1, safe, torch.full_like(picked[:, None], -1.0))
        # rows of ignored labels zeroed in the same pass as the narrowing copy
        torch.mul(grad, (~ignored)[:, None], out=grad_out)
    return -picked.masked_fill(ignored, 0.0).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    """Sum of cross-entropy of ``hidden @ weight.T`` against ``labels``, with both gradients
    computed in the forward pass, one block of rows at a time (d loss / d logits of a row is
    ``softmax - onehot``: it needs nothing but that row's logits)."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        labels: torch.Tensor,
        compute_dtype: torch.dtype,
        chunk_rows: int,
    ) -> torch.Tensor:
        rows = hidden.shape[0]
        # operands rounded to the compute dtype, multiplied in ``wide`` (bf16_products)
        wide = product_dtype(compute_dtype, hidden.device)
        w = weight.to(compute_dtype).to(wide)  # (V, D)
        h_all = hidden.to(compute_dtype).to(wide)  # (N, D)
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(h_all, dtype=compute_dtype) if need_grad else None  # (N, D)
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_grad else None
        group_rows = chunk_rows * LOSS_WEIGHT_GRAD_BLOCKS
        # d loss / d logits of the rows since the last weight-gradient product
        pending = (
            torch.empty((min(rows, group_rows), w.shape[0]), dtype=compute_dtype, device=w.device)
            if need_grad
            else None
        )
        for start in range(0, rows, chunk_rows):
            stop = min(rows, start + chunk_rows)
            h = h_all[start:stop]  # (n, D)
            target = labels[start:stop]  # (n,)
            logits = (h @ w.T).to(compute_dtype)  # (n, V)
            if grad_hidden is None or grad_weight is None or pending is None:
                total += _block_loss(logits, target, None)
                continue
            group_start = start - start % group_rows
            # d loss / d logits of these rows: softmax - onehot(label)
            grad_c = pending[start - group_start : stop - group_start]  # (n, V)
            total += _block_loss(logits, target, grad_c)
            grad_hidden[start:stop] = grad_c.to(wide) @ w  # (n, D)
            if stop == rows or stop - group_start == group_rows:
                grads = pending[: stop - group_start].to(wide)
                grad_weight += (grads.T @ h_all[group_start:stop]).to(compute_dtype).float()
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.hidden_dtype = hidden.dtype
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        d_hidden = d_weight = None
        if ctx.needs_input_grad[0]:
            d_hidden = (grad_hidden * grad_output).to(ctx.hidden_dtype)
        if ctx.needs_input_grad[1]:
            d_weight = (grad_weight * grad_output).to(ctx.weight_dtype)
        return d_hidden, d_weight, None, None, None


def linear_cross_entropy_sum(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    compute_dtype: torch.dtype = torch.float32,
    chunk_rows: int = LOSS_CHUNK_ROWS,
) -> torch.Tensor:
    """``lm_loss_sum(hidden @ weight.T, labels)`` without materialising the logits.

    hidden (B, T, D), weight (V, D), labels (B, T) -> scalar float32. The matmuls run in
    ``compute_dtype`` (bf16 under mixed precision, as autocast would run them; on a CPU whose
    float32 GEMM is the faster, through it, rounded as bf16: :mod:`bf16_products`), the softmax
    in float32. Both gradients are computed during the forward pass, block by block, and kept
    until backward: (N, D) + (V, D) numbers instead of the (N, V) logits, with the logit
    gradients of up to ``LOSS_WEIGHT_GRAD_BLOCKS`` blocks held meanwhile in ``compute_dtype``.
    """
    dim = hidden.shape[-1]
    flat_hidden, flat_labels = hidden.reshape(-1, dim), labels.reshape(-1)
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        return _loss_only(flat_hidden, weight, flat_labels, compute_dtype, chunk_rows)
    loss: torch.Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        flat_hidden, weight, flat_labels, compute_dtype, chunk_rows
    )
    return loss


def _loss_only(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    compute_dtype: torch.dtype,
    chunk_rows: int,
) -> torch.Tensor:
    """The forward half of :class:`_LinearCrossEntropy` (evaluation: no gradients)."""
    wide = product_dtype(compute_dtype, hidden.device)
    w = weight.to(compute_dtype).to(wide)  # (V, D)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[0], chunk_rows):
        h = hidden[start : start + chunk_rows].to(compute_dtype).to(wide)
        logits = (h @ w.T).to(compute_dtype)  # (n, V)
        total += _block_loss(logits, labels[start : start + chunk_rows], None)
    return total


_eager_loss = torch.compiler.disable(linear_cross_entropy_sum)  # type: ignore[no-untyped-call]


class CausalLMLoss(nn.Module):
    """``forward(inputs, labels) -> summed next-token loss`` of a PaLM.

    Wrapping the loss (not only the model) in a module lets DDP and ``torch.compile`` see the
    whole forward pass, the output projection included. inputs, labels: (B, T) int64.
    """

    def __init__(self, model: PaLM, precision: ComputePrecision) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        if precision == "bf16" and model.embed.weight.device.type == "cpu":
            float32_faster()  # decided before torch.compile traces the products that ask

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        device = inputs.device
        with autocast(device, self.precision):
            hidden = self.model.hidden_states(inputs)  # (B, T, D)
        compute = torch.bfloat16 if self.precision == "bf16" else torch.float32
        # On a CPU the loss runs eagerly under torch.compile (one graph break): its kernel
        # cannot be traced, and even torch's operations ran slower compiled than eager here.
        loss = _eager_loss if hidden.device.type == "cpu" else linear_cross_entropy_sum
        return loss(hidden, self.model.embed.weight, labels, compute_dtype=compute)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups over the trainable parameters: weights of linear layers decayed, the
    rest (embeddings, norm gains, biases) not. A parameter shared by several modules (tied
    embeddings) is listed once, undecayed if any of its owners is an embedding."""
    no_decay: dict[int, nn.Parameter] = {}
    decay: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            key = id(param)
            embedding_or_gain = isinstance(module, nn.Embedding) or param.dim() < 2
            if embedding_or_gain or name == "bias":
                no_decay[key] = param
                decay.pop(key, None)
            elif key not in no_decay:
                decay[key] = param
    groups = [
        {"params": list(decay.values()), "weight_decay": weight_decay},
        {"params": list(no_decay.values()), "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups`. ``fused=None`` picks the fused kernel (one pass
    over each parameter instead of a dozen; measured 3x faster here) when every parameter is a
    float32 tensor on CPU or CUDA. Fused steps do not bump the parameters' version counters,
    which only matters for packed bf16 inference weights (``packed_linear``), never for the
    float32 weights the trainer updates."""
    groups = parameter_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameter")
    if fused is None:
        params = [p for group in groups for p in group["params"]]
        fused = all(p.dtype == torch.float32 and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def freeze_all_but_last_blocks(model: PaLM, count: int) -> list[str]:
    """Leave only the parameters of the last ``count`` blocks trainable (the embedding, which
    is also the output projection, the earlier blocks and the final norm are frozen); return
    the names of the trainable parameters."""
    depth = len(model.blocks)
    if not 1 <= count <= depth:
        raise ValueError(f"can train the last 1..{depth} blocks, got {count}")
    model.requires_grad_(False)
    for block in list(model.blocks)[depth - count :]:
        block.requires_grad_(True)
    return trainable_parameter_names(model.named_parameters())


def trainable_parameter_names(named: Iterable[tuple[str, nn.Parameter]]) -> list[str]:
    return [name for name, param in named if param.requires_grad]
