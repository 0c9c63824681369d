"""One request's life in the engine: what was asked, what came out, and the handle the caller
holds to stream, wait, or cancel.

The scheduler thread is the only writer of a handle (``_publish``/``_finish``); any thread may
read it. Sync readers wait on a condition variable; async readers (any event loop) are woken
through ``loop.call_soon_threadsafe`` so no thread ever blocks an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from model_runtime.engine.errors import EngineError
from model_runtime.sampling import SamplingParams

FinishReason = Literal["stop", "length", "timeout", "cancelled"]
"""stop: an end token or a stop string; length: max tokens or the context is full;
timeout: the request's wall-time limit passed; cancelled: the caller cancelled it."""


@dataclass(frozen=True)
class ModelVersion:
    """Which weights produced a result: the checkpoint directory's name, its weights' sha256
    (from the checkpoint's meta.json) and where it was loaded from."""

    name: str
    sha256: str
    path: str | None = None

    @property
    def fingerprint(self) -> str:
        """Short printable identity: ``name@sha256[:12]``."""
        return f"{self.name}@{self.sha256[:12]}"


@dataclass(frozen=True)
class TokenLogprob:
    """A token id and its log-probability under the model at the request's temperature."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class CompletionResult:
    """One finished completion.

    ``token_ids``, ``logprobs`` and ``top_logprobs`` have ``completion_tokens`` entries; the
    rules for ``text``, kept tokens and logprobs are those of :mod:`model_runtime.generation`
    (logprobs are ``log_softmax(logits / temperature)`` of the raw model logits, temperature 0
    counting as 1). ``top_logprobs[i]`` holds the request's ``top_logprobs`` most likely tokens
    at step i, best first (empty tuples when none were asked for).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    top_logprobs: tuple[tuple[TokenLogprob, ...], ...]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    version: ModelVersion
    seed: int


@dataclass
class EngineRequest:
    """A submitted completion (one sequence). Built by :meth:`Engine.submit`."""

    request_id: str
    prompt: tuple[int, ...]
    params: SamplingParams  # n == 1 and seed set
    max_new_tokens: int  # params.max_new_tokens capped by the engine's limit
    top_logprobs: int
    logit_bias: Mapping[int, float]  # token id -> added to its logit (OpenAI logit_bias)
    submitted_at: float  # time.monotonic()
    deadline: float  # time.monotonic() after which the request ends with "timeout"
    handle: RequestHandle = field(init=False)

    def __post_init__(self) -> None:
        self.handle = RequestHandle(self)


class RequestHandle:
    """What :meth:`Engine.submit` returns: stream text pieces, wait for the result, cancel.

    Pieces never split a character and never show text a stop string later cuts; joined, they
    equal ``result().text``. Iterating (sync or async) and then stopping early cancels the
    request, so a closed client frees its batch slot at the next decode step.
    """

    def __init__(self, request: EngineRequest) -> None:
        self.request_id = request.request_id
        self.seed = request.params.seed
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # guards the state; streams wait here for pieces
        self._ended_cond = threading.Condition(lock)  # result() waits here: woken once, at the end
        self._pieces: list[str] = []
        self._result: CompletionResult | None = None
        self._error: EngineError | None = None
        self._cancelled = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.version: ModelVersion | None = None  # set when the request joins a batch
        # time.monotonic() at which each completion token was chosen (latency accounting)
        self.token_times: list[float] = []

    # --- caller side ------------------------------------------------------------------------

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    @property
    def done(self) -> bool:
        with self._cond:
            return self._result is not None or self._error is not None

    def cancel(self) -> None:
        """Ask the engine to stop this request; it leaves the batch at the next step and its
        result ends with finish_reason "cancelled". No effect once finished."""
        with self._cond:
            if not self._ended():
                self._cancelled = True

    def result(self, timeout: float | None = None) -> CompletionResult:
        """Block until the request ends; raise its EngineError if it failed, TimeoutError if
        ``timeout`` seconds pass first."""
        with self._cond:
            if not self._ended_cond.wait_for(self._ended, timeout):
                raise TimeoutError(f"request {self.request_id} still running after {timeout}s")
            return self._outcome()

    async def aresult(self) -> CompletionResult:
        """Async :meth:`result`: waits without blocking the event loop."""
        while True:
            with self._cond:
                if self._ended():
                    return self._outcome()
                future = self._register_waiter()
            await future

    def __iter__(self) -> Iterator[str]:
        return self.stream()

    def stream(self) -> Iterator[str]:
        """Text pieces as they become final; raises the request's EngineError if it fails.
        Closing the iterator early cancels the request."""
        index = 0
        try:
            while True:
                with self._cond:
                    while index >= len(self._pieces) and not self._ended():
                        self._cond.wait()
                    pieces = self._pieces[index:]
                    index += len(pieces)
                    ended = self._ended() and index == len(self._pieces)
                yield from pieces
                if ended:
                    self._outcome_locked()
                    return
        finally:
            if not self.done:
                self.cancel()

    def __aiter__(self) -> AsyncIterator[str]:
        return self.astream()

    async def astream(self) -> AsyncGenerator[str, None]:
        """Async :meth:`stream`; closing it (or cancelling its task) cancels the request."""
        index = 0
        try:
            while True:
                with self._cond:
                    pieces = self._pieces[index:]
                    index += len(pieces)
                    ended = self._ended() and index == len(self._pieces)
                    future = None if (pieces or ended) else self._register_waiter()
                if future is not None:
                    await future
                    continue
                for piece in pieces:
                    yield piece
                if ended:
                    self._outcome_locked()
                    return
        finally:
            if not self.done:
                self.cancel()

    # --- scheduler side ---------------------------------------------------------------------
    # With ``wake=False`` the caller wakes the readers later through :func:`wake_readers`, so a
    # decode step wakes each event loop once for all of its streams (one syscall, one task
    # switch) instead of once per row.

    def _publish(self, piece: str, *, wake: bool = True) -> None:
        if not piece:
            return
        with self._cond:
            self._pieces.append(piece)
            if wake:
                self._wake_async(self._take_waiters())

    def _finish(self, result: CompletionResult, *, wake: bool = True) -> None:
        with self._cond:
            self._result = result
            self._ended_cond.notify_all()
            if wake:
                self._wake_async(self._take_waiters())

    def _fail(self, error: EngineError) -> None:
        with self._cond:
            if self._ended():
                return
            self._error = error
            self._ended_cond.notify_all()
            self._wake_async(self._take_waiters())

    # --- internals (call with self._cond held) -------------------------------------------------

    def _ended(self) -> bool:
        return self._result is not None or self._error is not None

    def _outcome(self) -> CompletionResult:
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def _outcome_locked(self) -> CompletionResult:
        with self._cond:
            return self._outcome()

    def _register_waiter(self) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._waiters.append((loop, future))
        return future

    def _take_waiters(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """Wake sync streams now; hand over the async ones' futures (call with the lock held)."""
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        return waiters

    @staticmethod
    def _wake_async(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
        for loop, future in waiters:
            # A closed event loop raises RuntimeError: nobody waits there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, future)


def wake_readers(handles: Iterable[RequestHandle]) -> None:
    """Wake everyone reading ``handles`` (after ``_publish``/``_finish`` with ``wake=False``):
    sync streams on their conditions, and each event loop once for all its futures."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for handle in handles:
        with handle._cond:
            waiters = handle._take_waiters()
        for loop, future in waiters:
            by_loop.setdefault(loop, []).append(future)
    for loop, futures in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
            loop.call_soon_threadsafe(_resolve_all, futures)


def _resolve_all(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        _resolve(future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
