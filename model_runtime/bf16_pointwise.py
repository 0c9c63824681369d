"""A PaLM block's SwiGLU and rotary embedding on bf16 tensors, each in one pass, through
palmloop's own CPU kernels (``csrc/bf16_pointwise.cpp``, built and loaded by :mod:`cpu_kernels`).

Both compute in float32 and round once to bf16. As torch operations SwiGLU makes two passes
(silu, then the product, then a copy into the concatenated input of the output projection) and
rotary four (widen, complex product, narrow, then a copy of the strided query heads); the kernels
read their inputs where they lie in the fused projection's output and write contiguous results.
Each function returns None where the kernels are not available, the tensors do not suit them, a
gradient is needed (the kernels have no backward) or ``torch.compile`` is tracing (it cannot
trace into them): the caller then runs torch's operations.
"""

from __future__ import annotations

import torch

from model_runtime import cpu_kernels


def swiglu(
    value: torch.Tensor, gate: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor | None:
    """``silu(gate) * value`` for bf16 CPU tensors of one shape (..., F) whose last axis is
    contiguous and whose rows are evenly spaced (slices of the fused projection qualify), into
    ``out`` (such a tensor too) or a new contiguous tensor; None, ``out`` untouched, where the
    kernel cannot run."""
    target = value if out is None else out
    if not _suitable_swiglu(value, gate, target):
        return None
    module = cpu_kernels.load_for(value, gate, target)
    if module is None:
        return None
    if out is None:
        out = torch.empty(value.shape, dtype=value.dtype)
    module.swiglu_into(value, gate, out)
    return out


def rotate_qk(
    qk: torch.Tensor, query_factors: torch.Tensor, key_factors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The H query heads and the key of ``qk`` (B, T, H + 1, dh) bf16, each feature pair times
    its complex factor: ``query_factors`` and ``key_factors`` (B or 1, T, dh/2) complex64 ->
    q (B, T, H, dh) and k (B, T, dh), contiguous bf16; None where the kernels cannot run."""
    if not _suitable_rotary(qk, query_factors, key_factors):
        return None
    module = cpu_kernels.load_for(qk, query_factors, key_factors)
    if module is None:
        return None
    q, k = module.rotate_qk(
        qk,
        torch.view_as_real(query_factors).flatten(-2),
        torch.view_as_real(key_factors).flatten(-2),
    )
    return q, k


def _evenly_spaced_rows(t: torch.Tensor) -> bool:
    """Whether the leading axes of ``t`` (..., F) flatten to rows with a single stride."""
    if t.dim() < 2 or t.stride(-1) != 1:
        return False
    expected = t.stride(-2)
    for size, stride in zip(reversed(t.shape[:-1]), reversed(t.stride()[:-1]), strict=True):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _suitable_swiglu(value: torch.Tensor, gate: torch.Tensor, out: torch.Tensor) -> bool:
    tensors = (value, gate, out)
    return all(
        t.dtype == torch.bfloat16 and t.is_cpu and t.shape == out.shape and _evenly_spaced_rows(t)
        for t in tensors
    )


def _suitable_rotary(
    qk: torch.Tensor, query_factors: torch.Tensor, key_factors: torch.Tensor
) -> bool:
    if qk.dim() != 4 or qk.dtype != torch.bfloat16 or not qk.is_cpu or qk.stride(-1) != 1:
        return False
    batch, positions, joint, dim_head = qk.shape
    return (
        joint >= 2
        and dim_head % 2 == 0
        and all(
            f.dtype == torch.complex64
            and f.is_cpu
            and f.dim() == 3
            and f.shape[0] in (1, batch)
            and f.shape[1:] == (positions, dim_head // 2)
            and f.stride(-1) == 1
            for f in (query_factors, key_factors)
        )
    )
