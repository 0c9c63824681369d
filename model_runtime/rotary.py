"""Rotary position embeddings with xPos, computed from explicit positions.

Rotary (RoFormer, Su et al. 2021) rotates each pair of features ``(2i, 2i + 1)`` of a query or
key by the angle ``position * base^(-2i / dim_head)``, so that ``q_m . k_n`` depends on ``m - n``
only. xPos (Sun et al. 2022, "A Length-Extrapolatable Transformer") also multiplies query pair
``i`` by ``zeta_i ^ (m / scale_base)`` and key pair ``i`` by ``zeta_i ^ (-n / scale_base)``, with
``zeta_i = (2i / dim_head + 0.4) / 1.4`` in [0.28, 1), so attention decays with distance.

Each pair is treated as a complex number, so rotation and xPos scaling are one complex product
with a precomputed factor ``scale * exp(i * angle)`` (three kernels per call instead of seven).

Everything is computed in float32 whatever the model's dtype: bf16 carries 8 bits of mantissa,
too few for angles of hundreds of radians or for powers of ``zeta``. xPos exponents are taken
relative to a fixed centre (``max_seq_len // 2``): the centre cancels in ``q_m . k_n`` (the
product only sees ``m - n``) and halves the largest exponent, keeping the scales within
[0.28^(L/2b), 0.28^(-L/2b)] for positions up to ``L = max_seq_len``. Because the centre is fixed
(not the current sequence length), keys stored in a KV cache stay valid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from model_runtime.config import PaLMConfig


@dataclass(frozen=True)
class RotaryTables:
    """complex64 factors for the pairs of one forward pass's T positions (under
    ``torch.compile``, float32 (real, imaginary) pairs: one more trailing axis of 2).

    ``queries``: (B or 1, T, 1, dh/2); ``keys``: (B or 1, T, dh/2); ``joint``:
    (B or 1, T, H + 1, dh/2), the query factor for the H query heads then the key factor, for
    rotating the adjacent q and k of the fused projection in one product.
    """

    queries: torch.Tensor
    keys: torch.Tensor
    joint: torch.Tensor

    @classmethod
    def build(cls, config: PaLMConfig, positions: torch.Tensor) -> RotaryTables:
        """Tables for ``positions`` (B or 1, T), integer positions (may be negative for pads).

        Positions in ``[0, max_seq_len)`` are looked up in a table computed once per config and
        device (a decoding step would otherwise spend a dozen small kernels on its one position);
        any other position is computed the same way on the spot."""
        low, high = torch.aminmax(positions)
        if int(low) >= 0 and int(high) < config.max_seq_len:
            joint = _position_table(config, positions.device)[positions]  # (B, T, H + 1, dh/2)
        else:
            joint = _joint_factors(config, positions)
        return cls._of_joint(config, joint)

    @classmethod
    def span(
        cls, config: PaLMConfig, start: int, length: int, device: torch.device
    ) -> RotaryTables:
        """Tables for positions ``start .. start + length - 1``, the same in every row: what
        :meth:`build` gives for ``arange(start, start + length)[None]``, sliced from the cached
        table without reading the positions back from the device (no host sync, and no graph
        break under ``torch.compile``)."""
        inside = start >= 0 and start + length <= config.max_seq_len
        if inside and not torch.compiler.is_compiling():
            joint = _position_table(config, device)[start : start + length][None]  # (1, T, ...)
        else:  # compiled: computed in the graph, as real (cos, sin) pairs (see _rotate)
            positions = torch.arange(start, start + length, device=device)[None]
            joint = _joint_factors(config, positions, real=torch.compiler.is_compiling())
        return cls._of_joint(config, joint)

    @classmethod
    def _of_joint(cls, config: PaLMConfig, joint: torch.Tensor) -> RotaryTables:
        """The tables around ``joint`` (B or 1, T, H + 1, dh/2): queries and keys are views."""
        return cls(queries=joint[:, :, :1], keys=joint[:, :, config.heads], joint=joint)

    def last(self) -> RotaryTables:
        """The tables of the last position only (T = 1)."""
        return RotaryTables(
            queries=self.queries[:, -1:], keys=self.keys[:, -1:], joint=self.joint[:, -1:]
        )

    def rotate_queries(self, q: torch.Tensor) -> torch.Tensor:
        """q: (B, T, H, dh) in any dtype -> same shape and dtype, rotated (and xPos-scaled)."""
        return _rotate(q, self.queries)

    def rotate_keys(self, k: torch.Tensor) -> torch.Tensor:
        """k: (B, T, dh) in any dtype -> same shape and dtype, rotated (and xPos-scaled)."""
        return _rotate(k, self.keys)

    def rotate_joint(self, qk: torch.Tensor) -> torch.Tensor:
        """qk: (B, T, H + 1, dh), H query heads then the key -> same shape and dtype."""
        return _rotate(qk, self.joint)


def _joint_factors(
    config: PaLMConfig, positions: torch.Tensor, *, real: bool = False
) -> torch.Tensor:
    """complex64 (B or 1, T, H + 1, dh/2): the query factor for the H heads, then the key's;
    ``real``: the same as float32 (..., dh/2, 2) (real, imaginary) pairs."""
    device = positions.device
    half = config.dim_head // 2
    exponents = torch.arange(half, device=device, dtype=torch.float32) * 2 / config.dim_head
    inv_freq = config.rotary_base ** (-exponents)  # (dh/2,)
    pos = positions.to(torch.float32)  # (B, T)
    angles = pos[..., None] * inv_freq  # (B, T, dh/2)
    if config.use_xpos:
        zeta = (exponents + 0.4) / 1.4  # (dh/2,)
        power = (pos - config.max_seq_len // 2) / config.xpos_scale_base  # (B, T)
        q_scale = zeta ** power[..., None]  # (B, T, dh/2)
    else:
        q_scale = torch.ones_like(angles)
    if real:
        unit = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)  # (B, T, dh/2, 2)
        queries, keys = unit * q_scale[..., None], unit * q_scale.reciprocal()[..., None]
    else:
        queries = torch.polar(q_scale, angles)  # (B, T, dh/2) complex64
        keys = torch.polar(q_scale.reciprocal(), angles)
    rows, new = queries.shape[:2]
    shape = (rows, new, config.heads, *queries.shape[2:])
    return torch.cat(
        (queries[:, :, None].expand(shape), keys[:, :, None]), dim=2
    )  # (B, T, H + 1, dh/2) complex or (B, T, H + 1, dh/2, 2) real


@lru_cache(maxsize=8)
def _position_table(config: PaLMConfig, device: torch.device) -> torch.Tensor:
    """(max_seq_len, H + 1, dh/2) joint factors of positions 0 .. max_seq_len - 1 (made as a
    normal tensor even under inference_mode, so that training may index it later)."""
    with torch.inference_mode(False), torch.no_grad():
        positions = torch.arange(config.max_seq_len, device=device)[None]  # (1, L)
        return _joint_factors(config, positions)[0]


def _rotate(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply each feature pair of ``x`` (..., dh) by ``factor`` (..., dh/2), in float32.

    Under ``torch.compile`` the factors are real (..., dh/2, 2) pairs and the product is written
    out in real arithmetic: Inductor generates no code for complex operations (it runs them one
    by one, eagerly), but fuses this into one kernel with the casts, forward and backward."""
    if not factor.is_complex():
        wide = x.float().reshape(*x.shape[:-1], -1, 2)  # (..., dh/2, 2)
        x0, x1 = wide[..., 0], wide[..., 1]
        cos, sin = factor[..., 0], factor[..., 1]
        turned = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
        return turned.flatten(-2).to(x.dtype)
    # view_as_complex / view_as_real, not ``.view(dtype)``: a dtype view that changes the element
    # size is not differentiable, and would cut queries and keys out of the backward pass.
    wide = x.float()
    pairs = torch.view_as_complex(wide.view(*wide.shape[:-1], -1, 2))  # (..., dh/2)
    return torch.view_as_real(pairs * factor).flatten(-2).to(x.dtype)
