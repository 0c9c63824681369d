"""Choosing the next token for a batch of rows that each have their own sampling parameters.

The processors of :mod:`model_runtime.sampling` take per-row settings as (B,) tensors; a row
whose request does not use a processor gets that processor's neutral value (penalty 1 or 0,
temperature 1, top-k 0, top-p 1), which leaves its logits bit-for-bit unchanged. So a row's
token depends on its own logits, settings and generator only -- never on the other rows of the
batch. Order and greedy handling are those of ``sampling.process_logits``, after an optional
per-row logit bias (OpenAI's ``logit_bias``: added to the raw logits before anything else).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model_runtime.sampling import (
    SamplingParams,
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
    apply_temperature,
    greedy_tokens,
    sample_from_logits,
    top_k_filter,
)

# Below this temperature a row is greedy: dividing float32 logits by less could overflow, and
# the distribution is one-hot up to exact ties anyway. Greedy rows report logprobs at T = 1.
MIN_TEMPERATURE = 1e-6
MAX_TOP_K = 2**31 - 1  # any k past the vocabulary is "off"; keeps the tensor in range
MIN_TOP_P = 1e-30  # a smaller top_p rounds to 0 in float32; any p this small keeps one token


@dataclass(frozen=True)
class RowSettings:
    """Sampling settings of B rows as (B,) tensors (neutral values where a row does not use a
    processor), plus which processors any row uses. Built once per batch membership."""

    scale: torch.Tensor  # (B,) float32 temperature; 1 for greedy rows
    top_k: torch.Tensor  # (B,) long; 0 = off (and for greedy rows)
    top_p: torch.Tensor  # (B,) float32; 1 = off (and for greedy rows)
    repetition: torch.Tensor  # (B,) float32; 1 = off
    frequency: torch.Tensor  # (B,) float32
    presence: torch.Tensor  # (B,) float32
    greedy: tuple[bool, ...]
    top_logprobs: tuple[int, ...]
    bias: torch.Tensor | None  # (B, V) float32 logit bias; None when no row has one
    uses_temperature: bool
    uses_top_k: bool
    uses_top_p: bool
    uses_repetition: bool
    uses_counts: bool

    @classmethod
    def of(
        cls,
        params: Sequence[SamplingParams],
        top_logprobs: Sequence[int],
        device: torch.device,
        *,
        logit_bias: Sequence[Mapping[int, float]] = (),
        vocab_size: int = 0,
    ) -> RowSettings:
        """Settings of rows with ``params``; ``logit_bias`` (one mapping per row, or empty)
        needs ``vocab_size`` (the logits' width)."""

        def floats(values: Sequence[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        greedy = tuple(p.greedy or p.temperature < MIN_TEMPERATURE for p in params)
        sampled = [p for p, g in zip(params, greedy, strict=True) if not g]
        rows = list(zip(params, greedy, strict=True))
        return cls(
            scale=floats([1.0 if g else p.temperature for p, g in rows]),
            top_k=torch.tensor(
                [0 if g else min(p.top_k, MAX_TOP_K) for p, g in rows],
                dtype=torch.long,
                device=device,
            ),
            top_p=floats([1.0 if g else max(p.top_p, MIN_TOP_P) for p, g in rows]),
            repetition=floats([p.repetition_penalty for p in params]),
            frequency=floats([p.frequency_penalty for p in params]),
            presence=floats([p.presence_penalty for p in params]),
            greedy=greedy,
            top_logprobs=tuple(top_logprobs),
            bias=_bias_rows(logit_bias, vocab_size, device),
            uses_temperature=any(p.temperature != 1.0 for p in sampled),
            uses_top_k=any(p.top_k > 0 for p in sampled),
            uses_top_p=any(p.top_p < 1.0 for p in sampled),
            uses_repetition=any(p.repetition_penalty != 1.0 for p in params),
            uses_counts=any(p.frequency_penalty != 0 or p.presence_penalty != 0 for p in params),
        )


@dataclass(frozen=True)
class Choice:
    """The tokens picked for B rows and their logprobs (see ``CompletionResult``)."""

    tokens: torch.Tensor  # (B,) long
    logprobs: torch.Tensor  # (B,) float32
    top_ids: torch.Tensor | None  # (B, K) long, K = max requested top_logprobs
    top_logprobs: torch.Tensor | None  # (B, K) float32


def _bias_rows(
    logit_bias: Sequence[Mapping[int, float]], vocab_size: int, device: torch.device
) -> torch.Tensor | None:
    """(B, V) dense bias of per-row {token id: bias} mappings; None if all are empty."""
    if not any(logit_bias):
        return None
    bias = torch.zeros(len(logit_bias), vocab_size, device=device)
    for row, mapping in enumerate(logit_bias):
        for token_id, value in mapping.items():
            if token_id < vocab_size:  # a model vocab narrower than the tokenizer's
                bias[row, token_id] = value
    return bias


def nucleus_filter(logits: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """``sampling.top_p_filter`` computed without an argsort of the vocabulary.

    Same rule: sorted by logit (ties by lower id first), a token is kept while the probability
    mass ranked strictly above it is < p. The sorted *values* give the mass and so the count K
    of kept tokens and the K-th largest logit; the kept set is every logit above it plus, among
    logits equal to it, the lowest ids up to K. Sorting values only is what costs: on CPU it
    runs through numpy's vectorised sort, several times faster than torch's sort, which for
    top-p over a whole vocabulary for every row at every step dominated a batched decode step.
    The sorted values, their softmax and its cumsum are computed as in ``top_p_filter``, so the
    kept sets agree (up to a float rounding that makes the cumsum step back at the boundary).

    logits: (B, V) float32; top_p: (B,) in (0, 1], 1 = off. Returns (B, V).
    """
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        ascending = np.sort(logits.contiguous().numpy(), axis=-1)
        sorted_logits = torch.from_numpy(np.ascontiguousarray(ascending[:, ::-1]))
    else:
        sorted_logits = logits.sort(dim=-1, descending=True).values
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass ranked strictly above
    p = top_p.to(device=logits.device, dtype=torch.float32)[:, None]  # (B, 1)
    keep_count = (mass_before < p).sum(dim=-1).clamp(min=1)  # (B,) K; the top token stays
    keep_count = torch.where(
        p[:, 0] >= 1.0, torch.full_like(keep_count, logits.shape[-1]), keep_count
    )
    threshold = sorted_logits.gather(-1, (keep_count - 1)[:, None])  # (B, 1) K-th largest
    keep = logits >= threshold
    if bool((keep.sum(dim=-1) > keep_count).any()):  # more ties at the threshold than room
        above = logits > threshold
        ties = keep & ~above
        room = keep_count[:, None] - above.sum(dim=-1, keepdim=True)  # tied tokens to keep
        keep = above | (ties & (ties.cumsum(dim=-1) <= room))
    return logits.masked_fill(~keep, float("-inf"))


def choose_tokens(
    logits: torch.Tensor,
    settings: RowSettings,
    generators: Sequence[torch.Generator | None],
    *,
    seen: torch.Tensor | None,
    counts: torch.Tensor | None,
) -> Choice:
    """Pick one token per row.

    logits: (B, V) float32 raw model logits (ids the tokenizer cannot decode already -inf);
    generators: one per row (None for greedy rows); seen: (B, V) bool prompt+completion tokens,
    needed when a row uses the repetition penalty; counts: (B, V) completion token counts,
    needed when a row uses frequency/presence penalties.
    """
    processed = logits
    if settings.bias is not None:
        processed = processed + settings.bias
    if settings.uses_repetition:
        if seen is None:
            raise ValueError("a row uses the repetition penalty but no seen-token mask was given")
        processed = apply_repetition_penalty(processed, seen, settings.repetition)
    if settings.uses_counts:
        if counts is None:
            raise ValueError("a row uses frequency/presence penalties but no counts were given")
        processed = apply_frequency_presence_penalties(
            processed, counts, settings.frequency, settings.presence
        )
    if settings.uses_temperature:
        processed = apply_temperature(processed, settings.scale)
    if settings.uses_top_k:
        processed = top_k_filter(processed, settings.top_k)
    if settings.uses_top_p:
        processed = nucleus_filter(processed, settings.top_p)

    greedy = settings.greedy
    sampled = [row for row, is_greedy in enumerate(greedy) if not is_greedy]
    if any(generators[row] is None for row in sampled):
        raise ValueError("every sampled row needs a generator")
    if len(sampled) == len(greedy):
        tokens = sample_from_logits(processed, generators)  # (B,)
    else:
        tokens = greedy_tokens(processed)  # (B,) right for greedy rows
        if sampled:
            index = torch.tensor(sampled, device=logits.device)
            row_generators = [generators[row] for row in sampled]
            tokens[index] = sample_from_logits(processed[index], row_generators)

    # Logprobs of the raw logits at each row's temperature (1 for greedy rows).
    scaled = logits / settings.scale[:, None] if settings.uses_temperature else logits
    normalizer = scaled.logsumexp(dim=-1, keepdim=True)  # (B, 1)
    chosen = (scaled.gather(-1, tokens[:, None]) - normalizer)[:, 0]
    top_k = max(settings.top_logprobs, default=0)
    top_ids: torch.Tensor | None = None
    top_values: torch.Tensor | None = None
    if top_k > 0:
        top = scaled.topk(min(top_k, scaled.shape[-1]), dim=-1)
        top_ids, top_values = top.indices, top.values - normalizer
    return Choice(tokens=tokens, logprobs=chosen, top_ids=top_ids, top_logprobs=top_values)
