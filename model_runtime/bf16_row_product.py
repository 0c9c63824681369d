"""bf16 products of one or two rows (a decoding step at batch 1 or 2) through palmloop's own
CPU kernel (``csrc/bf16_row_product.cpp``, built and loaded by :mod:`cpu_kernels`).

A decoding step multiplies one row per sequence by every weight matrix, so at a small batch its
speed is how fast the weights stream from memory. oneDNN's packed bf16 product (``packed_linear``)
read them at 20-25 GB/s on a 2-core Zen 4, where a plain sum over the same matrices reads
31-39 GB/s; the kernel (AVX512-BF16 dot products, each thread streaming a contiguous range of
weight rows) reads them at 30-38 GB/s there: 1.3-1.5x for one row and for two. For four rows it
was no faster than oneDNN, so :data:`MAX_ROWS` is 2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from model_runtime import cpu_kernels

MAX_ROWS = 2  # input rows the kernel takes


def row_product_sum(
    inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]
) -> torch.Tensor | None:
    """``sum_i inputs[i] @ weights[i].T`` for inputs (..., K_i) of the same one or two rows
    (:data:`MAX_ROWS`) and contiguous bf16 CPU weights (N, K_i) -> (..., N) bf16, through the
    kernel; None where the kernel is not available or the tensors do not suit it (the caller
    falls back)."""
    module = cpu_kernels.load()
    if module is None or not _suitable(inputs, weights):
        return None
    out: torch.Tensor = module.row_product_sum(list(inputs), list(weights))
    return out.view(*inputs[0].shape[:-1], weights[0].shape[0])


def _suitable(inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> bool:
    rows_out = weights[0].shape[0] if weights[0].dim() == 2 else -1
    rows_in = inputs[0].shape[:-1].numel()
    return 1 <= rows_in <= MAX_ROWS and all(
        x.dtype == torch.bfloat16
        and x.is_cpu
        and x.shape[:-1].numel() == rows_in
        and w.dtype == torch.bfloat16
        and w.is_cpu
        and w.dim() == 2
        and w.is_contiguous()
        and w.shape == (rows_out, x.shape[-1])
        for x, w in zip(inputs, weights, strict=True)
    )
