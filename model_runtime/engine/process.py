"""An engine in a process of its own, for a host whose threads are busy with Python.

Python lets one thread run Python at a time (the GIL). The scheduler gives it up at each torch
operation of a step and must then wait for it again; a thread of the host busy with Python (a
web request being rendered) holds it until it blocks, or for up to the switch interval (5 ms).
A step's hundreds of small operations each pay that wait: beside one such thread, the 10M policy
of ``bench/engine_contention.py`` took 15x as long to its first token and decoded 19x slower
with one torch thread (3.5x and 5x with two), while the same work in another process left it as
fast as alone (one torch thread, 2 cores).
:class:`EngineProcess` runs an :class:`Engine` in a child process whose only other Python is a
small relay: per decode step, one message to the host with every stream's new pieces.

It serves the same requests as :meth:`Engine.submit`, with one difference: a request the child
refuses (queue full, prompt too long) fails its handle, raised when it is streamed or awaited,
instead of raising at submission. The child ends when the host closes it or goes away; if it
dies, every open request fails with :class:`EngineClosedError`, as do later submissions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from model_runtime.engine import errors
from model_runtime.engine.engine import Engine, EngineConfig
from model_runtime.engine.errors import EngineClosedError, EngineError, SwapError
from model_runtime.engine.request import (
    CompletionResult,
    EngineRequest,
    ModelVersion,
    RequestHandle,
    TokenLogprob,
    wake_readers,
)
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatTokenizer

START_TIMEOUT_S = 600.0  # loading and verifying a checkpoint, after importing torch
_ERRORS: dict[str, type[EngineError]] = {
    cls.__name__: cls
    for cls in (
        EngineClosedError,
        errors.GenerationFailedError,
        errors.InvalidRequestError,
        errors.PromptTooLongError,  # rebuilt from its token counts (see _error_fields)
        errors.QueueFullError,
    )
}


def default_threads() -> int:
    """Torch threads for the child: every core but one, which the host keeps. Threads that
    share their cores with other work make every parallel region wait for the slowest."""
    return max(1, (os.cpu_count() or 2) - 1)


class _ProcessHandle(RequestHandle):
    """A handle whose cancellation reaches the child."""

    def __init__(self, request: EngineRequest, owner: EngineProcess, number: int) -> None:
        super().__init__(request)
        self._owner, self._number = owner, number

    def cancel(self) -> None:
        super().cancel()
        if self.cancelled:
            self._owner._send(["cancel", self._number])


class EngineProcess:
    """:class:`Engine` for ``directory``, run in a child process (``threads`` torch threads
    there; default :func:`default_threads`). Raises SwapError when the checkpoint does not
    load or verify there. Messages cross the pipe as JSON."""

    def __init__(
        self, directory: Path, config: EngineConfig | None = None, *, threads: int | None = None
    ) -> None:
        self.config = config or EngineConfig()
        try:
            self.tokenizer = ChatTokenizer.from_file(directory)
        except Exception as error:  # missing (OSError), or what the tokenizers library refuses
            raise SwapError(f"no usable tokenizer in {directory}: {error}") from error
        context = multiprocessing.get_context("spawn")  # no copy of the host's threads or locks
        self._conn, child_end = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(
                str(directory),
                dataclasses.asdict(self.config),
                threads or default_threads(),
                child_end,
            ),
            name="palmloop-engine",
            daemon=True,
        )
        self._process.start()
        child_end.close()
        self.max_seq_len = self._wait_until_ready(directory)
        self._lock = threading.Lock()  # guards the fields below and the pipe's sending end
        self._handles: dict[int, _ProcessHandle] = {}
        self._numbers = itertools.count(1)
        self._closed = ""  # why no more requests are taken
        self._reader = threading.Thread(target=self._read, name="engine-process", daemon=True)
        self._reader.start()

    def _wait_until_ready(self, directory: Path) -> int:
        try:
            if not self._conn.poll(START_TIMEOUT_S):
                self._process.kill()
                raise SwapError(f"the engine process did not load {directory} in time")
            kind, payload = _receive(self._conn)
        except (EOFError, OSError):
            self._process.join(5)
            raise SwapError(
                f"the engine process exited (code {self._process.exitcode}) loading {directory}"
            ) from None
        if kind != "ready":
            self._process.join(5)
            raise SwapError(payload)
        return int(payload)

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def submit(
        self,
        prompt: Sequence[int],
        params: SamplingParams,
        *,
        timeout_s: float | None = None,
    ) -> RequestHandle:
        """Queue one completion of ``prompt``; as :meth:`Engine.submit`, but the child's
        refusals arrive through the handle. Raises EngineClosedError once closed or dead."""
        if params.n != 1:
            raise errors.InvalidRequestError(f"submit() makes one completion, not n={params.n}")
        tokens = [int(token) for token in prompt]
        now = time.monotonic()
        with self._lock:
            if self._closed:
                raise EngineClosedError(self._closed)
            number = next(self._numbers)
            # The handle's request: the child's engine caps and times it (limits not repeated).
            request = EngineRequest(
                request_id=f"process-{number}",
                prompt=tuple(tokens),
                params=params,
                max_new_tokens=params.max_new_tokens,
                top_logprobs=0,
                logit_bias={},
                submitted_at=now,
                deadline=now + (timeout_s or self.config.request_timeout_s),
            )
            handle = request.handle = _ProcessHandle(request, self, number)
            self._handles[number] = handle
            self._send_locked(["submit", number, tokens, dataclasses.asdict(params), timeout_s])
        return handle

    def close(self) -> None:
        """Stop the child (open requests fail with EngineClosedError) and wait for it."""
        with self._lock:
            if not self._closed:
                self._closed = "the engine is shut down"
                self._send_locked(["close"])
        self._process.join(30)
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._reader.join(5)
        self._conn.close()

    # --- the pipe ---------------------------------------------------------------------------

    def _send(self, message: list[Any]) -> None:
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: list[Any]) -> None:
        with contextlib.suppress(OSError):  # the child is gone: the reader fails the requests
            self._conn.send_bytes(json.dumps(message).encode())

    def _read(self) -> None:
        """The child's messages until it ends: each step's pieces and outcomes to the handles,
        their readers woken once per step."""
        with contextlib.suppress(EOFError, OSError):
            while True:
                _, items = _receive(self._conn)
                touched: list[RequestHandle] = []
                for number, pieces, outcome in items:
                    handle = self._handles.get(number)
                    if handle is None:
                        continue
                    for piece in pieces:
                        handle._publish(piece, wake=False)
                    if outcome is not None:
                        with self._lock:
                            del self._handles[number]
                        if outcome[0] == "done":
                            handle._finish(_result(outcome[1]), wake=False)
                        else:
                            handle._fail(_error(outcome[1], outcome[2]))
                    touched.append(handle)
                wake_readers(touched)
        self._process.join(1)  # ended, or ending: its exit code, if it has one yet
        with self._lock:
            exit_code = self._process.exitcode
            self._closed = self._closed or f"the engine process stopped (exit code {exit_code})"
            reason, open_handles = self._closed, list(self._handles.values())
            self._handles.clear()
        for handle in open_handles:
            handle._fail(EngineClosedError(reason))


def _receive(conn: Connection) -> Any:
    return json.loads(conn.recv_bytes())


def _result(fields: dict[str, Any]) -> CompletionResult:
    """A CompletionResult from its JSON form (dataclasses.asdict's)."""
    return CompletionResult(
        **{
            **fields,
            "token_ids": tuple(fields["token_ids"]),
            "logprobs": tuple(fields["logprobs"]),
            "top_logprobs": tuple(
                tuple(TokenLogprob(**top) for top in step) for step in fields["top_logprobs"]
            ),
            "version": ModelVersion(**fields["version"]),
        }
    )


def _error_fields(error: EngineError) -> tuple[str, list[Any]]:
    if isinstance(error, errors.PromptTooLongError):
        return type(error).__name__, [error.prompt_tokens, error.max_seq_len]
    return type(error).__name__, [str(error)]


def _error(name: str, arguments: list[Any]) -> EngineError:
    return _ERRORS.get(name, EngineError)(*arguments)


# --- the child ------------------------------------------------------------------------------


def _serve(directory: str, config: dict[str, Any], threads: int, conn: Connection) -> None:
    import torch

    # Ctrl-C in a terminal reaches the whole process group: the host decides when this ends
    # (close, or its own exit, which closes the pipe), not the keyboard.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    try:
        engine = Engine.from_checkpoint(Path(directory), EngineConfig(**config))
    except Exception as error:  # reported to the host, which raises it as SwapError
        conn.send_bytes(json.dumps(["failed", f"{type(error).__name__}: {error}"]).encode())
        return
    conn.send_bytes(json.dumps(["ready", engine.max_seq_len]).encode())
    try:
        asyncio.run(_relay(engine, conn))
    finally:
        engine.close()


async def _relay(engine: Engine, conn: Connection) -> None:
    """Take the host's submissions and cancellations; send each step's pieces and outcomes in
    one message (the streams a step woke run before it goes)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    handles: dict[int, RequestHandle] = {}
    followers: set[asyncio.Task[None]] = set()  # held here: the loop keeps only weak references
    # number -> [new pieces, outcome]: None while running, ["done", result fields] or
    # ["failed", error class name, its arguments] at the end
    outbox: dict[int, list[Any]] = {}

    def flush() -> None:
        items = [[number, pieces, outcome] for number, (pieces, outcome) in outbox.items()]
        outbox.clear()
        if items:
            conn.send_bytes(json.dumps(["step", items]).encode())

    def post(number: int, piece: str = "", outcome: list[Any] | None = None) -> None:
        if not outbox:
            loop.call_soon(flush)  # after the other streams this step woke
        entry = outbox.setdefault(number, [[], None])
        if piece:
            entry[0].append(piece)
        if outcome is not None:
            entry[1] = outcome

    def post_failure(number: int, error: EngineError) -> None:
        post(number, outcome=["failed", *_error_fields(error)])

    async def follow(number: int, handle: RequestHandle) -> None:
        try:
            async for piece in handle.astream():
                post(number, piece)
            post(number, outcome=["done", dataclasses.asdict(await handle.aresult())])
        except EngineError as error:
            post_failure(number, error)
        finally:
            handles.pop(number, None)

    def submit(number: int, prompt: list[int], fields: dict[str, Any], timeout: Any) -> None:
        params = SamplingParams(
            **{
                **fields,
                "stop_token_ids": tuple(fields["stop_token_ids"]),
                "stop_strings": tuple(fields["stop_strings"]),
            }
        )
        try:
            handle = engine.submit(prompt, params, timeout_s=timeout)
        except EngineError as error:
            post_failure(number, error)
            return
        handles[number] = handle
        task = loop.create_task(follow(number, handle))
        followers.add(task)
        task.add_done_callback(followers.discard)

    def receive() -> None:
        while not ended.done() and conn.poll():
            try:
                message = _receive(conn)
            except (EOFError, OSError):  # the host went away
                ended.set_result(None)
                return
            if message[0] == "submit":
                submit(*message[1:])
            elif message[0] == "cancel" and (handle := handles.get(message[1])) is not None:
                handle.cancel()
            elif message[0] == "close":
                ended.set_result(None)

    loop.add_reader(conn.fileno(), receive)
    await ended
    loop.remove_reader(conn.fileno())
