"""Causal multi-query attention of a prefill on bf16 tensors through palmloop's own CPU kernel
(``csrc/bf16_prefill_attention.cpp``, built and loaded by :mod:`cpu_kernels`).

As batched matrix products (``palm._attention_by_products``) a 256-token prefill with 12 heads
took ~1 ms a layer on a 2-core Zen 4 for ~0.1 GFLOP: products with an inner size of 64 write and
re-read their scores, compute every masked key, and softmax is a pass of its own. The kernel
computes each query row's scores for the keys it may see only (the mask is always causal),
keeps them in float32 in a buffer that stays in cache, and multiplies by the values straight
away. Probabilities are rounded to bf16 for the product with the values, as the batched
products do, and the output once.
"""

from __future__ import annotations

import torch

from model_runtime import cpu_kernels


def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, out: torch.Tensor
) -> torch.Tensor | None:
    """Attention of the T new tokens' queries q (B, T, H, dh) over keys and values k, v
    (B, S+T, dh) under the additive ``mask`` (B or 1, 1, T*H, S+T) (rows ordered (token,
    head), causal: a query never sees a later key), written into ``out`` (B, T, H, dh) and
    returned; None, ``out`` untouched, where the kernel cannot run (the caller falls back)."""
    if not _suitable(q, k, v, mask, out):
        return None
    module = cpu_kernels.load_for(q, k, v, mask, out)
    if module is None:
        return None
    module.prefill_attention(q, k, v, mask.squeeze(1), out)
    return out


def _suitable(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, out: torch.Tensor
) -> bool:
    tensors = (q, k, v, mask, out)
    if any(t.dtype != torch.bfloat16 or not t.is_cpu for t in tensors):
        return False
    if q.dim() != 4 or k.dim() != 3 or mask.dim() != 4 or not q.is_contiguous():
        return False
    batch, new, heads, dim_head = q.shape
    total = k.shape[1]
    return (
        dim_head % 2 == 0
        and dim_head <= 256
        and k.shape == v.shape == (batch, total, dim_head)
        and total >= new
        and k.stride(-1) == 1
        and v.stride(-1) == 1
        and mask.shape[0] in (1, batch)
        and mask.shape[1:] == (1, new * heads, total)
        and mask.stride(-1) == 1
        and out.shape == q.shape
        and out.stride(-1) == 1
    )
