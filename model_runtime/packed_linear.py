"""Bias-free linear layers for bf16 inference on CPU, through oneDNN with weights packed once.

On CPU, ``F.linear`` with bf16 tensors hands oneDNN a plain row-major weight, which oneDNN
reorders into its blocked layout on every call. When decoding (one to a few rows of input against
a large weight) that reorder costs as much as the product itself. Packing the weight once
(``torch.ops.mkldnn._reorder_linear_weight``, what Inductor's CPU backend does when it freezes a
model) and calling ``torch.ops.mkldnn._linear_pointwise`` measured 2.4x faster for 1 row and 1.7x
for 8 rows (a 7040 x 768 weight, 1 thread), as fast for 256 rows, with bit-identical output.

:func:`linear` takes that path only where it is sound and useful: bf16 input and weight on a CPU
whose oneDNN has bf16 kernels, and no autograd (packed products have no backward). Everything else
(float32, CUDA, training) is plain ``F.linear``.

A weight's packed copy is made on first use and kept while the weight is unchanged, judged by its
storage and its version counter. The cache holds an alias of the weight it packed, so that
storage cannot be freed and its address reused by another tensor: the same data pointer means the
same storage. Every in-place change made through the weight or a view of it (optimizer steps,
``load_state_dict``, LoRA merges) bumps the version counter. A change that bypasses the counter
(writing through ``weight.data``; fused optimizers, which the trainer does not use, and which
only ever update float32 training weights here) must be followed by :func:`forget_packed`.
Each packed weight is a second copy of the weight in memory, freed with the weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary


@dataclass(frozen=True)
class _Packed:
    source: torch.Tensor  # alias of the packed weight: keeps its storage alive, shares its version
    version: int
    packed: torch.Tensor  # oneDNN-layout copy


_PACKED = WeakIdKeyDictionary()  # weight -> _Packed, dropped when the weight is collected


@cache
def _bf16_kernels() -> bool:
    """Whether this build and CPU have oneDNN bf16 linear kernels."""
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def uses_packed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` would take the packed path for these tensors."""
    return (
        x.dtype == torch.bfloat16
        and weight.dtype == torch.bfloat16
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and weight.dim() == 2
        and weight.is_contiguous()
        and x.dim() >= 2
        and x.numel() > 0
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and _bf16_kernels()
    )


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)``: x (..., in), weight (out, in) -> (..., out)."""
    if not uses_packed(x, weight):
        return F.linear(x, weight)
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, _packed(weight), None, "none", [], "")
    return out


def forget_packed(weight: torch.Tensor | None = None) -> None:
    """Drop the packed copy of ``weight`` (of every weight when None); it is rebuilt on next use."""
    if weight is None:
        _PACKED.clear()
    else:
        _PACKED.pop(weight, None)


def _packed(weight: torch.Tensor) -> torch.Tensor:
    """The packed copy of ``weight``, made now if there is none or the weight changed."""
    entry: _Packed | None = _PACKED.get(weight)
    if (
        entry is not None
        and entry.version == weight._version
        and entry.source.data_ptr() == weight.data_ptr()
        and entry.source.shape == weight.shape
        and entry.source.stride() == weight.stride()
    ):
        return entry.packed
    with torch.no_grad():
        source = weight.detach()
        packed = torch.ops.mkldnn._reorder_linear_weight(source, 1)
    _PACKED[weight] = _Packed(source=source, version=weight._version, packed=packed)
    return packed
