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

import torch

from model_runtime.sampling import (
    SamplingParams,
    apply_frequency_presence_penalties,
    apply_repetition_penalty,
    apply_temperature,
    greedy_tokens,
    sample_from_logits,
    top_k_filter,
    top_p_filter,
)

# Below this temperature a row is greedy: dividing float32 logits by less could overflow, and
# the distribution is one-hot up to exact ties anyway. Greedy rows report logprobs at T = 1.
MIN_TEMPERATURE = 1e-6
MAX_TOP_K = 2**31 - 1  # any k past the vocabulary is "off"; keeps the tensor in range
MIN_TOP_P = 1e-30  # a smaller top_p rounds to 0 in float32; any p this small keeps one token


@dataclass(frozen=True)
class RowSettings:
    """Sampling settings of B rows as (B,) tensors, plus which processors any row uses."""

    temperature: torch.Tensor  # (B,) float32; 0 = greedy
    top_k: torch.Tensor  # (B,) long; 0 = off (and for greedy rows)
    top_p: torch.Tensor  # (B,) float32; 1 = off (and for greedy rows)
    repetition: torch.Tensor  # (B,) float32; 1 = off
    frequency: torch.Tensor  # (B,) float32
    presence: torch.Tensor  # (B,) float32
    greedy: tuple[bool, ...]
    top_logprobs: tuple[int, ...]
    bias: torch.Tensor | None = None  # (B, V) float32 logit bias; None when no row has one

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
        return cls(
            temperature=floats(
                [0.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)]
            ),
            top_k=torch.tensor(
                [0 if g else min(p.top_k, MAX_TOP_K) for p, g in zip(params, greedy, strict=True)],
                dtype=torch.long,
                device=device,
            ),
            top_p=floats(
                [1.0 if g else max(p.top_p, MIN_TOP_P) for p, g in zip(params, greedy, strict=True)]
            ),
            repetition=floats([p.repetition_penalty for p in params]),
            frequency=floats([p.frequency_penalty for p in params]),
            presence=floats([p.presence_penalty for p in params]),
            greedy=greedy,
            top_logprobs=tuple(top_logprobs),
            bias=_bias_rows(logit_bias, vocab_size, device),
        )

    @property
    def uses_repetition(self) -> bool:
        return bool((self.repetition != 1.0).any())

    @property
    def uses_counts(self) -> bool:
        return bool(((self.frequency != 0.0) | (self.presence != 0.0)).any())


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
    greedy = settings.greedy
    if not all(greedy):
        temperature = torch.where(
            settings.temperature == 0, torch.ones_like(settings.temperature), settings.temperature
        )
        if bool((temperature != 1.0).any()):
            processed = apply_temperature(processed, temperature)
        if bool((settings.top_k > 0).any()):
            processed = top_k_filter(processed, settings.top_k)
        if bool((settings.top_p < 1.0).any()):
            processed = top_p_filter(processed, settings.top_p)

    tokens = greedy_tokens(processed)  # (B,) right for greedy rows; sampled rows overwritten
    sampled = [row for row, is_greedy in enumerate(greedy) if not is_greedy]
    if sampled:
        index = torch.tensor(sampled, device=logits.device)
        row_generators = [generators[row] for row in sampled]
        if any(gen is None for gen in row_generators):
            raise ValueError("every sampled row needs a generator")
        tokens[index] = sample_from_logits(processed[index], row_generators)

    scale = torch.where(
        settings.temperature == 0, torch.ones_like(settings.temperature), settings.temperature
    )
    log_probs = (logits / scale[:, None]).log_softmax(dim=-1)  # (B, V)
    chosen = log_probs.gather(-1, tokens[:, None])[:, 0]
    top_k = max(settings.top_logprobs, default=0)
    top_ids: torch.Tensor | None = None
    top_values: torch.Tensor | None = None
    if top_k > 0:
        top = log_probs.topk(min(top_k, log_probs.shape[-1]), dim=-1)
        top_ids, top_values = top.indices, top.values
    return Choice(tokens=tokens, logprobs=chosen, top_ids=top_ids, top_logprobs=top_values)
