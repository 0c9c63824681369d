"""The running batch of one model version: continuous batching over a padded KV cache.

Layout. The B running sequences share one :class:`KVCache` of length S, right-aligned: row r's
L_r cached tokens sit in the last L_r columns, the columns before them are padding that the
(B, S) attention mask hides. Every decode step appends one column for all rows, so the
alignment holds. Rotary positions are per row (0 at each row's first token), so a row computes
the same attention whatever padding its neighbours impose.

Joining and leaving. A new request is prefilled alone (batch of 1, its own cache), so its
prompt's keys and values do not depend on what else is running. Between steps, finished and
cancelled rows are dropped and joiners merged in one re-layout: a new cache of width
S' = max L_r is filled by copying each kept row's last columns and each joiner's cache, which
frees the leavers' memory and trims padding nobody needs any more.

A row's output therefore depends on its prompt, parameters and seed only (up to float rounding
of batched matmuls; the per-row sampling in ``sampler.py`` is exact).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model_runtime.engine.request import (
    CompletionResult,
    EngineRequest,
    FinishReason,
    TokenLogprob,
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
class _Joiner:
    row: Row
    cache: KVCache  # (1, P) the prompt's keys and values
    logits: torch.Tensor  # (1, V) next-token logits after the prompt


class DecodeBatch:
    """Running sequences of one :class:`LoadedVersion`; driven by the scheduler thread only."""

    def __init__(self, version: LoadedVersion, *, kv_headroom: int = 64) -> None:
        self.version = version
        self._headroom = kv_headroom
        self._rows: list[Row] = []
        self._joiners: list[_Joiner] = []
        self._cache: KVCache | None = None
        self._mask = torch.zeros(0, 0, dtype=torch.bool)  # (B, S) True on real tokens
        self._logits = torch.zeros(0, 0)  # (B, V) next-token logits per row
        self._settings: RowSettings | None = None
        self._seen: torch.Tensor | None = None  # (B, V) bool, rows using repetition penalty
        self._counts: torch.Tensor | None = None  # (B, V) float, rows using freq/presence
        config = version.model.config
        self._max_seq_len = config.max_seq_len
        self._model_vocab = config.vocab_size
        self._control_ids = sorted(
            i for i in version.tokenizer.control_ids if i < config.vocab_size
        )
        tokenizer = version.tokenizer
        self._base_stop_ids = frozenset({tokenizer.end_id, tokenizer.eos_id})

    def __len__(self) -> int:
        """Live sequences: running, not yet finished, plus those waiting to join."""
        return sum(1 for row in self._rows if not row.finished) + len(self._joiners)

    @property
    def rows(self) -> list[Row]:
        return list(self._rows)

    # --- joining ------------------------------------------------------------------------------

    def prefill(self, request: EngineRequest) -> None:
        """Run the model over ``request``'s prompt alone; the row joins at the next step.
        The prompt was validated for this version by the engine."""
        version = self.version
        model, device = version.model, version.device
        params = request.params
        generator: torch.Generator | None = None
        if not params.greedy:
            assert params.seed is not None
            generator = torch.Generator(device=device)
            generator.manual_seed(params.seed)
        prompt = torch.tensor([request.prompt], dtype=torch.long, device=device)  # (1, P)
        cache = KVCache.empty(
            model.config,
            1,
            device=device,
            dtype=model.embed.weight.dtype,
            capacity=prompt.shape[1],
        )
        hidden = model.hidden_states(prompt, cache=cache)  # (1, P, D)
        logits = F.linear(hidden[:, -1], model.embed.weight).float()  # (1, V)
        row = Row(
            request=request,
            generator=generator,
            decoder=version.tokenizer.incremental_decoder(),
            text=CompletionText(params.stop_strings),
            length=len(request.prompt),
            stop_ids=self._base_stop_ids | frozenset(params.stop_token_ids),
        )
        self._joiners.append(_Joiner(row=row, cache=cache, logits=self._mask_vocab(logits)))
        request.handle.version = version.info

    # --- one decode step --------------------------------------------------------------------

    def step(self) -> None:
        """End cancelled/expired rows, re-lay out the batch if its membership changed, choose one
        token per row, publish text, and feed the chosen tokens to the model."""
        now = time.monotonic()
        for row in [*self._rows, *(joiner.row for joiner in self._joiners)]:
            if row.finished:
                continue
            if row.request.handle.cancelled:
                self._end(row, "cancelled")
            elif now > row.request.deadline:
                self._end(row, "timeout")
        keep = [index for index, row in enumerate(self._rows) if not row.finished]
        joiners = [joiner for joiner in self._joiners if not joiner.row.finished]
        self._joiners = []
        if joiners or len(keep) < len(self._rows):
            self._relayout(keep, joiners)
        if not self._rows:
            return
        choice = self._choose()
        self._record(choice)
        if all(row.finished for row in self._rows):
            self._relayout([], [])  # nothing to feed: free the cache now
            return
        self._feed(choice.tokens)

    def fail_all(self) -> list[EngineRequest]:
        """Drop every row (after a failed step); return their requests for the caller to fail."""
        requests = [row.request for row in self._rows if not row.finished]
        requests += [joiner.row.request for joiner in self._joiners]
        self._rows, self._joiners = [], []
        self._relayout([], [])
        return requests

    # --- internals --------------------------------------------------------------------------

    def _mask_vocab(self, logits: torch.Tensor) -> torch.Tensor:
        """Never emit an id the tokenizer cannot decode (a model vocab padded past it)."""
        if self.version.vocab < logits.shape[-1]:
            logits[:, self.version.vocab :] = float("-inf")
        return logits

    def _relayout(self, keep: list[int], joiners: list[_Joiner]) -> None:
        """New batch = kept rows (in order) + joiners, in a fresh right-aligned cache."""
        rows = [self._rows[i] for i in keep] + [joiner.row for joiner in joiners]
        self._rows = rows
        if not rows:
            self._cache = None
            self._mask = torch.zeros(0, 0, dtype=torch.bool)
            self._logits = torch.zeros(0, 0)
            self._settings, self._seen, self._counts = None, None, None
            return
        model = self.version.model
        config = model.config
        device, dtype = self.version.device, model.embed.weight.dtype
        width = max(row.length for row in rows)  # S'
        shape = (config.depth, len(rows), width + self._headroom, config.dim_head)
        keys = torch.zeros(shape, dtype=dtype, device=device)  # (depth, B', capacity, dh)
        values = torch.zeros(shape, dtype=dtype, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.bool, device=device)  # (B', S')
        n_kept = len(keep)
        if keep and self._cache is not None:
            index = torch.tensor(keep, device=device)
            old_width = self._cache.length
            span = min(old_width, width)  # every kept row's tokens lie in the last `span` columns
            for layer in range(config.depth):
                old_keys, old_values = self._cache.layer(layer)  # (B, S, dh) views
                keys[layer, :n_kept, width - span : width] = old_keys[index, old_width - span :]
                values[layer, :n_kept, width - span : width] = old_values[index, old_width - span :]
            mask[:n_kept, width - span :] = self._mask[index, old_width - span :]
        for row_index, joiner in enumerate(joiners, start=n_kept):
            prompt_len = joiner.cache.length
            for layer in range(config.depth):
                new_keys, new_values = joiner.cache.layer(layer)  # (1, P, dh)
                keys[layer, row_index, width - prompt_len : width] = new_keys[0]
                values[layer, row_index, width - prompt_len : width] = new_values[0]
            mask[row_index, width - prompt_len :] = True
        self._cache = KVCache(keys, values, width)
        self._mask = mask

        parts = []
        if keep:
            parts.append(self._logits[torch.tensor(keep, device=self._logits.device)])
        parts += [joiner.logits for joiner in joiners]
        self._logits = torch.cat(parts, dim=0)  # (B', V)

        self._settings = RowSettings.of(
            [row.request.params for row in rows],
            [row.request.top_logprobs for row in rows],
            device,
            logit_bias=[row.request.logit_bias for row in rows],
            vocab_size=self._model_vocab,
        )
        seen = None
        if self._settings.uses_repetition:
            seen = self._carry(
                self._seen, keep, [self._prompt_seen(j) for j in joiners], torch.bool
            )
        counts = None
        if self._settings.uses_counts:
            fresh = [torch.zeros(1, self._model_vocab, device=device) for _ in joiners]
            counts = self._carry(self._counts, keep, fresh, torch.float32)
        self._seen, self._counts = seen, counts

    def _carry(
        self,
        old: torch.Tensor | None,
        keep: list[int],
        fresh: list[torch.Tensor],
        dtype: torch.dtype,
    ) -> torch.Tensor:
        """(B', V) per-row penalty state after a re-layout: kept rows' old state (zeros when no
        row used it before: those rows' neutral settings ignore it), then the joiners'."""
        device = self.version.device
        parts: list[torch.Tensor] = []
        if keep:
            if old is not None:
                parts.append(old[torch.tensor(keep, device=device)])
            else:
                parts.append(torch.zeros(len(keep), self._model_vocab, dtype=dtype, device=device))
        return torch.cat([*parts, *fresh], dim=0)

    def _prompt_seen(self, joiner: _Joiner) -> torch.Tensor:
        prompt = torch.tensor([joiner.row.request.prompt], device=joiner.logits.device)
        seen = token_counts(prompt, self._model_vocab) > 0  # (1, V)
        if self._control_ids:
            seen[:, self._control_ids] = False
        return seen

    def _choose(self) -> Choice:
        assert self._settings is not None
        return choose_tokens(
            self._logits,
            self._settings,
            [row.generator for row in self._rows],
            seen=self._seen,
            counts=self._counts,
        )

    def _record(self, choice: Choice) -> None:
        """Append each row's token, publish its new text, end rows that stop."""
        tokens = choice.tokens.tolist()
        logprobs = choice.logprobs.tolist()
        top_ids = choice.top_ids.tolist() if choice.top_ids is not None else None
        top_values = choice.top_logprobs.tolist() if choice.top_logprobs is not None else None
        for index, row in enumerate(self._rows):
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
        if self._seen is not None:
            self._seen.scatter_(1, chosen, True)
            if self._control_ids:
                self._seen[:, self._control_ids] = False
        if self._counts is not None:
            self._counts.scatter_add_(1, chosen, torch.ones_like(chosen, dtype=self._counts.dtype))
            if self._control_ids:
                self._counts[:, self._control_ids] = 0

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
            row.request.handle._publish(row.text.take_stream_piece())

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
        if reason != "cancelled":
            handle._publish(row.text.take_stream_piece())
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
            )
        )

    def _feed(self, tokens: torch.Tensor) -> None:
        """Run the model on one token per row: tokens (B,) -> next logits (B, V)."""
        assert self._cache is not None
        device = self.version.device
        batch = tokens.shape[0]
        positions = torch.tensor([row.length for row in self._rows], device=device)[:, None]
        mask = torch.cat([self._mask, torch.ones(batch, 1, dtype=torch.bool, device=device)], 1)
        logits = self.version.model(
            tokens[:, None], cache=self._cache, attention_mask=mask, positions=positions
        )  # (B, 1, V)
        self._logits = self._mask_vocab(logits[:, -1])
        self._mask = mask
        for row in self._rows:
            row.length += 1
