"""The PaLM policy: parallel attention + SwiGLU blocks over one fused projection.

Each block (Chowdhery et al. 2022, "PaLM", section 2):

    h = LayerNorm(x)                                   # no bias
    q, k, v, ff = split(h @ W_in)                      # one fused projection
    x = x + Attention(q, k, v) @ W_attn_out + SwiGLU(ff) @ W_ff_out

Attention is multi-query (``heads`` query heads share one key head and one value head of
``dim_head``), queries and keys carry rotary embeddings with xPos (see ``rotary.py``), optionally
LayerNorm'd first (``qk_norm``). Nothing has a bias; input and output embeddings are one matrix.

Attention runs through ``scaled_dot_product_attention`` with the heads folded into the query
axis: queries (B, H, T, dh) become (B, 1, T*H, dh) against keys (B, 1, S, dh). With one key head
this is exact, reads every key once instead of once per head, and on CPU measured 5-15x faster
for decoding than expanding the keys to H heads.

``KVCache`` lives in ``kv_cache.py`` and is re-exported here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model_runtime import bf16_pointwise, bf16_prefill_attention, bf16_products, packed_linear
from model_runtime.config import PaLMConfig
from model_runtime.kv_cache import KVCache
from model_runtime.rotary import RotaryTables

__all__ = ["KVCache", "PaLM", "PaLMConfig", "ParallelBlock"]

INIT_STD = 0.02
# On CPU under a mask, attention of at least this many query rows (B x T x H) runs as matrix
# products, this many new tokens at a time (see _attention_by_products).
PRODUCTS_ATTENTION_FROM_ROWS = 1024
ATTENTION_CHUNK_TOKENS = 64
PREFILL_ATTENTION_CHUNK_TOKENS = 128  # without autograd: no probabilities kept for a backward


class ParallelBlock(nn.Module):
    """One PaLM layer: attention and SwiGLU feed-forward in parallel on one pre-norm."""

    def __init__(self, config: PaLMConfig) -> None:
        super().__init__()
        self.config = config
        self.norm = nn.LayerNorm(config.dim, bias=False)
        self.fused_in = nn.Linear(config.dim, config.fused_in_dim, bias=False)
        self.attn_out = nn.Linear(config.attn_inner, config.dim, bias=False)
        self.ff_out = nn.Linear(config.ff_inner, config.dim, bias=False)
        self.q_norm: nn.LayerNorm | None = None
        self.k_norm: nn.LayerNorm | None = None
        if config.qk_norm:
            self.q_norm = nn.LayerNorm(config.dim_head, bias=False)
            self.k_norm = nn.LayerNorm(config.dim_head, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        rotary: RotaryTables,
        mask: torch.Tensor | None,
        cache: KVCache | None,
        layer: int,
        *,
        last_only: bool = False,
    ) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D). ``mask``: (B or 1, 1, T*H, S+T) additive float, 0 = may
        attend, -inf = may not, rows ordered (token, head); None = every key visible.
        ``cache``: keys/values of the S earlier tokens; this layer's T new ones are written into
        it. ``last_only``: return the last position's output alone, (B, 1, D); every position's
        key and value still go to the cache, but queries, attention and the feed-forward run for
        that one position (all that a prefill needs from the last layer)."""
        # Decoding runs this once per layer per token with tiny tensors, where each tensor
        # operation costs more than its arithmetic: the code keeps their number low.
        batch, new, _ = x.shape
        config = self.config
        heads, dim_head = config.heads, config.dim_head
        h = self.norm(x)  # (B, T, D)
        if last_only and new > 1:
            q, k, v, ff_value, ff_gate = self._last_position_inputs(h, rotary)
            x, new = x[:, -1:], 1
            if mask is not None:
                mask = mask[:, :, -heads:]  # the last token's H query rows
        else:
            fused = _project(self.fused_in, h)  # (B, T, F)
            # column order of the fused output: PaLMConfig.fused_in_layout() (q, k, v, ff_in),
            # with q and k adjacent so that one complex product rotates both
            qk, v, ff_value, ff_gate = fused.split_with_sizes(
                [(heads + 1) * dim_head, dim_head, config.ff_inner, config.ff_inner], dim=-1
            )  # (B, T, (H+1)*dh), (B, T, dh), (B, T, ff_inner) x 2
            qk = qk.view(batch, new, heads + 1, dim_head)  # (B, T, H+1, dh)
            if self.q_norm is not None and self.k_norm is not None:
                q = rotary.rotate_queries(self.q_norm(qk[:, :, :heads]))  # (B, T, H, dh)
                k = rotary.rotate_keys(self.k_norm(qk[:, :, heads]))  # (B, T, dh)
            else:
                q, k = _rotate(qk, rotary)  # (B, T, H, dh), (B, T, dh)
        if cache is not None:
            k, v = cache.write(layer, k, v)  # (B, S+T, dh) each
            if k.dtype != q.dtype:
                k, v = k.to(q.dtype), v.to(q.dtype)
        if mask is not None and mask.dtype != q.dtype:
            mask = mask.to(q.dtype)  # -inf and 0 are exact in every float dtype
        plain = type(self.attn_out) is nn.Linear and type(self.ff_out) is nn.Linear
        if (
            plain
            and new > 1
            and not _needs_gradient(
                q, k, v, ff_value, ff_gate, self.attn_out.weight, self.ff_out.weight
            )
        ):
            # a prefill: attention and SwiGLU written side by side into one tensor, so that the
            # product over their concatenation (packed_linear.linear_sum) needs no copy of them
            joined = q.new_empty(batch, new, config.attn_inner + config.ff_inner)
            attn, swiglu = joined.split_with_sizes([config.attn_inner, config.ff_inner], dim=-1)
            _attention(q, k, v, mask, out=attn.view(batch, new, heads, dim_head))
            if bf16_pointwise.swiglu(ff_value, ff_gate, out=swiglu) is None:
                torch.mul(F.silu(ff_gate, inplace=True), ff_value, out=swiglu)
        else:
            attn = _attention(q, k, v, mask).reshape(batch, new, heads * dim_head)  # (B, T, H*dh)
            swiglu = _swiglu(ff_value, ff_gate)  # (B, T, ff_inner)
        if plain:
            # one product over [attn, swiglu] and [W_attn_out, W_ff_out] where that is faster
            projected = packed_linear.linear_sum(
                (attn, swiglu), (self.attn_out.weight, self.ff_out.weight)
            )
        else:  # LoRA-wrapped projections run their own forward
            projected = self.attn_out(attn) + self.ff_out(swiglu)
        out: torch.Tensor = x + projected
        return out

    def _last_position_inputs(
        self, h: torch.Tensor, rotary: RotaryTables
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the normed input h (B, T, D): rotated queries (B, 1, H, dh) and the SwiGLU value
        and gate (B, 1, ff_inner) of the last position; rotated keys and values (B, T, dh) of
        every position."""
        config = self.config
        heads, dim_head, batch = config.heads, config.dim_head, h.shape[0]
        layout = config.fused_in_layout()
        start, stop = layout["k"][0], layout["v"][1]  # adjacent rows: keys then values
        if type(self.fused_in) is nn.Linear:
            # a (T, D) x (D, 2 dh) product for every position, the full one for the last
            keys_values = F.linear(h, self.fused_in.weight[start:stop])  # (B, T, 2*dh)
            fused = _project(self.fused_in, h[:, -1:])  # (B, 1, F)
        else:  # LoRA-wrapped: its own forward over every position
            full = self.fused_in(h)
            keys_values, fused = full[..., start:stop], full[:, -1:]
        q, _, ff_value, ff_gate = fused.split_with_sizes(
            [heads * dim_head, 2 * dim_head, config.ff_inner, config.ff_inner], dim=-1
        )
        q = q.view(batch, 1, heads, dim_head)  # (B, 1, H, dh)
        k, v = keys_values.split_with_sizes([dim_head, dim_head], dim=-1)  # (B, T, dh) each
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return rotary.last().rotate_queries(q), rotary.rotate_keys(k), v, ff_value, ff_gate


def _needs_gradient(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _rotate(qk: torch.Tensor, rotary: RotaryTables) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries (B, T, H, dh) and key (B, T, dh) of the fused projection's adjacent
    ``qk`` (B, T, H + 1, dh): one pass of :mod:`bf16_pointwise`'s kernel where it runs."""
    rotated = bf16_pointwise.rotate_qk(qk, rotary.queries[:, :, 0], rotary.keys)
    if rotated is not None:
        return rotated
    qk = rotary.rotate_joint(qk)
    heads = qk.shape[2] - 1
    return qk[:, :, :heads], qk[:, :, heads]


def _swiglu(value: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * value``: one pass of :mod:`bf16_pointwise`'s kernel where it runs."""
    fused = bf16_pointwise.swiglu(value, gate)
    return fused if fused is not None else F.silu(gate) * value


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Multi-query attention with the heads folded into the query axis: q (B, T, H, dh), k and
    v (B, S+T, dh), ``mask`` as in :meth:`ParallelBlock.forward` -> (B, 1, T*H, dh); or, given
    ``out`` (B, T, H, dh), written there (no autograd) and returned as it is.

    One SDPA call unless :func:`_attention_by_products` is faster: on CPU, under a mask, from
    :data:`PRODUCTS_ATTENTION_FROM_ROWS` query rows (B*T*H) on.
    """
    batch, new, heads, dim_head = q.shape
    # a prefill without autograd: the kernel where it runs, at any size
    if (
        out is not None
        and mask is not None
        and bf16_prefill_attention.prefill_attention(q, k, v, mask, out) is not None
    ):
        return out
    if mask is not None and q.is_cpu and batch * new * heads >= PRODUCTS_ATTENTION_FROM_ROWS:
        return _attention_by_products(q, k, v, mask, out)
    result: torch.Tensor = F.scaled_dot_product_attention(
        q.reshape(batch, 1, new * heads, dim_head), k.unsqueeze(1), v.unsqueeze(1), attn_mask=mask
    )
    if out is None:
        return result
    return out.copy_(result.view(out.shape))


def _attention_by_products(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`_attention` as batched matrix products, :data:`ATTENTION_CHUNK_TOKENS` new tokens
    at a time (:data:`PREFILL_ATTENTION_CHUNK_TOKENS` without autograd), each chunk against the
    keys it may see (the S held and its own tokens and those before: the causal mask hides every
    later one).

    SDPA on CPU cannot skip what a mask hides, and its fused kernel ran at ~200 GFLOP/s here
    (bf16, 2 threads, head dim 64) against ~970 for a large bf16 product. Scores are one
    ``baddbmm`` (scale * q k^T + mask) in the inputs' dtype (bf16 under autocast, as eager
    attention computes them; both products through the float32 GEMM where
    :func:`bf16_products.float32_faster`), then softmax in that dtype, which computes in
    float32 inside and rounds once, forward and backward. Measured forward and backward,
    against one SDPA call: 8 x 256 tokens with 4, 8 and 12 heads 8.8 -> 3.8, 17.2 -> 7.6 and
    25.1 -> 10.7 ms; 4 x 512 with 8 heads 31.2 -> 13.2 ms. Against a softmax taken in float32
    and narrowed (2026-11-27, Zen 4): the same forward bits, forward and backward 20% faster
    (8 x 256 tokens, 8 heads, 18.9 -> 15.2 ms), gradients as close to float64's (relative error
    0.0052 vs 0.0050).
    Forward alone, a prefill of 256 tokens with 12 heads: SDPA 1.8 ms, products 1.40, with
    ``baddbmm`` and one softmax pass 1.03, in chunks of 128 tokens 0.91. The price is memory
    while training: each chunk's probabilities are kept for the backward pass (2 bytes per
    score in bf16; a compiled step through the float32 GEMM may keep them widened, 4 bytes),
    B*T*H*(S+T)/2 scores or so per layer, where fused attention keeps none.
    """
    batch, new, heads, dim_head = q.shape
    held = k.shape[1] - new
    folded = q.reshape(batch, new * heads, dim_head)  # rows ordered (token, head)
    keys_t = k.transpose(1, 2)  # (B, dh, S+T)
    masks = mask.squeeze(1)  # (B or 1, T*H, S+T)
    scale = dim_head**-0.5
    outs = []
    if _needs_gradient(q, k, v):
        chunk_tokens = ATTENTION_CHUNK_TOKENS
    else:
        chunk_tokens = PREFILL_ATTENTION_CHUNK_TOKENS
    for start in range(0, new, chunk_tokens):
        stop = min(new, start + chunk_tokens)
        seen = held + stop  # keys this chunk may see
        rows = slice(start * heads, stop * heads)
        # scale * q k^T + mask in one product, rounded once to the inputs' dtype
        scores = bf16_products.baddbmm(
            masks[:, rows, :seen], folded[:, rows], keys_t[:, :, :seen], alpha=scale
        )  # (B, r, seen)
        probs = torch.softmax(scores, dim=-1)  # float32 inside, rounded once
        chunk = bf16_products.bmm(probs, v[:, :seen])  # (B, r, dh)
        if out is None:
            outs.append(chunk)
        else:
            out[:, start:stop].copy_(chunk.view(batch, stop - start, heads, dim_head))
    if out is not None:
        return out
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)).unsqueeze(1)  # (B, 1, T*H, dh)


def _project(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` for a block's projection; a plain bias-free ``nn.Linear`` goes through
    :func:`packed_linear.linear` (packed bf16 weights on CPU when no gradient is needed), any other
    layer (LoRA) runs its own forward."""
    if type(layer) is nn.Linear:
        return packed_linear.linear(x, layer.weight)
    out: torch.Tensor = layer(x)
    return out


class PaLM(nn.Module):
    """Decoder-only PaLM language model with tied embeddings.

    ``forward(tokens)`` returns float32 logits whatever dtype the weights are held in, so bf16
    inference and float32 sampling mix freely.
    """

    def __init__(self, config: PaLMConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList(ParallelBlock(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(config.dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, 0.02) weights; the two projections that write into the residual stream are
        scaled by 1/sqrt(2 * depth) (GPT-2) so the stream's variance does not grow with depth."""
        out_std = INIT_STD / math.sqrt(2 * self.config.depth)
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        for block in self.blocks:
            assert isinstance(block, ParallelBlock)
            nn.init.normal_(block.fused_in.weight, std=INIT_STD)
            nn.init.normal_(block.attn_out.weight, std=out_std)
            nn.init.normal_(block.ff_out.weight, std=out_std)
        for module in self.modules():
            if isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)

    def num_parameters(self) -> int:
        """Number of distinct parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def hidden_states(
        self,
        tokens: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Final-normed trunk output (B, T, D) for ``tokens`` (B, T) int64; with ``last_only``
        that of the last position alone, (B, 1, D), computed with less work (the last layer
        runs queries, attention and feed-forward for that position only; the cache still gets
        every position's keys and values): what a prefill before generation needs.

        ``cache``: keys/values of S earlier tokens, appended in place with the T new ones.
        ``attention_mask``: (B, S + T) bool, True = this key may be attended (pads False);
        causality is added here. ``positions``: (B, T) int64 rotary positions, default
        ``arange(S, S + T)`` for every row; pass per-row positions for left-padded batches.
        A query always sees its own key, so a pad query gives finite (meaningless) output.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(
                f"tokens must be (B, T) int64, got {tuple(tokens.shape)} {tokens.dtype}"
            )
        batch, new = tokens.shape
        if new == 0:
            raise ValueError("tokens must hold at least one position (T >= 1)")
        past = 0
        if cache is not None:
            if cache.batch_size != batch:
                raise ValueError(f"cache holds {cache.batch_size} rows, tokens have {batch}")
            past = cache.length
        if positions is not None and positions.shape != tokens.shape:
            raise ValueError(
                f"positions must be (B, T) = {tuple(tokens.shape)}, got {tuple(positions.shape)}"
            )
        if attention_mask is not None and attention_mask.shape != (batch, past + new):
            raise ValueError(
                f"attention_mask must be (B, S + T) = ({batch}, {past + new}), "
                f"got {tuple(attention_mask.shape)}"
            )
        if positions is None:  # arange(S, S + T) in every row
            rotary = RotaryTables.span(self.config, past, new, tokens.device)
        else:
            rotary = RotaryTables.build(self.config, positions)
        mask = self._attention_mask(new, past, attention_mask, tokens.device)
        x = self.embed(tokens)  # (B, T, D)
        if cache is not None:
            cache.reserve(new)
        last_layer = len(self.blocks) - 1
        for index, block in enumerate(self.blocks):
            x = block(x, rotary, mask, cache, index, last_only=last_only and index == last_layer)
        if cache is not None:
            cache.advance(new)
        out: torch.Tensor = self.norm(x)  # (B, T, D)
        return out

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        cache: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) float32 for ``tokens`` (B, T); arguments as in
        :meth:`hidden_states`."""
        hidden = self.hidden_states(
            tokens, cache=cache, attention_mask=attention_mask, positions=positions
        )
        return self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Float32 logits (..., vocab_size) of final-normed ``hidden`` (..., dim), through the
        tied embedding."""
        return packed_linear.linear(hidden, self.embed.weight).float()

    def _attention_mask(
        self,
        new: int,
        past: int,
        attention_mask: torch.Tensor | None,
        device: torch.device,
    ) -> torch.Tensor | None:
        """Additive (B or 1, 1, T*H, S+T) mask, 0 where a query may attend and -inf elsewhere,
        rows ordered (token, head); None when every key is visible (one new token, no padding).

        Additive rather than boolean because SDPA converts a boolean mask to this on every call
        (once per layer); it is made in the dtype the queries will have (autocast's when on,
        else the weights'), and a block converts it if its queries differ."""
        if attention_mask is None and new == 1:
            return None
        key_pos = torch.arange(past + new, device=device)  # (S+T,)
        query_pos = torch.arange(past, past + new, device=device)  # (T,)
        allowed = (key_pos[None, :] <= query_pos[:, None])[None]  # (1, T, S+T)
        if attention_mask is not None:
            allowed = allowed & attention_mask.to(device=device, dtype=torch.bool)[:, None, :]
            allowed = allowed | (key_pos[None, :] == query_pos[:, None])[None]  # (B, T, S+T)
        rows, keys = allowed.shape[0], past + new
        heads = self.config.heads
        allowed = allowed[:, :, None, :].expand(rows, new, heads, keys)  # (B, T, H, S+T)
        allowed = allowed.reshape(rows, 1, new * heads, keys)
        if torch.is_autocast_enabled(device.type):
            dtype = torch.get_autocast_dtype(device.type)
        else:
            dtype = self.embed.weight.dtype
        additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return additive.masked_fill_(~allowed, float("-inf"))
