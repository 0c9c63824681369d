"""Sampling parameters and pure logits processors.

Every processor takes logits of shape (B, V) (float) and returns a new tensor of the same shape;
nothing is modified in place. Scalar settings may be given as a Python number (same for every
row) or as a tensor of shape (B,) (one value per row, for an engine that batches requests with
different settings).

Order used by :func:`process_logits` (the order vLLM and HF use):
repetition penalty -> frequency/presence penalties -> temperature -> top-k -> top-p.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

PENALTY_RANGE = (-2.0, 2.0)  # OpenAI's range for frequency and presence penalties
MAX_SEED = 2**63 - 1
# The chat app's nucleus: it keeps a small model out of its long tail of unlikely tokens.
CHAT_TOP_P = 0.95
CHAT_TEMPERATURE = 0.7  # ChatLimits.default_temperature: what a new conversation samples at
# The chat app's frequency penalty (answer tokens only, OpenAI-style): on the base policy's
# held-out questions it cut answers caught in a loop from 12 to 2 of 120 and left as many on
# topic (a repetition penalty, which also counts the question's tokens, halved those).
CHAT_FREQUENCY_PENALTY = 0.3


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop.

    temperature: 0 means greedy (argmax of the penalised logits); otherwise logits are divided
        by it before top-k/top-p and sampling.
    top_k: keep the k highest logits (0 = off). top_p: nucleus mass in (0, 1] (1 = off).
    repetition_penalty: CTRL-style (Keskar et al. 2019) on every token seen in the prompt or the
        completion: positive logits are divided by it, negative ones multiplied (1 = off).
    frequency_penalty / presence_penalty: OpenAI-style, in [-2, 2], on completion tokens only:
        logit -= frequency * count + presence * (count > 0).
    max_new_tokens: at most this many completion tokens (finish reason "length").
    stop_token_ids: extra token ids that end a completion (the tokenizer's end/eos always do).
    stop_strings: the completion text is cut just before the first occurrence of any of them.
    seed: same seed, same output; None draws a fresh seed per completion.
    n: completions per prompt.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    max_new_tokens: int = 128
    stop_token_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1

    def __post_init__(self) -> None:
        # Accept lists from callers (JSON, argparse) but store tuples so the params stay hashable.
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "stop_strings", tuple(self.stop_strings))
        _check_number("temperature", self.temperature)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        _check_int("top_k", self.top_k)
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_number("repetition_penalty", self.repetition_penalty)
        if self.repetition_penalty <= 0:
            raise ValueError(
                f"repetition_penalty must be > 0 (1 = off), got {self.repetition_penalty}"
            )
        low, high = PENALTY_RANGE
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            _check_number(name, value)
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
        _check_int("max_new_tokens", self.max_new_tokens)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        for token_id in self.stop_token_ids:
            _check_int("stop_token_ids item", token_id)
            if token_id < 0:
                raise ValueError(f"stop_token_ids must be >= 0, got {token_id}")
        for stop in self.stop_strings:
            if not isinstance(stop, str) or not stop:
                raise ValueError(f"stop_strings must be non-empty strings, got {stop!r}")
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not 0 <= self.seed <= MAX_SEED:
                raise ValueError(f"seed must be in [0, 2**63 - 1], got {self.seed}")
        _check_int("n", self.n)
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")

    @property
    def greedy(self) -> bool:
        """True when tokens are chosen by argmax (temperature 0)."""
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        data["stop_token_ids"] = list(self.stop_token_ids)
        data["stop_strings"] = list(self.stop_strings)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SamplingParams:
        """Inverse of :meth:`to_dict`; unknown keys are a ValueError, missing keys take defaults."""
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown sampling parameters: {', '.join(unknown)}")
        return cls(**dict(data))


def _check_number(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")


def _check_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


def _per_row(value: float | torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) setting as a (B, 1) tensor on the logits' device and dtype."""
    if isinstance(value, torch.Tensor):
        if value.shape != (logits.shape[0],):
            raise ValueError(f"per-row setting must have shape ({logits.shape[0]},)")
        return value.to(device=logits.device, dtype=logits.dtype).unsqueeze(-1)
    return torch.full((logits.shape[0], 1), float(value), device=logits.device, dtype=logits.dtype)


def token_counts(
    token_ids: torch.Tensor, vocab_size: int, *, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Count token occurrences per row.

    token_ids: (B, L) long; mask: (B, L) bool, False entries (padding) are not counted.
    Returns (B, V) float32 counts.
    """
    weights = torch.ones(token_ids.shape, dtype=torch.float32, device=token_ids.device)
    if mask is not None:
        weights = weights * mask.to(torch.float32)
    counts = torch.zeros(token_ids.shape[0], vocab_size, device=token_ids.device)
    return counts.scatter_add_(1, token_ids, weights)


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float | torch.Tensor
) -> torch.Tensor:
    """CTRL repetition penalty (Keskar et al. 2019, as in HF and vLLM).

    logits: (B, V); seen: (B, V) bool, True for tokens already in the prompt or completion.
    For seen tokens a positive logit is divided by ``penalty`` and a negative one multiplied by
    it, so penalty > 1 always makes a seen token less likely. Returns (B, V).
    """
    pen = _per_row(penalty, logits)
    penalised = torch.where(logits > 0, logits / pen, logits * pen)
    return torch.where(seen, penalised, logits)


def apply_frequency_presence_penalties(
    logits: torch.Tensor,
    counts: torch.Tensor,
    frequency: float | torch.Tensor,
    presence: float | torch.Tensor,
) -> torch.Tensor:
    """OpenAI frequency and presence penalties.

    logits: (B, V); counts: (B, V) how often each token occurs in the completion so far.
    Returns logits - frequency * counts - presence * (counts > 0), shape (B, V).
    """
    freq = _per_row(frequency, logits)
    pres = _per_row(presence, logits)
    counts = counts.to(logits.dtype)
    return logits - freq * counts - pres * (counts > 0).to(logits.dtype)


def apply_temperature(logits: torch.Tensor, temperature: float | torch.Tensor) -> torch.Tensor:
    """Divide logits (B, V) by the temperature. Rows with temperature 0 (greedy) are unchanged:
    their token is the argmax either way."""
    temp = _per_row(temperature, logits)
    if bool((temp < 0).any()):
        raise ValueError("temperature must be >= 0")
    return logits / torch.where(temp == 0, torch.ones_like(temp), temp)


def top_k_filter(logits: torch.Tensor, k: int | torch.Tensor) -> torch.Tensor:
    """Keep each row's k highest logits, set the rest to -inf. k = 0 (or k >= V) is off.

    Ties with the k-th highest logit are all kept, so a row may keep more than k tokens.
    logits: (B, V); k: int or (B,) long. Returns (B, V).
    """
    vocab = logits.shape[-1]
    if isinstance(k, torch.Tensor):
        ks = k.to(device=logits.device, dtype=torch.long)
    else:
        ks = torch.full((logits.shape[0],), int(k), device=logits.device, dtype=torch.long)
    if bool((ks < 0).any()):
        raise ValueError("top_k must be >= 0")
    ks = torch.where((ks == 0) | (ks > vocab), torch.full_like(ks, vocab), ks)
    sorted_logits = logits.sort(dim=-1, descending=True).values
    threshold = sorted_logits.gather(-1, (ks - 1).unsqueeze(-1))  # (B, 1) k-th highest
    return logits.masked_fill(logits < threshold, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | torch.Tensor) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2019): keep the smallest set of highest-probability
    tokens whose total probability reaches p; set the rest to -inf.

    A token is kept when the probability mass of the tokens ranked above it is < p, so the
    most likely token is always kept. p = 1 is off. logits: (B, V). Returns (B, V).
    """
    ps = _per_row(p, logits)
    if bool(((ps <= 0) | (ps > 1)).any()):
        raise ValueError("top_p must be in (0, 1]")
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    probs = sorted_logits.float().softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V) mass ranked strictly above each token
    remove_sorted = mass_before >= ps.float()
    remove_sorted[:, 0] = False
    # p = 1 keeps everything, even tokens whose rounded mass_before reaches 1.0
    remove_sorted = torch.where(ps >= 1.0, torch.zeros_like(remove_sorted), remove_sorted)
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def process_logits(
    logits: torch.Tensor,
    params: SamplingParams,
    *,
    seen: torch.Tensor | None = None,
    completion_counts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Apply every processor that ``params`` turns on, in the module's documented order.

    logits: (B, V) float; seen: (B, V) bool tokens in prompt or completion (for the repetition
    penalty); completion_counts: (B, V) counts of completion tokens (frequency/presence).
    Greedy params skip temperature, top-k and top-p (they cannot change the argmax).
    Returns (B, V).
    """
    if params.repetition_penalty != 1.0:
        if seen is None:
            raise ValueError("repetition_penalty needs the seen-token mask")
        logits = apply_repetition_penalty(logits, seen, params.repetition_penalty)
    if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
        if completion_counts is None:
            raise ValueError("frequency/presence penalties need completion token counts")
        logits = apply_frequency_presence_penalties(
            logits, completion_counts, params.frequency_penalty, params.presence_penalty
        )
    if params.greedy:
        return logits
    if params.temperature != 1.0:
        logits = apply_temperature(logits, params.temperature)
    if params.top_k > 0:
        logits = top_k_filter(logits, params.top_k)
    if params.top_p < 1.0:
        logits = top_p_filter(logits, params.top_p)
    return logits


def sample_from_logits(
    logits: torch.Tensor, generators: Sequence[torch.Generator | None]
) -> torch.Tensor:
    """Draw one token per row from softmax(logits), row i using ``generators[i]`` only.

    Each row takes exactly one uniform draw from its own generator and inverts the row's CDF,
    so a row's token depends on its logits and its generator alone, never on which other rows
    share the batch. logits: (B, V), -inf entries are never drawn. Returns (B,) long.
    """
    if len(generators) != logits.shape[0]:
        raise ValueError(f"need one generator per row: {len(generators)} for {logits.shape[0]}")
    uniforms = torch.stack(
        [
            torch.rand((), generator=gen, device=logits.device, dtype=torch.float64)
            for gen in generators
        ]
    )  # (B,) in [0, 1)
    probs = logits.double().softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    # Scale the draw by the row's total so float rounding in the cumsum can't overshoot it.
    targets = (uniforms * cdf[:, -1]).unsqueeze(-1)
    chosen = torch.searchsorted(cdf, targets, right=True).squeeze(-1)
    return chosen.clamp_(max=logits.shape[-1] - 1)


def greedy_tokens(logits: torch.Tensor) -> torch.Tensor:
    """Argmax per row (lowest id on ties). logits: (B, V). Returns (B,) long."""
    return logits.argmax(dim=-1)


def chat_sampling(
    *, max_new_tokens: int, temperature: float = CHAT_TEMPERATURE, seed: int | None = None
) -> SamplingParams:
    """How the chat app samples an answer (both inference paths, the model card's samples and
    topic check): its nucleus when it samples at all, and its frequency penalty."""
    return SamplingParams(
        temperature=temperature,
        top_p=CHAT_TOP_P if temperature > 0 else 1.0,
        frequency_penalty=CHAT_FREQUENCY_PENALTY,
        max_new_tokens=max_new_tokens,
        seed=seed,
    )
