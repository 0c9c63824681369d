"""Bias-free linear layers for bf16 inference on CPU, through oneDNN with weights packed once.

On CPU, ``F.linear`` with bf16 tensors hands oneDNN a plain row-major weight, which oneDNN
reorders into its blocked layout on every call. When decoding (one to a few rows of input against
a large weight) that reorder costs as much as the product itself. Packing the weight once
(``torch.ops.mkldnn._reorder_linear_weight``, what Inductor's CPU backend does when it freezes a
model) and calling ``torch.ops.mkldnn._linear_pointwise`` measured 2.4x faster for 1 row and 1.7x
for 8 rows (a 7040 x 768 weight, 1 thread), as fast for 256 rows, with bit-identical output.

:func:`linear` takes that path only where it is sound and useful: bf16 input and weight on a CPU
whose oneDNN has bf16 kernels, and no autograd (packed products have no backward). Everything else
(float32, CUDA, training) is ``F.linear``, which :mod:`bf16_products` computes through the
float32 GEMM under bf16 autocast where that is faster.

Where :func:`bf16_products.float32_faster` (oneDNN emulating bf16 on a CPU without AVX512-BF16:
a many-row bf16 product ran 3-3.5x slower than in float32; or a CPU whose float32 GEMM simply
beats its bf16 one), a product of at least :data:`FLOAT32_FROM_ROWS` rows runs in float32
against a float32 copy of the weights, made on first use like a packed copy, and returns bf16 (a
one-row product, memory-bound, stays bf16: half the bytes to read). :func:`linear_sum` adds up
several products with one output (PaLM's attention and feed-forward output projections) as one
product over the concatenated inputs and weights: one pass over the weights instead of several,
and for small weights the fixed cost of a call, which dominates at one row, is paid once.

A product of one or two rows (a decoding step at batch 1 or 2) goes to
:mod:`bf16_row_product`'s kernel where it is available: it streams the plain weights from memory
faster than oneDNN reads its packed ones, and needs no copy.

A packed copy is made on first use and kept while its weights are unchanged, judged by their
storage and their version counters. The cache holds an alias of each weight it packed, so that
storage cannot be freed and its address reused by another tensor: the same data pointer means the
same storage. Every in-place change made through a weight or a view of it (optimizer steps,
``load_state_dict``, LoRA merges) bumps the version counter. Weights created under
``torch.inference_mode`` have no version counter, so they are never packed. A change that
bypasses the counter (writing through ``weight.data``; fused optimizers, which the trainer does
not use, and which only ever update float32 training weights here) must be followed by
:func:`forget_packed`. A packed copy is a second copy of its weights in memory, freed with
them; a float32 copy costs twice the bf16 weights, and exists only on CPUs whose float32 GEMM
is the faster, for weights that met a many-row product.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import torch
import torch.nn.functional as F

from model_runtime import bf16_products, bf16_row_product
from model_runtime.bf16_products import float32_faster


@dataclass(frozen=True)
class _Packed:
    sources: tuple[torch.Tensor, ...]  # aliases of the weights: keep storage alive, share versions
    # what each weight was when packed: version, data pointer, shape, strides
    states: tuple[tuple[int, int, torch.Size, tuple[int, ...]], ...]
    # oneDNN-layout (or float32) copy of the weights concatenated along the input axis
    packed: torch.Tensor

    def holds(self, weights: Sequence[torch.Tensor]) -> bool:
        """Whether this copy was packed from ``weights`` as they are now."""
        return len(weights) == len(self.states) and all(
            _state(w) == state for w, state in zip(weights, self.states, strict=True)
        )


def _state(weight: torch.Tensor) -> tuple[int, int, torch.Size, tuple[int, ...]]:
    return weight._version, weight.data_ptr(), weight.shape, weight.stride()


class _PackedTable:
    """Packed copies keyed by the identity of their first weight; an entry is dropped when that
    weight is collected (entries hold aliases of the weights' storage, never the weights)."""

    def __init__(self) -> None:
        self._entries: dict[int, _Packed] = {}

    def get(self, weight: torch.Tensor) -> _Packed | None:
        return self._entries.get(id(weight))

    def put(self, weight: torch.Tensor, entry: _Packed) -> None:
        key = id(weight)
        if key not in self._entries:
            weakref.finalize(weight, self._entries.pop, key, None)
        self._entries[key] = entry

    def forget(self, weight: torch.Tensor | None) -> None:
        """Drop the entries packed from ``weight`` (every entry when None)."""
        for key, entry in list(self._entries.items()):
            if weight is None or any(
                source.data_ptr() == weight.data_ptr() for source in entry.sources
            ):
                del self._entries[key]


# Single weights and sums live apart, so a weight used both alone and first in a sum keeps both;
# float32 copies live apart from packed ones.
_SINGLE = _PackedTable()
_SUMS = _PackedTable()
_SINGLE_FLOAT32 = _PackedTable()
_SUMS_FLOAT32 = _PackedTable()
_TABLES = (_SINGLE, _SUMS, _SINGLE_FLOAT32, _SUMS_FLOAT32)

# Where the float32 GEMM is the faster, products of at least this many rows run in float32. A
# decode step (one row per sequence) stays in packed bf16 up to a batch of 15.
FLOAT32_FROM_ROWS = 16


@cache
def _bf16_kernels() -> bool:
    """Whether this build and CPU have oneDNN bf16 linear kernels."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _in_float32(x: torch.Tensor) -> bool:
    """Whether a product with ``x`` (bf16, ..., in) runs in float32: many rows, on a CPU whose
    float32 GEMM is the faster."""
    return x.numel() >= FLOAT32_FROM_ROWS * x.shape[-1] and float32_faster()


def linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)``: x (..., in), weight (out, in) -> (..., out)."""
    if not _packable_inputs((x,), (weight,)):  # first: training and torch.compile stop here
        return bf16_products.linear(x, weight)
    if _few_rows(x):
        streamed = bf16_row_product.row_product_sum((x,), (weight,))
        if streamed is not None:
            return streamed
    if _in_float32(x):
        wide = _copy_for((x,), (weight,), _SINGLE_FLOAT32, _float32_copy)
        if wide is not None:
            return F.linear(x.float(), wide).to(x.dtype)
    packed = _copy_for((x,), (weight,), _SINGLE, _onednn_copy)
    if packed is None:
        return bf16_products.linear(x, weight)
    return _product(x, packed)


def linear_sum(inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``sum_i F.linear(inputs[i], weights[i])``: inputs[i] (..., in_i), weights[i] (out, in_i)
    -> (..., out). On the packed path one product of the inputs concatenated along the last axis
    with the weights concatenated along their input axis (summed in float32, rounded once)."""
    if len(inputs) != len(weights) or not inputs:
        raise ValueError(f"need one weight per input, got {len(inputs)} and {len(weights)}")
    if not _packable_inputs(inputs, weights):
        return _plain_sum(inputs, weights)
    if _few_rows(inputs[0]):
        streamed = bf16_row_product.row_product_sum(inputs, weights)
        if streamed is not None:
            return streamed
    if _in_float32(inputs[0]):
        wide = _copy_for(inputs, weights, _SUMS_FLOAT32, _float32_copy)
        if wide is not None:
            together = _concatenated(inputs).float()
            return F.linear(together, wide).to(inputs[0].dtype)
    packed = _copy_for(inputs, weights, _SUMS, _onednn_copy)
    if packed is None:
        return _plain_sum(inputs, weights)
    return _product(_concatenated(inputs), packed)


def _concatenated(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(inputs, dim=-1)``; a view, no copy, where the inputs already lie side by side
    in one tensor (consecutive slices of its last axis, as :class:`palm.ParallelBlock` writes a
    prefill's attention and feed-forward outputs)."""
    first = inputs[0]
    if len(inputs) > 1 and _side_by_side(inputs):
        width = sum(x.shape[-1] for x in inputs)
        return first.as_strided((*first.shape[:-1], width), first.stride(), first.storage_offset())
    return torch.cat(tuple(inputs), dim=-1)


def _side_by_side(inputs: Sequence[torch.Tensor]) -> bool:
    """Whether each input starts where the one before it ends, in every row of one storage."""
    first = inputs[0]
    storage = first.untyped_storage().data_ptr()
    for before, x in itertools.pairwise(inputs):
        if (
            x.stride() != first.stride()
            or x.shape[:-1] != first.shape[:-1]
            or x.stride(-1) != 1
            or x.dtype != first.dtype
            or x.untyped_storage().data_ptr() != storage
            or x.storage_offset() != before.storage_offset() + before.shape[-1]
        ):
            return False
    return True


def _plain_sum(inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> torch.Tensor:
    out = bf16_products.linear(inputs[0], weights[0])
    for x, w in zip(inputs[1:], weights[1:], strict=True):
        out = out + bf16_products.linear(x, w)
    return out


def uses_packed(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`linear` takes the packed path for these tensors."""
    return _packable_inputs((x,), (weight,)) and _packable_weight(weight)


def forget_packed(weight: torch.Tensor | None = None) -> None:
    """Drop the packed and float32 copies made from ``weight`` (from every weight when None);
    they are rebuilt on next use."""
    for table in _TABLES:
        table.forget(weight)


def _packable_inputs(inputs: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> bool:
    """bf16 CPU inputs with rows, and no gradient to compute."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (*inputs, *weights)):
        return False
    return all(x.dtype == torch.bfloat16 and x.is_cpu and x.dim() >= 2 for x in inputs) and all(
        x.numel() > 0 for x in inputs
    )


def _few_rows(x: torch.Tensor) -> bool:
    """A decoding step's input at batch 1 or 2: :mod:`bf16_row_product`'s kernel streams the
    weights faster than oneDNN's packed product."""
    return x.numel() <= bf16_row_product.MAX_ROWS * x.shape[-1]


def _packable_weight(weight: torch.Tensor) -> bool:
    return (
        weight.dtype == torch.bfloat16
        and weight.is_cpu
        and weight.dim() == 2
        and weight.is_contiguous()
        and not weight.is_inference()  # made under inference_mode: no version counter to watch
        and _bf16_kernels()
    )


def _onednn_copy(weights: torch.Tensor) -> torch.Tensor:
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weights, 1)
    return packed


def _float32_copy(weights: torch.Tensor) -> torch.Tensor:
    return weights.float()  # weights that pass _packable_weight are bf16: always a new tensor


def _copy_for(
    inputs: Sequence[torch.Tensor],
    weights: Sequence[torch.Tensor],
    table: _PackedTable,
    make: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor | None:
    """The copy of ``weights`` (concatenated along the input axis) that ``make`` builds, for
    inputs that passed :func:`_packable_inputs`; made now if there is none or a weight changed;
    None when a weight cannot be packed."""
    entry = table.get(weights[0])
    if entry is not None and entry.holds(weights):
        return entry.packed  # a held copy implies the weights passed _packable_weight
    if not all(_packable_weight(w) for w in weights):
        return None
    with torch.no_grad():
        sources = tuple(w.detach() for w in weights)
        whole = sources[0] if len(sources) == 1 else torch.cat(sources, dim=1)
        packed = make(whole)
    states = tuple(_state(w) for w in weights)
    table.put(weights[0], _Packed(sources=sources, states=states, packed=packed))
    return packed


def _product(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
    return out
