"""Cross-entropy of bf16 logits and its gradient in one pass per row, through palmloop's own CPU
kernel (``csrc/bf16_cross_entropy.cpp``, built and loaded by :mod:`cpu_kernels`).

The trainer's chunked loss (``training/step.py``) needs, for each block of rows, the loss of each
row and ``softmax - onehot(label)`` in bf16. As torch operations that is six passes over float32
(rows, vocab) tensors; the kernel reads each bf16 row three times while it is in cache and writes
the gradient once, computing in float32 and rounding once.
"""

from __future__ import annotations

import torch

from model_runtime import cpu_kernels


def cross_entropy_rows(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int,
    grad_out: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Per-row ``logsumexp(logits) - logits[label]`` of bf16 logits (rows, V) against int64
    labels (rows,), 0 where the label is ``ignore_index`` -> float32 (rows,); with ``grad_out``
    (rows, V) bf16, writes ``softmax - onehot(label)`` there too (zero rows where ignored).
    None, ``grad_out`` untouched, where the kernel cannot run (then use torch's operations).
    A label outside the vocabulary raises ``RuntimeError``."""
    if not _suitable(logits, labels, grad_out):
        return None
    tensors = (logits, labels) if grad_out is None else (logits, labels, grad_out)
    module = cpu_kernels.load_for(*tensors)
    if module is None:
        return None
    losses: torch.Tensor = module.cross_entropy_rows(logits, labels, grad_out, ignore_index)
    return losses


def _suitable(logits: torch.Tensor, labels: torch.Tensor, grad_out: torch.Tensor | None) -> bool:
    def rows(t: torch.Tensor) -> bool:
        return t.dtype == torch.bfloat16 and t.is_cpu and t.dim() == 2 and t.stride(-1) == 1

    return (
        rows(logits)
        and logits.shape[1] > 0
        and labels.dtype == torch.int64
        and labels.is_cpu
        and labels.shape == logits.shape[:1]
        and (grad_out is None or (rows(grad_out) and grad_out.shape == logits.shape))
    )
