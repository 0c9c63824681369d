"""The running batch of one model version: continuous batching over a padded KV cache.

Layout. The B running sequences share one :class:`KVCache` of length S, right-aligned: row r's
L_r cached tokens sit in the last L_r columns, the columns before them are padding that the
(B, S) attention mask hides. Every decode step appends one column for all rows, so the
alignment holds. Rotary positions are per row (0 at each row's first token), so a row computes
the same attention whatever padding its neighbours impose.

Joining and leaving. The requests admitted in one scheduler turn are prefilled together in
their own small batch, left-padded the same way (so already right-aligned), in chunks of at
most ``max_prefill_tokens`` padded tokens, shortest prompts first; a request that arrives alone
is prefilled alone. Between steps, finished and cancelled rows are dropped and prefilled rows
merged in one re-layout: a new cache of width S' = max L_r is filled by copying each segment's
(the running batch's, each prefill chunk's) surviving rows into its last columns, which frees
the leavers' memory and trims padding nobody needs any more.

A row's output therefore depends on its prompt, parameters and seed only, up to float rounding
of batched matmuls over masked padding (the per-row sampling in ``sampler.py`` is exact).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from model_runtime.engine.request import (
    CompletionResult,
    EngineRequest,
    FinishReason,
    RequestHandle,
    TokenLogprob,
    wake_readers,
)
from model_runtime.engine.sampler import Choice, RowSettings, choose_tokens
from model_runtime.engine.versions import LoadedVersion
from model_runtime.incremental_decode import IncrementalDecoder
from model_runtime.palm import KVCache
from model_runtime.sampling import token_counts
from model_runtime.stopping import CompletionText


@dataclass
class Row:
    """One running sequence."""

    request: EngineRequest
    generator: torch.Generator | None  # None for greedy requests
    decoder: IncrementalDecoder
    text: CompletionText
    length: int  # tokens held in the cache for this row (prompt + fed completion tokens)
    stop_ids: frozenset[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top: list[tuple[TokenLogprob, ...]] = field(default_factory=list)
    finish_reason: FinishReason | None = None
    cut_by_stop_string: bool = False

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class _Segment:
    """Rows with a right-aligned cache of their own: the running batch, or a prefill chunk."""

    rows: list[Row]
    cache: KVCache  # (b, S) keys/values, row r's tokens in its last L_r columns
    mask: torch.Tensor  # (b, S) True on real tokens
    logits: torch.Tensor  # (b, V) next-token logits
    seen: torch.Tensor | None = None  # (b, V) bool, when some row uses repetition penalty
    counts: torch.Tensor | None = None  # (b, V) float, when some row uses freq/presence


class DecodeBatch:
    """Running sequences of one :class:`LoadedVersion`; driven by the scheduler thread only."""

    def __init__(
        self, version: LoadedVersion, *, kv_headroom: int = 64, max_prefill_tokens: int = 4096
    ) -> None:
        self.version = version
        self._headroom = kv_headroom
        self._max_prefill_tokens = max_prefill_tokens
        self._running: _Segment | None = None
        self._joining: list[_Segment] = []
        self._settings: RowSettings | None = None
        self._touched: list[RequestHandle] = []  # handles with news for their readers
        config = version.model.config
        self._max_seq_len = config.max_seq_len
        # V: ids both the model and the tokenizer know. Logits are cut to them, so an id the
        # tokenizer cannot decode (a model vocab padded past it) is never drawn or sorted.
        self._vocab = version.vocab
        tokenizer = version.tokenizer
        self._control_ids = sorted(i for i in tokenizer.control_ids if i < self._vocab)
        self._base_stop_ids = frozenset({tokenizer.end_id, tokenizer.eos_id})
        self._never_generated = sorted(i for i in tokenizer.never_generated_ids if i < self._vocab)

    def __len__(self) -> int:
        """Live sequences: running and not finished, plus those prefilled and about to join."""
        return sum(1 for row in self.rows if not row.finished)

    @property
    def rows(self) -> list[Row]:
        running = self._running.rows if self._running is not None else []
        return [*running, *(row for segment in self._joining for row in segment.rows)]

    # --- joining ------------------------------------------------------------------------------

    def prefill(self, requests: Sequence[EngineRequest]) -> list[tuple[EngineRequest, Exception]]:
        """Run the model over the prompts (validated for this version by the engine); the rows
        join at the next step. Shortest prompts first, in chunks of at most
        ``max_prefill_tokens`` padded tokens (a single longer prompt goes alone). Returns the
        requests of chunks whose forward pass raised, with the error, for the caller to fail."""
        chunks: list[list[EngineRequest]] = [[]]
        for request in sorted(requests, key=lambda r: len(r.prompt)):
            width = len(request.prompt)  # the longest so far: sorted
            if chunks[-1] and (len(chunks[-1]) + 1) * width > self._max_prefill_tokens:
                chunks.append([])
            chunks[-1].append(request)
        failed: list[tuple[EngineRequest, Exception]] = []
        for chunk in chunks:
            if not chunk:
                continue
            try:
                self._prefill_chunk(chunk)
            except (RuntimeError, ValueError) as error:
                failed += [(request, error) for request in chunk]
        return failed

    def _prefill_chunk(self, requests: list[EngineRequest]) -> None:
        version = self.version
        model, device = version.model, version.device
        lengths = [len(request.prompt) for request in requests]
        width = max(lengths)
        tokens = torch.full(
            (len(requests), width), version.tokenizer.pad_id, dtype=torch.long, device=device
        )
        for index, request in enumerate(requests):
            tokens[index, width - lengths[index] :] = torch.tensor(request.prompt, device=device)
        offsets = torch.tensor([width - n for n in lengths], device=device)[:, None]  # (b, 1)
        columns = torch.arange(width, device=device)[None]  # (1, P)
        mask = columns >= offsets  # (b, P) True on real tokens
        positions = (columns - offsets).clamp(min=0)  # (b, P) 0 at each row's first token
        cache = KVCache.empty(
            model.config,
            len(requests),
            device=device,
            dtype=model.embed.weight.dtype,
            capacity=width,
        )
        # Only the last position's output is needed: its last layer runs for that position
        # alone, and the (b, P, V) projection is skipped.
        hidden = model.hidden_states(
            tokens, cache=cache, attention_mask=mask, positions=positions, last_only=True
        )  # (b, 1, D)
        logits = model.logits(hidden[:, -1])  # (b, V_model) float32
        rows = [self._new_row(request) for request in requests]
        segment = _Segment(rows=rows, cache=cache, mask=mask, logits=self._cut_vocab(logits))
        if any(r.params.repetition_penalty != 1.0 for r in requests):
            seen = token_counts(tokens, self._vocab, mask=mask) > 0  # (b, V)
            segment.seen = self._without_control(seen)
        if any(r.params.frequency_penalty or r.params.presence_penalty for r in requests):
            segment.counts = torch.zeros(len(requests), self._vocab, device=device)
        self._joining.append(segment)
        for request in requests:
            request.handle.version = version.info

    def _new_row(self, request: EngineRequest) -> Row:
        params = request.params
        generator: torch.Generator | None = None
        if not params.greedy:
            assert params.seed is not None
            generator = torch.Generator(device=self.version.device)
            generator.manual_seed(params.seed)
        return Row(
            request=request,
            generator=generator,
            decoder=self.version.tokenizer.incremental_decoder(),
            text=CompletionText(params.stop_strings),
            length=len(request.prompt),
            stop_ids=self._base_stop_ids | frozenset(params.stop_token_ids),
        )

    # --- one decode step --------------------------------------------------------------------

    def step(self) -> None:
        """End cancelled/expired rows, re-lay out the batch if its membership changed, choose one
        token per row, publish text, and feed the chosen tokens to the model. The readers of
        every stream that moved are woken together, before the model runs."""
        try:
            self._step()
        finally:
            touched, self._touched = self._touched, []
            wake_readers(touched)

    def _step(self) -> None:
        now = time.monotonic()
        for row in self.rows:
            if row.finished:
                continue
            if row.request.handle.cancelled:
                self._end(row, "cancelled")
            elif now > row.request.deadline:
                self._end(row, "timeout")
        running = self._running
        if self._joining or (running is not None and any(r.finished for r in running.rows)):
            self._relayout()
        running = self._running
        if running is None:
            return
        choice = self._choose(running)
        self._record(running, choice)
        touched, self._touched = self._touched, []
        wake_readers(touched)  # the streams read while the model runs
        if all(row.finished for row in running.rows):
            self._relayout()  # nothing to feed: free the cache now
            return
        self._feed(running, choice.tokens)

    def fail_all(self) -> list[EngineRequest]:
        """Drop every row (after a failed step); return their requests for the caller to fail."""
        requests = [row.request for row in self.rows if not row.finished]
        self._running, self._joining, self._settings = None, [], None
        return requests

    # --- internals --------------------------------------------------------------------------

    def _cut_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """(b, V_model) -> (b, V) logits of the ids the tokenizer can decode, with the ids a
        model must never write (role and padding tokens) at -inf."""
        if self._vocab < logits.shape[-1]:
            logits = logits[:, : self._vocab].contiguous()
        else:
            logits = logits.clone()
        logits[:, self._never_generated] = float("-inf")
        return logits

    def _without_control(self, per_token: torch.Tensor) -> torch.Tensor:
        """Zero the control-id columns of a (b, V) tensor (penalties never touch them)."""
        if self._control_ids:
            per_token[:, self._control_ids] = 0
        return per_token

    def _relayout(self) -> None:
        """New running batch = the surviving rows of the running batch, then of each prefill
        chunk, in a fresh right-aligned cache."""
        segments = [self._running] if self._running is not None else []
        segments += self._joining
        self._joining = []
        kept = [
            (seg, [i for i, row in enumerate(seg.rows) if not row.finished]) for seg in segments
        ]
        kept = [(seg, index) for seg, index in kept if index]
        rows = [seg.rows[i] for seg, index in kept for i in index]
        if not rows:
            self._running, self._settings = None, None
            return
        model = self.version.model
        config = model.config
        device, dtype = self.version.device, model.embed.weight.dtype
        width = max(row.length for row in rows)  # S'
        shape = (config.depth, len(rows), width + self._headroom, config.dim_head)
        keys = torch.zeros(shape, dtype=dtype, device=device)  # (depth, B', capacity, dh)
        values = torch.zeros(shape, dtype=dtype, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)  # (B', S')
        start = 0
        for seg, index in kept:
            stop = start + len(index)
            rows_index = torch.tensor(index, device=device)
            old_width = seg.cache.length
            span = min(old_width, width)  # every kept row's tokens lie in the last `span` columns
            for layer in range(config.depth):
                old_keys, old_values = seg.cache.layer(layer)  # (b, S, dh) views
                keys[layer, start:stop, width - span : width] = old_keys[
                    rows_index, old_width - span :
                ]
                values[layer, start:stop, width - span : width] = old_values[
                    rows_index, old_width - span :
                ]
            mask[start:stop, width - span :] = seg.mask[rows_index, old_width - span :]
            start = stop

        def gather(name: str, dtype: torch.dtype) -> torch.Tensor:
            parts = []
            for seg, index in kept:
                state = getattr(seg, name)
                if state is None:  # no row of that segment uses it: neutral settings ignore it
                    state = torch.zeros(len(seg.rows), self._vocab, dtype=dtype, device=device)
                parts.append(state[torch.tensor(index, device=device)])
            return torch.cat(parts, dim=0)

        params = [row.request.params for row in rows]
        self._settings = RowSettings.of(
            params,
            [row.request.top_logprobs for row in rows],
            device,
            logit_bias=[row.request.logit_bias for row in rows],
            vocab_size=self._vocab,
        )
        self._running = _Segment(
            rows=rows,
            cache=KVCache(keys, values, width),
            mask=mask,
            logits=torch.cat([seg.logits[torch.tensor(i, device=device)] for seg, i in kept]),
            seen=gather("seen", torch.bool) if self._settings.uses_repetition else None,
            counts=gather("counts", torch.float32) if self._settings.uses_counts else None,
        )

    def _choose(self, running: _Segment) -> Choice:
        assert self._settings is not None
        return choose_tokens(
            running.logits,
            self._settings,
            [row.generator for row in running.rows],
            seen=running.seen,
            counts=running.counts,
        )

    def _record(self, running: _Segment, choice: Choice) -> None:
        """Append each row's token, publish its new text, end rows that stop."""
        tokens = choice.tokens.tolist()
        logprobs = choice.logprobs.tolist()
        top_ids = choice.top_ids.tolist() if choice.top_ids is not None else None
        top_values = choice.top_logprobs.tolist() if choice.top_logprobs is not None else None
        for index, row in enumerate(running.rows):
            wanted = row.request.top_logprobs
            top: tuple[TokenLogprob, ...] = ()
            if wanted and top_ids is not None and top_values is not None:
                top = tuple(
                    TokenLogprob(token_id=int(t), logprob=float(v))
                    for t, v in zip(
                        top_ids[index][:wanted], top_values[index][:wanted], strict=True
                    )
                )
            self._advance(row, int(tokens[index]), float(logprobs[index]), top)
        chosen = choice.tokens[:, None]  # (B, 1)
        if running.seen is not None:
            running.seen.scatter_(1, chosen, True)
            self._without_control(running.seen)
        if running.counts is not None:
            running.counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=torch.float32))
            self._without_control(running.counts)

    def _advance(self, row: Row, token: int, logprob: float, top: tuple[TokenLogprob, ...]) -> None:
        row.request.handle.token_times.append(time.monotonic())
        row.token_ids.append(token)
        row.logprobs.append(logprob)
        row.top.append(top)
        if token in row.stop_ids:
            self._end(row, "stop")
            return
        if row.text.add_token(row.decoder.push(token)):
            row.cut_by_stop_string = True
            self._complete(row, "stop")
            return
        generated = len(row.token_ids)
        context_full = len(row.request.prompt) + generated >= self._max_seq_len
        if generated >= row.request.max_new_tokens or context_full:
            self._end(row, "length")
        else:
            row.request.handle._publish(row.text.take_stream_piece(), wake=False)
            self._touched.append(row.request.handle)

    def _end(self, row: Row, reason: FinishReason) -> None:
        """Finish a row no stop string ended: flush held bytes (an unfinished character becomes
        U+FFFD, as in a full decode) and stop holding text back."""
        if reason != "cancelled" and row.text.add_tail(row.decoder.flush()):
            row.cut_by_stop_string = True
            reason = "stop"
        self._complete(row, reason)

    def _complete(self, row: Row, reason: FinishReason) -> None:
        row.text.close()
        row.finish_reason = reason
        handle = row.request.handle
        self._touched.append(handle)
        if reason != "cancelled":
            handle._publish(row.text.take_stream_piece(), wake=False)
        kept = row.text.kept_tokens if row.cut_by_stop_string else len(row.token_ids)
        request = row.request
        assert request.params.seed is not None or request.params.greedy
        handle._finish(
            CompletionResult(
                text=row.text.text,
                token_ids=tuple(row.token_ids[:kept]),
                logprobs=tuple(row.logprobs[:kept]),
                top_logprobs=tuple(row.top[:kept]),
                finish_reason=reason,
                prompt_tokens=len(request.prompt),
                completion_tokens=kept,
                version=self.version.info,
                seed=request.params.seed if request.params.seed is not None else 0,
            ),
            wake=False,
        )

    def _feed(self, running: _Segment, tokens: torch.Tensor) -> None:
        """Run the model on one token per row: tokens (B,) -> next logits (B, V)."""
        device = self.version.device
        batch = tokens.shape[0]
        positions = torch.tensor([row.length for row in running.rows], device=device)[:, None]
        mask = torch.cat([running.mask, torch.ones(batch, 1, dtype=torch.bool, device=device)], 1)
        logits = self.version.model(
            tokens[:, None], cache=running.cache, attention_mask=mask, positions=positions
        )  # (B, 1, V)
        running.logits = self._cut_vocab(logits[:, -1])
        running.mask = mask
        for row in running.rows:
            row.length += 1
