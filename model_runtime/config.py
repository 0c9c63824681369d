"""The frozen configuration of the PaLM policy and its JSON form.

``PaLMConfig.to_dict()`` is what ``config.json`` in a checkpoint directory holds; ``from_dict``
reads it back and refuses anything it does not understand (an unknown ``format_version``, an
unknown or missing key, a value of the wrong type) with a ``ValueError`` that says what is wrong.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CONFIG_FORMAT_VERSION = 1

# Names of the logical projections packed, in this order, into a block's fused input projection.
FUSED_IN_TARGETS = ("q", "k", "v", "ff_in")


@dataclass(frozen=True)
class PaLMConfig:
    """Sizes of a PaLM model (parallel attention + SwiGLU blocks, multi-query attention).

    ``dim`` is the residual width, ``heads * dim_head`` the width of the queries; keys and values
    are one shared head of ``dim_head`` (multi-query). The SwiGLU inner width is
    ``ff_mult * dim``. ``max_seq_len`` is the context the model is trained for: positions past it
    still work (rotary is computed from positions) but the model has not seen them.
    """

    vocab_size: int
    dim: int
    depth: int
    heads: int
    dim_head: int = 64
    ff_mult: int = 4
    max_seq_len: int = 512
    qk_norm: bool = False
    use_xpos: bool = True
    xpos_scale_base: int = 512
    rotary_base: float = 10000.0
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "dim",
            "depth",
            "heads",
            "dim_head",
            "ff_mult",
            "max_seq_len",
            "xpos_scale_base",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"PaLMConfig.{name} must be a positive int, got {value!r}")
        if self.dim_head % 2 != 0:
            raise ValueError(f"PaLMConfig.dim_head must be even (rotary), got {self.dim_head}")
        for name in ("qk_norm", "use_xpos"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"PaLMConfig.{name} must be a bool, got {getattr(self, name)!r}")
        base = self.rotary_base
        if isinstance(base, bool) or not isinstance(base, int | float) or base <= 1.0:
            raise ValueError(f"PaLMConfig.rotary_base must be a number > 1, got {base!r}")
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"PaLMConfig.format_version {self.format_version!r} is not supported "
                f"(this code reads version {CONFIG_FORMAT_VERSION})"
            )

    @property
    def attn_inner(self) -> int:
        """Width of all query heads together: ``heads * dim_head``."""
        return self.heads * self.dim_head

    @property
    def ff_inner(self) -> int:
        """Width of the SwiGLU hidden layer (the fused projection emits twice this)."""
        return self.ff_mult * self.dim

    def fused_in_layout(self) -> dict[str, tuple[int, int]]:
        """Row ranges ``[start, stop)`` of each logical projection in the fused input weight.

        Order: q (heads * dim_head), k (dim_head), v (dim_head), ff_in (2 * ff_inner: value
        half then gate half of SwiGLU).
        """
        widths = {
            "q": self.attn_inner,
            "k": self.dim_head,
            "v": self.dim_head,
            "ff_in": 2 * self.ff_inner,
        }
        layout: dict[str, tuple[int, int]] = {}
        start = 0
        for name in FUSED_IN_TARGETS:
            layout[name] = (start, start + widths[name])
            start += widths[name]
        return layout

    @property
    def fused_in_dim(self) -> int:
        """Output width of the fused input projection."""
        return self.attn_inner + 2 * self.dim_head + 2 * self.ff_inner

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field, ``format_version`` included."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PaLMConfig:
        """Read a dict written by :meth:`to_dict`; raise ``ValueError`` on anything unexpected."""
        if not isinstance(data, Mapping):
            raise ValueError(f"a PaLM config must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"unsupported PaLM config format_version {version!r} "
                f"(this code reads version {CONFIG_FORMAT_VERSION})"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"unknown PaLM config keys: {', '.join(unknown)}")
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in data
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ValueError(f"missing PaLM config keys: {', '.join(missing)}")
        values = dict(data)
        if isinstance(values.get("rotary_base"), int) and not isinstance(
            values.get("rotary_base"), bool
        ):
            values["rotary_base"] = float(values["rotary_base"])
        return cls(**values)
