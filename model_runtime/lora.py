"""LoRA (Hu et al. 2021): named sets of low-rank adapters on the PaLM projections.

An adapter adds ``scaling * B @ A`` to a weight, with A (rank, in) and B (out, rank), computed as
``(dropout(x) @ A^T) @ B^T * scaling``; ``scaling = alpha / rank``. B starts at zero, so a new
adapter leaves the model's outputs exactly as they were.

Targets are the *logical* projections: ``q``, ``k``, ``v`` and ``ff_in`` (the SwiGLU value and
gate halves together) all live in each block's one fused input weight, ``attn_out`` and
``ff_out`` are the two output projections. How the fused weight is adapted: every adapted
linear is a :class:`LoRALinear`, a bias-free ``nn.Linear`` whose output rows are partitioned
into named slices (``PaLMConfig.fused_in_layout()`` for the fused projection; one slice covering
everything for the output projections). An adapter belongs to one slice: its B has that slice's
height, and its output is added to those rows only. So ``q`` with rank 8 means exactly a rank-8
update of the query rows of the fused weight, independent of the ``k``, ``v`` and ``ff_in``
rows, which is what LoRA on separate q/k/v/ff projections would be; merging adds
``scaling * B @ A`` to those rows of the fused weight.

Several named sets may sit on one model (e.g. one per task); at most one is active at a time
(``set_active_lora``; ``None`` runs the plain base model). A ``LoRALinear`` keeps its weight as
its own ``weight`` parameter, so the base model's state-dict keys do not change when adapters
are added; adapter parameters appear under ``<module>.adapters.<set>.<target>.lora_a|lora_b``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from model_runtime import bf16_products
from model_runtime.palm import PaLM, ParallelBlock

LORA_TARGETS = ("q", "k", "v", "attn_out", "ff_in", "ff_out")
LORA_FORMAT_VERSION = 1

# Which block attribute holds each target's weight.
_TARGET_MODULE = {
    "q": "fused_in",
    "k": "fused_in",
    "v": "fused_in",
    "ff_in": "fused_in",
    "attn_out": "attn_out",
    "ff_out": "ff_out",
}
_NAME_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LoRASpec:
    """Hyper-parameters of one named adapter set."""

    rank: int
    alpha: float
    targets: tuple[str, ...]
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        unknown = [t for t in self.targets if t not in LORA_TARGETS]
        if unknown or not self.targets:
            raise ValueError(
                f"LoRA targets must be a non-empty subset of {LORA_TARGETS}, got {self.targets}"
            )
        if len(set(self.targets)) != len(self.targets):
            raise ValueError(f"LoRA targets repeat: {self.targets}")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRAAdapter(nn.Module):
    """One low-rank update: (..., in) -> (..., out) = dropout(x) @ A^T @ B^T * scaling."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        spec: LoRASpec,
        *,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.alpha = spec.alpha
        self.scaling = spec.scaling
        self.lora_a = nn.Parameter(torch.empty(spec.rank, in_features, device=device, dtype=dtype))
        self.lora_b = nn.Parameter(torch.zeros(out_features, spec.rank, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear initialises
        self.dropout = nn.Dropout(spec.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.dropout(x.to(self.lora_a.dtype))
        out: torch.Tensor = F.linear(F.linear(h, self.lora_a), self.lora_b) * self.scaling
        return out

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A, (out, in) float32."""
        return (self.lora_b.float() @ self.lora_a.float()) * self.scaling


class LoRALinear(nn.Linear):
    """A bias-free linear layer whose output rows are named slices that adapters can target.

    ``slices`` maps a target name to its ``[start, stop)`` output rows. ``adapters[set][target]``
    is that set's adapter for one slice. ``active`` names the set applied in ``forward``.
    """

    def __init__(self, base: nn.Linear, slices: Mapping[str, tuple[int, int]]) -> None:
        if base.bias is not None:
            raise ValueError("LoRALinear wraps bias-free linear layers only")
        super().__init__(base.in_features, base.out_features, bias=False, device="meta")
        self.weight = base.weight  # the same Parameter: state-dict key and tying unchanged
        self.slices: dict[str, tuple[int, int]] = dict(slices)
        self.adapters: nn.ModuleDict = nn.ModuleDict()
        self.active: str | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., in) -> (..., out): the base projection plus the active set's adapters."""
        out = bf16_products.linear(x, self.weight)  # (..., out); F.linear, see bf16_products
        if self.active is None or self.active not in self.adapters:
            return out
        adapters = self.adapters[self.active]
        assert isinstance(adapters, nn.ModuleDict)
        if len(self.slices) == 1:
            ((target, _),) = self.slices.items()
            if target in adapters:
                out = out + adapters[target](x).to(out.dtype)
            return out
        sizes = [stop - start for start, stop in self.slices.values()]
        parts = list(torch.split(out, sizes, dim=-1))
        for i, target in enumerate(self.slices):
            if target in adapters:
                parts[i] = parts[i] + adapters[target](x).to(out.dtype)
        return torch.cat(parts, dim=-1)

    def set_names(self) -> list[str]:
        return list(self.adapters.keys())


def add_lora(
    model: PaLM,
    name: str,
    *,
    rank: int,
    alpha: float,
    targets: Sequence[str] = LORA_TARGETS,
    dropout: float = 0.0,
    dtype: torch.dtype | None = None,
) -> LoRASpec:
    """Add the adapter set ``name`` to every block of ``model`` (B = 0: outputs unchanged).

    The new set is not made active: call :func:`set_active_lora`. ``dtype`` defaults to the
    base weights' dtype; pass ``torch.float32`` to train adapters over bf16 weights.
    """
    spec = LoRASpec(rank=rank, alpha=float(alpha), targets=tuple(targets), dropout=dropout)
    _check_name(name)
    if name in lora_names(model):
        raise ValueError(f"LoRA set {name!r} already exists on this model")
    active = active_lora(model)
    for block in _blocks(model):
        for target in spec.targets:
            layer = _wrap(block, _TARGET_MODULE[target])
            start, stop = layer.slices[target]
            if name not in layer.adapters:
                layer.adapters[name] = nn.ModuleDict()
            adapter_set = layer.adapters[name]
            assert isinstance(adapter_set, nn.ModuleDict)
            adapter = LoRAAdapter(
                layer.in_features,
                stop - start,
                spec,
                device=layer.weight.device,
                dtype=layer.weight.dtype if dtype is None else dtype,
            )
            adapter_set[target] = adapter.train(model.training)  # no dropout in an eval model
    set_active_lora(model, active)  # layers wrapped just now follow the model's active set
    return spec


def lora_names(model: PaLM) -> list[str]:
    """Names of the adapter sets on ``model``, in the order they were added."""
    names: dict[str, None] = {}
    for _, layer in _lora_layers(model):
        names.update(dict.fromkeys(layer.set_names()))
    return list(names)


def lora_spec(model: PaLM, name: str) -> LoRASpec:
    """The rank, alpha, targets and dropout of set ``name``, read from its adapters."""
    targets: list[str] = []
    first: LoRAAdapter | None = None
    for target in LORA_TARGETS:
        for _, adapter in _adapters(model, name, target):
            first = first or adapter
            if target not in targets:
                targets.append(target)
    if first is None:
        raise KeyError(f"no LoRA set named {name!r} (sets: {lora_names(model)})")
    return LoRASpec(
        rank=first.lora_a.shape[0],
        alpha=first.alpha,
        targets=tuple(targets),
        dropout=float(first.dropout.p),
    )


def set_active_lora(model: PaLM, name: str | None) -> None:
    """Apply set ``name`` in every forward from now on; ``None`` runs the base model."""
    if name is not None and name not in lora_names(model):
        raise KeyError(f"no LoRA set named {name!r} (sets: {lora_names(model)})")
    for _, layer in _lora_layers(model):
        layer.active = name


def active_lora(model: PaLM) -> str | None:
    """The name of the active set, or None."""
    for _, layer in _lora_layers(model):
        return layer.active
    return None


def lora_parameters(model: PaLM, name: str) -> list[nn.Parameter]:
    """Every A and B of set ``name``."""
    params: list[nn.Parameter] = []
    for target in LORA_TARGETS:
        for _, adapter in _adapters(model, name, target):
            params.extend((adapter.lora_a, adapter.lora_b))
    if not params:
        raise KeyError(f"no LoRA set named {name!r} (sets: {lora_names(model)})")
    return params


def mark_only_lora_trainable(model: PaLM, name: str) -> list[nn.Parameter]:
    """Freeze every parameter but set ``name``'s adapters; return those (for the optimizer)."""
    trainable = lora_parameters(model, name)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in trainable:
        param.requires_grad_(True)
    return trainable


@torch.no_grad()
def merge_lora(model: PaLM, name: str) -> None:
    """Fold set ``name`` into the base weights (in float32, then the weights' dtype) and remove
    it. The model then computes, without adapters, what it computed with ``name`` active."""
    lora_spec(model, name)  # raises on an unknown name
    for target in LORA_TARGETS:
        for layer, adapter in _adapters(model, name, target):
            start, stop = layer.slices[target]
            rows = layer.weight[start:stop]
            rows.copy_((rows.float() + adapter.delta_weight()).to(rows.dtype))
    remove_lora(model, name)


def remove_lora(model: PaLM, name: str) -> None:
    """Drop set ``name`` (deactivating it if active); layers left without sets become plain
    ``nn.Linear`` again."""
    if name not in lora_names(model):
        raise KeyError(f"no LoRA set named {name!r} (sets: {lora_names(model)})")
    for block in _blocks(model):
        for attr in ("fused_in", "attn_out", "ff_out"):
            layer = getattr(block, attr)
            if not isinstance(layer, LoRALinear):
                continue
            if name in layer.adapters:
                del layer.adapters[name]
            if layer.active == name:
                layer.active = None
            if len(layer.adapters) == 0:
                plain = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
                plain.weight = layer.weight
                setattr(block, attr, plain)


def lora_state_dict(model: PaLM, name: str) -> dict[str, torch.Tensor]:
    """Set ``name``'s tensors, keyed ``<layer path>.<target>.lora_a|lora_b`` (detached)."""
    state: dict[str, torch.Tensor] = {}
    for path, layer in _lora_layers(model):
        adapter_set = layer.adapters[name] if name in layer.adapters else None  # noqa: SIM401
        if not isinstance(adapter_set, nn.ModuleDict):
            continue
        for target, adapter in adapter_set.items():
            assert isinstance(adapter, LoRAAdapter)
            state[f"{path}.{target}.lora_a"] = adapter.lora_a.detach()
            state[f"{path}.{target}.lora_b"] = adapter.lora_b.detach()
    if not state:
        raise KeyError(f"no LoRA set named {name!r} (sets: {lora_names(model)})")
    return state


@torch.no_grad()
def load_lora_state_dict(model: PaLM, name: str, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` (as from :func:`lora_state_dict`) into the existing set ``name``.

    Keys and shapes must match exactly; a mismatch raises ``ValueError`` naming the keys."""
    current = lora_state_dict(model, name)
    missing = sorted(set(current) - set(state))
    unexpected = sorted(set(state) - set(current))
    if missing or unexpected:
        raise ValueError(
            f"LoRA state for set {name!r} does not match the model: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for key, tensor in current.items():
        if state[key].shape != tensor.shape:
            raise ValueError(
                f"LoRA tensor {key}: shape {tuple(state[key].shape)} in the state, "
                f"{tuple(tensor.shape)} in the model"
            )
    for key, tensor in current.items():
        tensor.copy_(state[key])


def save_lora(model: PaLM, name: str, path: Path) -> None:
    """Write set ``name`` alone to a safetensors file, its spec in the file's metadata."""
    spec = lora_spec(model, name)
    metadata = {
        "format_version": str(LORA_FORMAT_VERSION),
        "name": name,
        "rank": str(spec.rank),
        "alpha": repr(spec.alpha),
        "dropout": repr(spec.dropout),
        "targets": json.dumps(list(spec.targets)),
    }
    state = {key: t.contiguous() for key, t in lora_state_dict(model, name).items()}
    save_file(state, str(path), metadata=metadata)


def load_lora(model: PaLM, name: str, path: Path) -> LoRASpec:
    """Read a file written by :func:`save_lora` into set ``name`` (created from the file's spec
    if the model lacks it). The set is not made active."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if metadata.get("format_version") != str(LORA_FORMAT_VERSION):
        raise ValueError(
            f"{path}: not a LoRA file of format version {LORA_FORMAT_VERSION} (metadata {metadata})"
        )
    spec = LoRASpec(
        rank=int(metadata["rank"]),
        alpha=float(metadata["alpha"]),
        targets=tuple(json.loads(metadata["targets"])),
        dropout=float(metadata["dropout"]),
    )
    if name not in lora_names(model):
        dtype = next(iter(state.values())).dtype if state else None
        add_lora(
            model,
            name,
            rank=spec.rank,
            alpha=spec.alpha,
            targets=spec.targets,
            dropout=spec.dropout,
            dtype=dtype,
        )
    elif lora_spec(model, name) != spec:
        raise ValueError(f"{path}: spec {spec} differs from set {name!r} on the model")
    load_lora_state_dict(model, name, state)
    return spec


def has_lora(model: nn.Module) -> bool:
    """Whether any adapter set is attached to ``model``."""
    return any(isinstance(m, LoRALinear) and len(m.adapters) > 0 for m in model.modules())


def _check_name(name: str) -> None:
    if not _NAME_PATTERN.match(name) or hasattr(nn.ModuleDict(), name):
        raise ValueError(
            f"LoRA set name {name!r} must match {_NAME_PATTERN.pattern} "
            "and not shadow a ModuleDict attribute"
        )


def _blocks(model: PaLM) -> list[ParallelBlock]:
    blocks = []
    for block in model.blocks:
        assert isinstance(block, ParallelBlock)
        blocks.append(block)
    return blocks


def _wrap(block: ParallelBlock, attr: str) -> LoRALinear:
    """The block's ``attr`` layer as a LoRALinear (replacing a plain nn.Linear in place)."""
    layer = getattr(block, attr)
    if isinstance(layer, LoRALinear):
        return layer
    assert isinstance(layer, nn.Linear)
    if attr == "fused_in":
        slices = block.config.fused_in_layout()
    else:
        slices = {attr: (0, layer.out_features)}
    wrapped = LoRALinear(layer, slices)
    setattr(block, attr, wrapped)
    return wrapped


def _lora_layers(model: PaLM) -> list[tuple[str, LoRALinear]]:
    return [(path, m) for path, m in model.named_modules() if isinstance(m, LoRALinear)]


def _adapters(model: PaLM, name: str, target: str) -> list[tuple[LoRALinear, LoRAAdapter]]:
    """(layer, adapter) for every block where set ``name`` adapts ``target``."""
    found: list[tuple[LoRALinear, LoRAAdapter]] = []
    for _, layer in _lora_layers(model):
        if name in layer.adapters and target in layer.slices:
            adapter_set = layer.adapters[name]
            assert isinstance(adapter_set, nn.ModuleDict)
            if target in adapter_set:
                adapter = adapter_set[target]
                assert isinstance(adapter, LoRAAdapter)
                found.append((layer, adapter))
    return found
