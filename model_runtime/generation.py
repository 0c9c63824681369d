"""Batched, KV-cached, seeded generation from a PaLM policy, and a streaming variant.

How a batch runs: the prompts are left-padded to one length (pad keys masked out, per-row rotary
positions starting at 0 on each row's first real token) and prefilled in one forward pass; each
prompt's cache is then repeated for its ``n`` completions, and every step feeds one token per
unfinished row. Finished rows leave the batch (their cache rows are dropped).

Rules a caller can rely on:

- **Seeds.** Completion j of a prompt draws from its own ``torch.Generator`` seeded with
  :func:`completion_seed` (``params.seed`` itself for j = 0), and each row takes exactly one
  uniform per step from it. So the same seed gives the same output, and a prompt gives the same
  completions alone or inside a batch (up to float rounding of batched matmuls, which can only
  matter at a near-tie). ``seed=None`` draws fresh seeds.
- **Logprobs** are ``log_softmax(logits / temperature)`` of the model's raw logits at the chosen
  token (temperature 0 counts as 1): the model's own distribution at that temperature, before
  penalties, top-k and top-p, so they can be compared across sampling settings.
- **Penalties** skip the tokenizer's control ids (the prompt's own ``<|end|>`` must not make
  the model less likely to end its turn). The repetition penalty covers prompt and completion
  tokens, the frequency and presence penalties completion tokens only (as in vLLM).
- **Stopping.** ``finish_reason`` is "stop" when the model emits ``tokenizer.end_id``,
  ``tokenizer.eos_id`` or one of ``params.stop_token_ids`` (that token is the last of
  ``token_ids``, with its logprob, and adds no text), or when a stop string appears (text cut
  as in :mod:`model_runtime.stopping`: ``token_ids`` keeps the tokens whose text starts before
  the cut, including one that straddles it). It is "length" after ``max_new_tokens`` tokens or
  when prompt + completion fill the model's ``max_seq_len``. In every case ``text`` is a prefix
  of ``tokenizer.decode(token_ids)``, equal to it unless a stop string or a non-control stop
  token was cut off, and ``len(logprobs) == len(token_ids) == completion_tokens``.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from model_runtime.palm import KVCache, PaLM
from model_runtime.sampling import (
    SamplingParams,
    greedy_tokens,
    process_logits,
    sample_from_logits,
    token_counts,
)
from model_runtime.stopping import CompletionText

FinishReason = Literal["stop", "length"]

_MASK64 = 2**64 - 1


class TextDecoder(Protocol):
    """Streams text from ids without splitting a multi-byte character."""

    def push(self, token_id: int) -> str: ...

    def flush(self) -> str: ...


class GenerationTokenizer(Protocol):
    """What generation needs from a tokenizer (``ChatTokenizer`` has all of it)."""

    @property
    def vocab_size(self) -> int: ...

    pad_id: int
    eos_id: int
    end_id: int
    control_ids: frozenset[int]
    never_generated_ids: frozenset[int]

    def incremental_decoder(self) -> TextDecoder: ...


@dataclass(frozen=True)
class GenerationResult:
    """One completion. ``token_ids`` and ``logprobs`` have ``completion_tokens`` entries each;
    ``text`` follows the rules in the module docstring."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def completion_seed(seed: int, index: int) -> int:
    """Seed of completion ``index`` of a prompt: ``seed`` for index 0, then a SplitMix64 mix of
    (seed, index), so completions of one request never share a stream with the next seed."""
    if index == 0:
        return seed
    z = (seed + index * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1  # 63 bits: a valid manual_seed on every device


def generate(
    model: PaLM,
    tokenizer: GenerationTokenizer,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams,
    *,
    device: str | torch.device | None = None,
) -> list[GenerationResult]:
    """Complete each prompt (token ids) ``params.n`` times.

    Returns ``len(prompts) * params.n`` results grouped by prompt: completion j of prompt i is
    at ``i * n + j``. ``device`` defaults to the model's. Raises ValueError for an empty prompt,
    an id outside the vocabulary, or a prompt that leaves no room in ``max_seq_len``.
    """
    batch = _BatchGeneration(model, tokenizer, prompts, params, device=device)
    while not batch.done:
        batch.step()
    return batch.results()


class GenerationStream:
    """Iterator of the text pieces of one completion, as they become final.

    Pieces never split a character and never show text that a stop string later cuts; joined,
    they equal ``result.text``. ``result`` is available once the iterator is exhausted.
    """

    def __init__(self, batch: _BatchGeneration) -> None:
        self._batch = batch
        self._result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces()

    def _pieces(self) -> Iterator[str]:
        batch = self._batch
        while not batch.done:
            batch.step()
            piece = batch.take_stream_piece(0)
            if piece:
                yield piece
        self._result = batch.results()[0]

    @property
    def result(self) -> GenerationResult:
        """The finished completion; RuntimeError before the stream is exhausted."""
        if self._result is None:
            raise RuntimeError("the stream has not finished yet")
        return self._result


def stream_generate(
    model: PaLM,
    tokenizer: GenerationTokenizer,
    prompt: Sequence[int],
    params: SamplingParams,
    *,
    device: str | torch.device | None = None,
) -> GenerationStream:
    """Complete one prompt, streaming text pieces (``params.n`` must be 1).

    The pieces and ``.result`` are exactly what :func:`generate` returns for this prompt with
    the same params and seed.
    """
    if params.n != 1:
        raise ValueError(f"stream_generate makes one completion; got n={params.n}")
    return GenerationStream(_BatchGeneration(model, tokenizer, [prompt], params, device=device))


@dataclass
class _Completion:
    """Bookkeeping of one completion row."""

    prompt_tokens: int
    generator: torch.Generator
    decoder: TextDecoder
    text: CompletionText
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None = None
    cut_by_stop_string: bool = False

    def result(self) -> GenerationResult:
        if self.finish_reason is None:
            raise RuntimeError("completion has not finished")
        kept = self.text.kept_tokens if self.cut_by_stop_string else len(self.token_ids)
        return GenerationResult(
            text=self.text.text,
            token_ids=tuple(self.token_ids[:kept]),
            logprobs=tuple(self.logprobs[:kept]),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=kept,
        )


class _BatchGeneration:
    """State of one generate() call: prefill in the constructor, one token per row per step."""

    def __init__(
        self,
        model: PaLM,
        tokenizer: GenerationTokenizer,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        *,
        device: str | torch.device | None,
    ) -> None:
        if not prompts:
            raise ValueError("generate needs at least one prompt")
        config = model.config
        self._model = model
        self._params = params
        self._device = torch.device(device) if device is not None else model.embed.weight.device
        # Never emit an id the tokenizer cannot decode (a model vocab padded past the tokenizer's).
        self._vocab = min(config.vocab_size, tokenizer.vocab_size)
        self._max_seq_len = config.max_seq_len
        self._stop_ids = frozenset({tokenizer.end_id, tokenizer.eos_id, *params.stop_token_ids})
        self._control_ids = sorted(i for i in tokenizer.control_ids if i < config.vocab_size)
        self._never_generated = sorted(
            i for i in tokenizer.never_generated_ids if i < config.vocab_size
        )
        for index, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"prompt {index} is empty")
            if len(prompt) >= config.max_seq_len:
                raise ValueError(
                    f"prompt {index} has {len(prompt)} tokens; the model's context is "
                    f"{config.max_seq_len}, so a prompt may have at most {config.max_seq_len - 1}"
                )
            bad = [t for t in prompt if not 0 <= t < self._vocab]
            if bad:
                raise ValueError(f"prompt {index} has ids outside [0, {self._vocab}): {bad[:5]}")

        n = params.n
        self._rows: list[_Completion] = []
        for prompt in prompts:
            request_seed = params.seed if params.seed is not None else secrets.randbits(63)
            for j in range(n):
                generator = torch.Generator(device=self._device)
                generator.manual_seed(completion_seed(request_seed, j))
                self._rows.append(
                    _Completion(
                        prompt_tokens=len(prompt),
                        generator=generator,
                        decoder=tokenizer.incremental_decoder(),
                        text=CompletionText(params.stop_strings),
                        token_ids=[],
                        logprobs=[],
                    )
                )
        self._active = list(range(len(self._rows)))  # row index of each batch position
        self._prefill(prompts, tokenizer.pad_id)

    @property
    def done(self) -> bool:
        return not self._active

    def take_stream_piece(self, row: int) -> str:
        """New final text of completion ``row`` since the last call."""
        return self._rows[row].text.take_stream_piece()

    def results(self) -> list[GenerationResult]:
        return [row.result() for row in self._rows]

    @torch.inference_mode()
    def _prefill(self, prompts: Sequence[Sequence[int]], pad_id: int) -> None:
        model, device, n = self._model, self._device, self._params.n
        lengths = torch.tensor([len(p) for p in prompts], device=device)  # (B,)
        width = int(lengths.max())
        tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long, device=device)
        for index, prompt in enumerate(prompts):
            tokens[index, width - len(prompt) :] = torch.tensor(list(prompt), device=device)
        columns = torch.arange(width, device=device)[None]  # (1, P)
        offsets = (width - lengths)[:, None]  # (B, 1) pads before each row's first token
        mask = columns >= offsets  # (B, P) True on real tokens
        positions = (columns - offsets).clamp(min=0)  # (B, P)
        capacity = min(width + self._params.max_new_tokens, self._max_seq_len)
        cache = KVCache.empty(
            model.config,
            len(prompts),
            device=device,
            dtype=model.embed.weight.dtype,
            capacity=capacity,
        )
        padded = bool((lengths != width).any())
        # Only the last position's logits are needed: its hidden state alone (the last layer
        # and the (B, P, V) output projection run for that position only).
        hidden = model.hidden_states(
            tokens,
            cache=cache,
            attention_mask=mask if padded else None,
            positions=positions,
            last_only=True,
        )  # (B, 1, D)
        logits = model.logits(hidden[:, -1])  # (B, V)

        self._cache = cache.repeat_interleave(n) if n > 1 else cache
        self._logits = logits.repeat_interleave(n, dim=0)  # (B*n, V)
        # whether any row has pad keys; the mask is kept up to date only while one has
        self._padded = padded
        self._mask = mask.repeat_interleave(n, dim=0)  # (B*n, S)
        self._next_position = lengths.repeat_interleave(n)  # (B*n,)
        self._seen: torch.Tensor | None = None
        self._counts: torch.Tensor | None = None
        params = self._params
        if params.repetition_penalty != 1.0:
            seen = token_counts(tokens, model.config.vocab_size, mask=mask) > 0  # (B, V)
            self._seen = self._without_control(seen).repeat_interleave(n, dim=0)
        if params.frequency_penalty != 0.0 or params.presence_penalty != 0.0:
            self._counts = torch.zeros(len(self._rows), model.config.vocab_size, device=device)

    def _without_control(self, per_token: torch.Tensor) -> torch.Tensor:
        """Zero the control-id columns of a (B, V) tensor."""
        if self._control_ids:
            per_token[:, self._control_ids] = 0
        return per_token

    @torch.inference_mode()
    def step(self) -> None:
        """Choose one token for every unfinished row, then feed the rows that go on."""
        params = self._params
        logits = self._logits  # (B, V) float32 raw model logits
        logits = logits.clone()
        logits[:, self._vocab :] = float("-inf")
        # Role and padding tokens are never written by the model (see ChatTokenizer).
        logits[:, self._never_generated] = float("-inf")
        processed = process_logits(logits, params, seen=self._seen, completion_counts=self._counts)
        if params.greedy:
            chosen = greedy_tokens(processed)
        else:
            generators = [self._rows[row].generator for row in self._active]
            chosen = sample_from_logits(processed, generators)  # (B,)
        if params.temperature > 0 and params.temperature != 1.0:
            logits = logits / params.temperature
        logprobs = logits.log_softmax(dim=-1).gather(-1, chosen[:, None])[:, 0]

        going_on: list[int] = []
        for position, (token, logprob) in enumerate(
            zip(chosen.tolist(), logprobs.tolist(), strict=True)
        ):
            if self._advance_row(self._active[position], token, logprob):
                going_on.append(position)

        if self._seen is not None:
            self._seen.scatter_(1, chosen[:, None], True)
            self._without_control(self._seen)
        if self._counts is not None:
            self._counts.scatter_add_(1, chosen[:, None], torch.ones_like(chosen[:, None]).float())
            self._without_control(self._counts)
        if len(going_on) < len(self._active):
            self._keep(going_on)
        if not self._active:
            return
        if going_on != list(range(len(chosen))):
            chosen = chosen[torch.tensor(going_on, device=chosen.device)]
        self._feed(chosen)

    def _advance_row(self, row_index: int, token: int, logprob: float) -> bool:
        """Record ``token`` for a row; return True if the row goes on."""
        row = self._rows[row_index]
        row.token_ids.append(token)
        row.logprobs.append(logprob)
        if token in self._stop_ids:
            self._finish(row, "stop")
            return False
        if row.text.add_token(row.decoder.push(token)):
            row.cut_by_stop_string = True
            row.finish_reason = "stop"
            return False
        generated = len(row.token_ids)
        if generated >= self._params.max_new_tokens or (
            row.prompt_tokens + generated >= self._max_seq_len
        ):
            self._finish(row, "length")
            return False
        return True

    @staticmethod
    def _finish(row: _Completion, reason: FinishReason) -> None:
        """End a row that no stop string ended: flush held bytes (an unfinished character
        becomes U+FFFD, as in a full decode) and stop holding text back."""
        if row.text.add_tail(row.decoder.flush()):
            row.cut_by_stop_string = True  # tokens from the cut on (a stop token too) go
            reason = "stop"
        row.text.close()
        row.finish_reason = reason

    def _keep(self, positions: list[int]) -> None:
        """Drop finished rows from the batch, keeping batch ``positions`` in order."""
        self._active = [self._active[p] for p in positions]
        if not positions:
            return
        index = torch.tensor(positions, device=self._device)
        self._cache = self._cache.select(index)
        if self._padded:
            self._mask = self._mask[index]
            self._padded = not bool(self._mask.all())
        self._next_position = self._next_position[index]
        if self._seen is not None:
            self._seen = self._seen[index]
        if self._counts is not None:
            self._counts = self._counts[index]

    def _feed(self, tokens: torch.Tensor) -> None:
        """Run the model on one new token per active row: tokens (B,) -> self._logits (B, V)."""
        if self._padded:  # rows only leave the batch: once no pad key is held, none ever is
            ones = torch.ones(tokens.shape[0], 1, dtype=torch.bool, device=self._device)
            self._mask = torch.cat([self._mask, ones], dim=1)  # (B, S+1)
        logits = self._model(
            tokens[:, None],
            cache=self._cache,
            attention_mask=self._mask if self._padded else None,
            positions=self._next_position[:, None],
        )  # (B, 1, V)
        self._logits = logits[:, -1]
        self._next_position = self._next_position + 1
