"""The inference engine: one loaded model, many concurrent requests, continuous batching.

Threads. Any thread may call :meth:`Engine.submit`, :meth:`Engine.swap` or cancel a handle; one
background scheduler thread owns the model and every batch. Each turn of its loop it (1) admits
waiting requests into free batch slots (prefilling each alone), (2) runs one decode step for
every live version's batch, publishing text pieces, and (3) drops batches of retired versions
once they are empty.

Limits, all enforced here:

- **Backpressure.** At most ``max_batch_size`` sequences run and ``max_queued`` wait; a submit
  beyond that raises :class:`QueueFullError` at once (nobody waits for room).
- **Context.** A prompt of P tokens needs P <= max_seq_len - 1 (:class:`PromptTooLongError`;
  nothing is truncated). Generation stops with "length" when prompt + completion fill the context.
- **Tokens.** ``max_new_tokens`` of a request is capped at the engine's ``max_new_tokens``.
- **Wall time.** A request still queued or running ``request_timeout_s`` after it was submitted
  (or its own shorter timeout) ends with finish_reason "timeout" and the text it has so far.

Hot swap. :meth:`Engine.swap` loads and verifies the new version while the caller waits (in a
thread of its own that then ends: see ``passing_thread.py``), beside the serving one, then makes
it current under the lock: requests admitted from then on run on it, requests already running
finish on theirs (two versions may decode side by side for a while), and every result names its
version. A refused version changes nothing.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from model_runtime.cpu_features import native_bf16_cpu
from model_runtime.engine.batch import DecodeBatch
from model_runtime.engine.errors import (
    EngineClosedError,
    GenerationFailedError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SwapInProgressError,
)
from model_runtime.engine.passing_thread import run_in_passing_thread
from model_runtime.engine.request import (
    CompletionResult,
    EngineRequest,
    ModelVersion,
    RequestHandle,
)
from model_runtime.engine.versions import LoadedVersion, load_version, verify_version
from model_runtime.generation import completion_seed
from model_runtime.palm import PaLM
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatTokenizer

log = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def fastest_dtype(device: str) -> torch.dtype:
    """The serving dtype ``"auto"`` picks: bf16 where ``device`` multiplies it in hardware (a
    CUDA device that supports it; a CPU with AVX512-BF16 or AMX), float32 elsewhere. On a CPU
    that only emulates bf16 (a 2-core Xeon without AVX512-BF16) the 20M base policy in float32
    decoded 124 against 104 tokens/s alone and 596 against 484 for 8 streams, with 17% less
    time to the first token for 8 streams and for a 323-token prompt (both engines in one
    process, their rounds interleaved)."""
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if native_bf16_cpu() else torch.float32


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits and placement.

    max_batch_size: sequences decoded together; max_queued: sequences waiting beyond that.
    max_new_tokens: cap on any request's completion length. request_timeout_s: wall-time limit
    per request, from submission. max_prefill_tokens: prompt tokens prefilled per scheduler
    turn (at least one request is always admitted), which bounds the stall a burst of long
    prompts imposes on running streams. device/dtype: where and in what dtype checkpoints are
    loaded (None = as saved; bfloat16 is several times faster than float32 on CPUs with
    bf16 matmul units, slower where bf16 is emulated; "auto" = :func:`fastest_dtype`; float16
    is not offered: CPUs have no fast kernels for it).
    kv_headroom: free cache columns allocated at each re-layout. smoke_tokens: length of the
    verification generation of a new version.
    """

    max_batch_size: int = 32
    max_queued: int = 64
    max_new_tokens: int = 2048
    request_timeout_s: float = 300.0
    max_prefill_tokens: int = 4096
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "auto"] | None = None
    kv_headroom: int = 64
    smoke_tokens: int = 4

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_new_tokens", "max_prefill_tokens", "smoke_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"EngineConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queued < 0 or self.kv_headroom < 0:
            raise ValueError("EngineConfig.max_queued and kv_headroom must be >= 0")
        if not self.request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.dtype is not None and self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(
                f"dtype must be one of {sorted(_DTYPES)}, 'auto' or None, got {self.dtype}"
            )

    @property
    def torch_dtype(self) -> torch.dtype | None:
        if self.dtype == "auto":
            return fastest_dtype(self.device)
        return None if self.dtype is None else _DTYPES[self.dtype]


@dataclass(frozen=True)
class EngineStats:
    """A snapshot: running and waiting sequences, live versions (current first), swaps done."""

    running: int
    waiting: int
    versions: tuple[ModelVersion, ...]
    swaps: int


class Engine:
    """Serve one model to many threads; see the module docstring for the rules."""

    def __init__(
        self,
        model: PaLM,
        tokenizer: ChatTokenizer,
        *,
        version: ModelVersion,
        config: EngineConfig | None = None,
    ) -> None:
        """Serve ``model`` (already on its device, eval mode) as ``version``. Prefer
        :meth:`from_checkpoint`, which verifies the weights first."""
        self.config = config or EngineConfig()
        self._current = LoadedVersion(info=version, model=model.eval(), tokenizer=tokenizer)
        self._cond = threading.Condition()
        self._waiting: collections.deque[list[EngineRequest]] = collections.deque()
        self._n_waiting = 0
        self._running = 0
        self._closing = False
        self._dead: BaseException | None = None
        self._swap_lock = threading.Lock()
        self._swaps = 0
        self._ids = itertools.count()
        self._batches: list[DecodeBatch] = []  # scheduler thread only
        self._live_versions: tuple[ModelVersion, ...] = (version,)
        self._thread = threading.Thread(target=self._run, name="engine-scheduler", daemon=True)
        self._thread.start()

    @classmethod
    def from_checkpoint(cls, directory: Path, config: EngineConfig | None = None) -> Engine:
        """Load, verify (hashes, smoke generation) and serve a checkpoint directory.
        Raises SwapError if it fails verification."""
        config = config or EngineConfig()

        def load_and_verify() -> LoadedVersion:
            loaded = load_version(directory, device=config.device, dtype=config.torch_dtype)
            verify_version(loaded, serving_tokenizer=None, smoke_tokens=config.smoke_tokens)
            return loaded

        loaded = run_in_passing_thread(load_and_verify, name="engine-load")
        return cls(loaded.model, loaded.tokenizer, version=loaded.info, config=config)

    # --- what is served -----------------------------------------------------------------------

    @property
    def version(self) -> ModelVersion:
        """The version new requests run on."""
        with self._cond:
            return self._current.info

    @property
    def tokenizer(self) -> ChatTokenizer:
        """The serving tokenizer (every version shares it: see ``versions.verify_version``)."""
        with self._cond:
            return self._current.tokenizer

    @property
    def model(self) -> PaLM:
        """The model new requests run on (read-only use: the scheduler thread runs it)."""
        with self._cond:
            return self._current.model

    @property
    def max_seq_len(self) -> int:
        with self._cond:
            return self._current.model.config.max_seq_len

    def stats(self) -> EngineStats:
        with self._cond:
            return EngineStats(
                running=self._running,
                waiting=self._n_waiting,
                versions=self._live_versions,
                swaps=self._swaps,
            )

    # --- requests -----------------------------------------------------------------------------

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        top_logprobs: int = 0,
        logit_bias: Mapping[int, float] | None = None,
        timeout_s: float | None = None,
    ) -> RequestHandle:
        """Queue one completion of ``prompt`` (token ids); ``params.n`` must be 1.

        Raises InvalidRequestError / PromptTooLongError for a prompt this engine cannot serve,
        QueueFullError when there is no room (at once), EngineClosedError after close().
        """
        if params.n != 1:
            raise InvalidRequestError(
                f"submit() makes one completion; use submit_n for n={params.n}"
            )
        (handle,) = self.submit_n(
            prompt, params, top_logprobs=top_logprobs, logit_bias=logit_bias, timeout_s=timeout_s
        )
        return handle

    def submit_n(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        top_logprobs: int = 0,
        logit_bias: Mapping[int, float] | None = None,
        timeout_s: float | None = None,
    ) -> list[RequestHandle]:
        """Queue ``params.n`` completions of ``prompt``, all or none; completion j is seeded
        with ``completion_seed(seed, j)`` (as :func:`model_runtime.generation.generate` does).
        A ``seed`` of None draws a fresh one, readable on each handle. ``logit_bias`` maps token
        ids to values in [-100, 100] added to their logits before sampling (logprobs stay those
        of the raw logits); ``timeout_s`` shortens the engine's wall-time limit."""
        prompt = tuple(int(token) for token in prompt)
        n = params.n
        if n > self.config.max_batch_size:
            raise InvalidRequestError(
                f"n={n} is more than this engine's batch ({self.config.max_batch_size})"
            )
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise InvalidRequestError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}]")
        limit = self.config.request_timeout_s
        if timeout_s is not None:
            if not timeout_s > 0:
                raise InvalidRequestError(f"timeout_s must be > 0, got {timeout_s}")
            limit = min(limit, timeout_s)
        bias = dict(logit_bias or {})
        with self._cond:
            self._check_prompt(prompt, self._current)
            vocab = self._current.vocab
        for token_id, value in bias.items():
            if not 0 <= token_id < vocab:
                raise InvalidRequestError(f"logit_bias token id {token_id} outside [0, {vocab})")
            if not -100.0 <= value <= 100.0:
                raise InvalidRequestError(f"logit_bias values must be in [-100, 100], got {value}")
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        now = time.monotonic()
        requests = [
            EngineRequest(
                request_id=f"req-{next(self._ids)}",
                prompt=prompt,
                params=dataclasses.replace(params, n=1, seed=completion_seed(seed, j)),
                max_new_tokens=min(params.max_new_tokens, self.config.max_new_tokens),
                top_logprobs=top_logprobs,
                logit_bias=bias,
                submitted_at=now,
                deadline=now + limit,
            )
            for j in range(n)
        ]
        with self._cond:
            if self._closing or self._dead is not None:
                raise EngineClosedError("the engine is shut down")
            capacity = self.config.max_batch_size + self.config.max_queued
            if self._running + self._n_waiting + n > capacity:
                raise QueueFullError(
                    f"the engine is at capacity ({self._running} running, {self._n_waiting} "
                    f"waiting, room for {capacity}); retry later"
                )
            self._waiting.append(requests)
            self._n_waiting += n
            self._cond.notify_all()
        return [request.handle for request in requests]

    def generate(
        self, prompt: Sequence[int], params: SamplingParams, *, top_logprobs: int = 0
    ) -> list[CompletionResult]:
        """Submit ``params.n`` completions and wait for them (a blocking convenience)."""
        handles = self.submit_n(prompt, params, top_logprobs=top_logprobs)
        return [handle.result() for handle in handles]

    @staticmethod
    def _check_prompt(prompt: tuple[int, ...], version: LoadedVersion) -> None:
        if not prompt:
            raise InvalidRequestError("the prompt is empty")
        max_seq_len = version.model.config.max_seq_len
        if len(prompt) > max_seq_len - 1:
            raise PromptTooLongError(len(prompt), max_seq_len)
        vocab = version.vocab
        bad = [token for token in prompt if not 0 <= token < vocab]
        if bad:
            raise InvalidRequestError(f"the prompt has token ids outside [0, {vocab}): {bad[:5]}")

    # --- hot swap -----------------------------------------------------------------------------

    def swap(self, directory: Path) -> ModelVersion:
        """Load and verify ``directory``, then serve it to every request admitted from now on.

        Blocks the calling thread (not the scheduler) while loading. Raises SwapError (the old
        version keeps serving) or SwapInProgressError if another swap is under way.
        """
        if not self._swap_lock.acquire(blocking=False):
            raise SwapInProgressError("another swap is in progress")
        try:
            with self._cond:
                serving = self._current
            device, dtype = serving.device, serving.model.embed.weight.dtype
            serving_tokenizer, smoke_tokens = serving.tokenizer, self.config.smoke_tokens
            del serving  # no reference to the old model while the new one loads

            def load_and_verify() -> LoadedVersion:
                loaded = load_version(directory, device=device, dtype=dtype)
                verify_version(
                    loaded, serving_tokenizer=serving_tokenizer, smoke_tokens=smoke_tokens
                )
                return loaded

            loaded = run_in_passing_thread(load_and_verify, name="engine-swap-load")
            with self._cond:
                if self._closing:
                    raise EngineClosedError("the engine is shut down")
                previous = self._current.info
                self._current = loaded
                self._swaps += 1
                self._live_versions = (loaded.info, *self._live_versions)
                self._cond.notify_all()
            log.info("swapped %s -> %s", previous.fingerprint, loaded.info.fingerprint)
            return loaded.info
        finally:
            self._swap_lock.release()

    # --- shutdown -----------------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the scheduler; unfinished requests fail with EngineClosedError."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- scheduler thread ---------------------------------------------------------------------

    def _run(self) -> None:
        try:
            with torch.inference_mode():
                while True:
                    work = self._next_work()
                    if work is None:
                        break
                    admitted, version = work
                    self._admit(admitted, version)
                    del version
                    self._step_all()
        except BaseException as error:  # a bug: fail everything rather than hang clients
            log.exception("engine scheduler died")
            with self._cond:
                self._dead = error
        self._shutdown()

    def _next_work(self) -> tuple[list[EngineRequest], LoadedVersion] | None:
        """Wait for work; take the requests that fit in the batch (whole submissions, FIFO)."""
        expired: list[EngineRequest] = []
        with self._cond:
            while not self._closing and not self._waiting and self._running == 0:
                self._cond.wait()
            if self._closing:
                return None
            now = time.monotonic()
            for submission in list(self._waiting):
                if all(r.handle.cancelled or now > r.deadline for r in submission):
                    self._waiting.remove(submission)
                    self._n_waiting -= len(submission)
                    expired += submission
            free = self.config.max_batch_size - self._running
            budget = self.config.max_prefill_tokens
            admitted: list[EngineRequest] = []
            while self._waiting and len(self._waiting[0]) <= free:
                submission = self._waiting[0]
                cost = sum(len(r.prompt) for r in submission)
                if admitted and cost > budget:
                    break
                self._waiting.popleft()
                admitted += submission
                free -= len(submission)
                budget -= cost
            self._n_waiting -= len(admitted)
            self._running += len(admitted)
            version = self._current
        for request in expired:
            _finish_unstarted(request, version.info)
        return admitted, version

    def _admit(self, admitted: list[EngineRequest], version: LoadedVersion) -> None:
        """Prefill the admitted requests (together) into the current version's batch."""
        if not admitted:
            return
        batch = next((b for b in self._batches if b.version is version), None)
        if batch is None:
            batch = DecodeBatch(
                version,
                kv_headroom=self.config.kv_headroom,
                max_prefill_tokens=self.config.max_prefill_tokens,
            )
            self._batches.append(batch)
        ready = []
        for request in admitted:
            if request.handle.cancelled or time.monotonic() > request.deadline:
                _finish_unstarted(request, version.info)
                continue
            try:
                self._check_prompt(request.prompt, version)  # the version may have changed
            except InvalidRequestError as error:
                request.handle._fail(error)
                continue
            ready.append(request)
        for request, failure in batch.prefill(ready):
            log.error("prefill failed: %s", failure)
            request.handle._fail(GenerationFailedError(f"prefill failed: {failure}"))

    def _step_all(self) -> None:
        for batch in list(self._batches):
            try:
                batch.step()
            except (RuntimeError, ValueError) as error:
                log.exception("decode step failed on %s", batch.version.info.fingerprint)
                failure = GenerationFailedError(f"decode step failed: {error}")
                for request in batch.fail_all():
                    request.handle._fail(failure)
        with self._cond:
            current = self._current
            self._batches = [b for b in self._batches if len(b) > 0 or b.version is current]
            self._running = sum(len(b) for b in self._batches)
            live = [current.info]
            live += [b.version.info for b in self._batches if b.version is not current]
            self._live_versions = tuple(live)

    def _shutdown(self) -> None:
        error = EngineClosedError("the engine shut down before this request finished")
        with self._cond:
            self._closing = True
            waiting = [r for submission in self._waiting for r in submission]
            self._waiting.clear()
            self._n_waiting = 0
            self._running = 0
        for request in waiting:
            request.handle._fail(error)
        for batch in self._batches:
            for request in batch.fail_all():
                request.handle._fail(error)
        self._batches = []


def _finish_unstarted(request: EngineRequest, version: ModelVersion) -> None:
    """End a request that never reached the batch (cancelled or timed out while queued)."""
    reason: Literal["cancelled", "timeout"] = "cancelled" if request.handle.cancelled else "timeout"
    request.handle.version = version
    request.handle._finish(
        CompletionResult(
            text="",
            token_ids=(),
            logprobs=(),
            top_logprobs=(),
            finish_reason=reason,
            prompt_tokens=len(request.prompt),
            completion_tokens=0,
            version=version,
            seed=request.params.seed or 0,
        )
    )
