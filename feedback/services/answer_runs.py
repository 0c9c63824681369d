"""Writing an answer: one run per answer in the web process, watched by any number of streams.

A run starts as soon as the answer is created, when this process serves its streams from a
long-lived event loop (uvicorn: see ``webapp.asgi``), so the first tokens are already written when
the page's stream connects; otherwise the first stream that connects starts it. It keeps going while
the page reconnects (the new stream first receives everything written so far), and stops when
the user presses stop, when the answer is complete, or when no page has watched it for
``STREAM_RECONNECT_GRACE_S`` seconds. A stream served by another web process follows it piece by
piece through Redis (``answer_relay``), or, without Redis, through the progress saved to the
database every ``STREAM_FLUSH_S`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import logging
import threading
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.db import InterfaceError, OperationalError, connections, transaction
from redis.exceptions import RedisError

from feedback.inference.base import (
    ChatGenerationRequest,
    ChatTurn,
    GenerationFinished,
    InferenceBusy,
    InferenceClient,
    InferenceUnavailable,
    PromptTooLong,
)
from feedback.models import OPEN_STATUSES, Message, MessageStatus
from feedback.services.answer_relay import (
    RelayWriter,
    follow_relayed,
    forget_relayed,
    relay_enabled,
    shown_after,
)
from feedback.services.chat import (
    ChatInputError,
    do_cancel_answer,
    do_finish_answer,
    do_save_partial_answer,
    do_start_answer,
)
from feedback.services.chat_tree import path_to
from feedback.services.history import HistoryTurn, fit_history
from feedback.services.shared_cache import CACHE_ERRORS

log = logging.getLogger(__name__)
T = TypeVar("T")

EventKind = Literal["reset", "token", "done"]
# A stream following another process's run waits at most this long for the words its page
# already shows to be saved (they are, milliseconds after the send's response).
SAVED_WAIT_S = 5.0
BUSY_MESSAGE = "The model is busy right now; try again in a moment."


@dataclass(frozen=True)
class StreamEvent:
    kind: EventKind
    text: str = ""


def storable(piece: str) -> str:
    """Model text as the database can hold it: a NUL (a byte-level token can spell one) becomes
    U+FFFD, as any other byte that is not text does; PostgreSQL refuses NUL in text."""
    return piece.replace("\x00", "\N{REPLACEMENT CHARACTER}")


def stop_key(answer_id: int) -> str:
    return f"palmloop:stop-answer:{answer_id}"


def watched_key(answer_id: int) -> str:
    """Refreshed by a stream in another process that follows this answer: the run that writes
    it counts that page as watching (see ``_should_stop``)."""
    return f"palmloop:answer-watched:{answer_id}"


def stop_answers(answers: Iterable[Message]) -> None:
    """Stop: a pending answer closes at once, a streaming one at its run's next check, in
    whichever process runs it. A streaming answer whose run cannot be told (another process's,
    with the cache unreachable) is closed in the database at once."""
    for answer in answers:
        told = request_stop(answer.pk)
        do_cancel_answer(answer=answer, streaming_too=not told)


def request_stop(answer_id: int) -> bool:
    """Ask whichever process runs this answer to stop it: a run in this process sees its flag
    at the next piece; one in another process sees the shared cache key within
    ``STREAM_STOP_CHECK_S``. False when no run could be told: none runs here and the cache is
    unreachable."""
    run = _runs.get(answer_id)
    if run is not None:
        run.stop_requested = True  # a plain attribute write: safe from the sync thread
    try:
        cache.set(stop_key(answer_id), 1, timeout=3600)
    except CACHE_ERRORS as exc:
        log.warning("answer %s: stop not shared, the cache is unreachable: %s", answer_id, exc)
        return run is not None
    return True


@dataclass
class AnswerRun:
    answer_id: int
    content: str = ""
    finished: bool = False
    watchers: set[asyncio.Queue[StreamEvent]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    last_watched: float = field(default_factory=time.monotonic)
    stop_requested: bool = False
    # Another process claimed the answer first: this run's pages follow it in the database.
    claimed_elsewhere: bool = False
    # A page that another process serves follows this run (see ``answer_relay``).
    watched_elsewhere: bool = False
    # The shared cache failed at the last check (logged once, not at every check).
    cache_unreachable: bool = False
    # Set at the first piece, or when the run ends without one (see ``text_once_begun``).
    begun: threading.Event = field(default_factory=threading.Event)
    # The text when ``begun`` was set: the first piece, saved to the database at once.
    first_words: str = ""
    # Where its database work runs, in order (see ``_in_db_thread``).
    db_thread: ThreadPoolExecutor = field(default_factory=lambda: next(_NEXT_RUNS_DB_THREAD))
    # The claim, made already by the send that created the answer (see ``start_answer_soon``):
    # the client and request, or what the claim raised. None: the run claims it itself.
    claimed: tuple[InferenceClient, ChatGenerationRequest | None] | Exception | None = None

    @property
    def claimed_here(self) -> bool:
        """Whether the send that created the answer claimed it: streaming, its request made."""
        return isinstance(self.claimed, tuple) and self.claimed[1] is not None

    def begin(self) -> None:
        """Mark the run begun (on the loop that writes it), with what it holds now."""
        self.first_words = self.content
        self.begun.set()

    def text_once_begun(self, timeout: float) -> str:
        """From any thread: the answer's first words, once the first piece is written or the run
        has ended, or "" if neither happens within ``timeout`` seconds. A send's response
        carries them, so they do not wait for the page to open its stream. Exactly the text
        saved at the first piece, never more (the run may have written more by the time the
        sending thread wakes): a stream that another process serves waits until the database
        holds what the page shows (``_wait_until_saved``), and later pieces are saved only at
        the next flush."""
        return self.first_words if self.begun.wait(timeout) else ""

    def publish(self, event: StreamEvent) -> None:
        for queue in self.watchers:
            queue.put_nowait(event)

    async def watch(self) -> AsyncGenerator[StreamEvent, None]:
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        self.watchers.add(queue)
        try:
            yield StreamEvent("reset", self.content)
            if self.finished:
                yield StreamEvent("done")
                return
            while True:
                event = await queue.get()
                yield event
                if event.kind == "done":
                    return
        finally:
            self.watchers.discard(queue)
            self.last_watched = time.monotonic()


ClientFactory = Callable[[], InferenceClient]
_runs: dict[int, AnswerRun] = {}
_serving_loop: asyncio.AbstractEventLoop | None = None


def serve_streams_from(loop: asyncio.AbstractEventLoop | None) -> None:
    """Declare the event loop that serves this process's streams (called by the ASGI entry
    point): answers created from then on start writing at once, on that loop."""
    global _serving_loop
    _serving_loop = loop


def start_answer_soon(
    answer_id: int,
    client: ClientFactory,
    ready: Callable[[], InferenceClient | None] = lambda: None,
    *,
    answer: Message | None = None,
) -> AnswerRun | None:
    """Start writing a new pending answer now, before its page opens the stream (from any
    thread, once the creating transaction commits), and return its run. Without a serving
    loop, or with ``CHAT_START_ON_SEND`` off, the answer waits for its first stream as before
    (None).

    ``ready``: the inference client if it is loaded already, else None. With one, the calling
    thread (the send's) claims the answer itself, on its own connection, and the run goes
    straight to the model: a burst of sends no longer queues its claims on the runs' database
    threads, each one more trip and more queries between the send and the first token. Never
    a client still loading: the send must not wait seconds for it. ``answer``: the answer as
    the send created it, with its conversation (the claim then need not load them again)."""
    loop = _serving_loop
    if loop is None or loop.is_closed() or not settings.CHAT_START_ON_SEND:
        return None
    run = AnswerRun(answer_id)

    def schedule() -> None:
        # Registered before the claim: a stream that opens meanwhile watches this run, rather
        # than taking the answer, no longer pending, for another process's.
        if _runs.setdefault(answer_id, run) is not run:  # a page's stream started it first
            run.begin()
            return
        loaded = ready()
        if loaded is not None:
            try:
                run.claimed = _claim_answer(answer_id, lambda: loaded, answer)
            except Exception as exc:  # the run records it, as it would its own claim's
                run.claimed = exc
        try:
            loop.call_soon_threadsafe(_start, answer_id, client, run)
        except RuntimeError:  # the loop closed since (shutting down): the sweep closes it
            _forget(run)
            run.begin()

    transaction.on_commit(schedule)
    return run


def _forget(run: AnswerRun) -> None:
    if _runs.get(run.answer_id) is run:
        del _runs[run.answer_id]


def _claim_answer(
    answer_id: int, client_factory: ClientFactory, answer: Message | None = None
) -> tuple[InferenceClient, ChatGenerationRequest | None]:
    """The inference client, and the answer's request: load the conversation path, fit it to
    the context and mark the answer streaming. Made by the send that created the answer
    (``answer``: as it created it), or else in one trip to the runs' database thread, which the
    first token waits on (the client is made once per process: loading a policy takes seconds,
    so not on the event loop). No request when the answer is no longer pending (stopped, or
    taken by another process)."""
    client = client_factory()
    if relay_enabled():  # an old relayed text goes before the claim, which followers await
        forget_relayed(answer_id)
    if answer is None:
        answer = Message.objects.select_related("conversation").get(pk=answer_id)
    path = path_to(answer)
    conversation = answer.conversation
    max_new_tokens = int(answer.sampling_params.get("max_new_tokens", 256))
    fitted = fit_history(
        conversation.system_prompt,
        [HistoryTurn(m.role, m.content) for m in path[:-1]],
        count_tokens=lambda turns: client.count_tokens(
            [ChatTurn(t.role, t.content) for t in turns]
        ),
        context_length=client.context_length(),
        max_new_tokens=max_new_tokens,
    )
    if not do_start_answer(
        answer_id=answer_id, model_version="", dropped_turns=fitted.dropped_turns
    ):
        return client, None
    return client, ChatGenerationRequest(
        messages=[ChatTurn(t.role, t.content) for t in fitted.messages],
        temperature=float(answer.sampling_params.get("temperature", 0.7)),
        max_new_tokens=fitted.max_new_tokens,
        user=str(conversation.owner_id),
    )


async def watch_answer(
    answer_id: int, client: ClientFactory, shown: int = 0
) -> AsyncGenerator[StreamEvent, None]:
    """Events for one page: everything so far, then new pieces, then "done".

    ``client`` is called only when this process has to write the answer (loading a policy is
    slow and may fail; a failure closes the answer with the reason). ``shown``: how many
    characters of the answer the page already shows (the send's response carries the first
    words): a stream that follows another process's run opens with no fewer.
    """
    run = _runs.get(answer_id)
    if run is None:
        answer = await Message.objects.aget(pk=answer_id)
        run = _runs.get(answer_id)  # another page of this process may have started it meanwhile
        if run is None and answer.status == MessageStatus.PENDING:
            run = _start(answer_id, client)
        elif run is None and answer.status == MessageStatus.STREAMING:
            async with aclosing(_follow_elsewhere(answer_id, shown)) as followed:
                async for event in followed:
                    yield event
            return
        elif run is None:
            yield StreamEvent("reset", answer.content)
            yield StreamEvent("done")
            return
    async with aclosing(run.watch()) as events:
        async for event in events:
            if event.kind == "done" and run.claimed_elsewhere:
                break
            yield event
    if run.claimed_elsewhere:  # written by another process: follow it there
        async with aclosing(_follow_elsewhere(answer_id, shown)) as followed:
            async for event in followed:
                yield event


def _start(answer_id: int, client: ClientFactory, run: AnswerRun | None = None) -> AnswerRun:
    """Start the answer's run on this loop, unless it has one: the run a send registered (from
    its thread, at any moment: hence ``setdefault``) is started, never replaced."""
    run = _runs.setdefault(answer_id, run or AnswerRun(answer_id))
    if run.task is not None:
        return run
    # A context of its own: the run outlives the request that started it, and asgiref ties
    # thread-sensitive calls (the cache's) to the executor of the request whose context they
    # run in.
    run.task = asyncio.get_running_loop().create_task(
        _write_answer(run, client), context=contextvars.Context()
    )
    return run


async def _follow_elsewhere(
    answer_id: int, shown_chars: int = 0
) -> AsyncGenerator[StreamEvent, None]:
    """A run in another process: its pieces as they are relayed through Redis, or its saved
    progress in the database when there is no Redis or it fails. Not before the database holds
    the ``shown_chars`` the page shows (see ``_wait_until_saved``)."""
    await _wait_until_saved(answer_id, shown_chars)
    shown: str | None = None  # what the page shows: the database takes over from there
    if relay_enabled():

        async def saved() -> tuple[str, bool]:
            answer = await Message.objects.aget(pk=answer_id)
            return answer.content, answer.is_open

        try:
            relayed = follow_relayed(answer_id, saved, lambda: _mark_watched(answer_id))
            async with aclosing(relayed) as pieces:
                async for kind, text in pieces:
                    shown = shown_after(shown or "", (kind, text))
                    yield StreamEvent("reset" if kind == "reset" else "token", text)
            yield StreamEvent("done")
            return
        except (RedisError, OSError) as exc:
            log.warning("answer %s: following through Redis failed (%s)", answer_id, exc)
    async with aclosing(_follow_from_database(answer_id, shown)) as followed:
        async for event in followed:
            yield event


async def _wait_until_saved(answer_id: int, chars: int) -> None:
    """Wait (``SAVED_WAIT_S`` at most) until the answer's saved text has ``chars`` characters,
    or it is closed. The run tells the send its first words before it saves them, so a page
    can show words that another process does not see yet; opening with less would wipe them
    from the page until they came again."""
    deadline = time.monotonic() + SAVED_WAIT_S
    while chars > 0:
        answer = await Message.objects.aget(pk=answer_id)
        if len(answer.content) >= chars or not answer.is_open or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


async def _mark_watched(answer_id: int) -> None:
    """Tell the run writing this answer in another process that a page here still watches."""
    watched_for = settings.STREAM_RECONNECT_GRACE_S + 2 * settings.STREAM_FLUSH_S + 1
    await cache.aset(watched_key(answer_id), 1, timeout=watched_for)


async def _try_mark_watched(answer_id: int, failed_before: bool) -> bool:
    """:func:`_mark_watched`; False when the cache is unreachable (logged when it was not
    before). That run, seeing no mark, goes on as long as it cannot read the cache either
    (``_should_stop``)."""
    try:
        await _mark_watched(answer_id)
    except CACHE_ERRORS as exc:
        if not failed_before:
            log.warning("answer %s: watch not shared, the cache is unreachable: %s", answer_id, exc)
        return False
    return True


async def _follow_from_database(
    answer_id: int, shown: str | None = None
) -> AsyncGenerator[StreamEvent, None]:
    """A run in another process: stream its saved progress until it closes, telling that run
    (through the cache) that a page still watches. ``shown``: what the page already shows
    (taking over from a relay that failed); the page never goes back to an older save."""
    sent = shown or ""
    if shown is None:
        yield StreamEvent("reset", sent)
    marked = True
    while True:
        marked = await _try_mark_watched(answer_id, failed_before=not marked)
        answer = await Message.objects.aget(pk=answer_id)
        if answer.content.startswith(sent) and len(answer.content) > len(sent):
            yield StreamEvent("token", answer.content[len(sent) :])
            sent = answer.content
        elif not sent.startswith(answer.content):  # not merely behind: it differs
            sent = answer.content
            yield StreamEvent("reset", sent)
        if not answer.is_open:
            yield StreamEvent("done")
            return
        await asyncio.sleep(settings.STREAM_FLUSH_S)


async def _should_stop(run: AnswerRun) -> str:
    """Why the run must stop now, or "" to go on. The cache is read in a worker thread, not
    Django's one sync thread, where a request's sync code may be running (or waiting)."""
    if run.stop_requested:
        return "stopped"
    keys = [stop_key(run.answer_id), watched_key(run.answer_id)]
    try:
        flags = await sync_to_async(cache.get_many, thread_sensitive=False)(keys)
    except CACHE_ERRORS as exc:
        # Without the flags: a Stop pressed in another process closed the answer in the
        # database (``stop_answers``); pages elsewhere are taken to watch, since they cannot say.
        if not run.cache_unreachable:
            log.warning("answer %s: flags unread, the cache is unreachable: %s", run.answer_id, exc)
        run.cache_unreachable = True
        run.last_watched = time.monotonic()
        still_open = await _in_db_thread(run, _is_open)(run.answer_id)
        return "" if still_open else "stopped"
    run.cache_unreachable = False
    if flags.get(keys[0]):
        return "stopped"
    run.watched_elsewhere = bool(flags.get(keys[1]))
    if run.watchers or run.watched_elsewhere:  # a page here, or one in another process
        run.last_watched = time.monotonic()
    elif time.monotonic() - run.last_watched > settings.STREAM_RECONNECT_GRACE_S:
        return "page closed"
    return ""


# The runs' database work, on threads of their own (each with its connection): never queued
# behind a request's sync code, and free while a send waits for its answer's first piece
# (``AnswerRun.text_once_begun``), whichever thread that send runs on. Several, so that answers
# sent together are claimed together; each run keeps to one, so its calls stay in order. Handed
# out in turn: by answer id, the answers of a burst of first messages (ids two apart, after
# their questions) all fell on every other thread.
_RUNS_DB_THREADS = tuple(
    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"answer-runs-db-{i}") for i in range(4)
)
_NEXT_RUNS_DB_THREAD: Iterator[ThreadPoolExecutor] = itertools.cycle(_RUNS_DB_THREADS)


def _in_db_thread(run: AnswerRun, work: Callable[..., T]) -> Callable[..., Awaitable[T]]:
    """``work`` for ``run`` on its database thread, which keeps one connection from
    the pool between calls (lending it back after each call cost 4 ms, on the first token's
    path). A connection the database dropped (it restarted) is replaced and the work tried once
    more: the pool lends only checked connections. A run belongs to no request, so nothing else
    would ever do that for its connection."""

    def on_a_live_connection(*args: Any, **kwargs: Any) -> T:
        try:
            return work(*args, **kwargs)
        except (InterfaceError, OperationalError):
            if not _connection_broken():
                raise
            log.warning("answer %s: the database connection was lost; retrying", run.answer_id)
            connections["default"].close()
            return work(*args, **kwargs)

    return sync_to_async(on_a_live_connection, thread_sensitive=False, executor=run.db_thread)


def _connection_broken() -> bool:
    """Whether this thread's connection is gone (psycopg marks one the server dropped; a
    SQLite connection has neither mark, and a locked database is not a lost connection)."""
    raw = connections["default"].connection
    return raw is None or bool(getattr(raw, "closed", False) or getattr(raw, "broken", False))


def close_run_connections() -> None:
    """Close the database connections of the runs' threads (before a test database is
    dropped: they are kept open between calls)."""
    for executor in _RUNS_DB_THREADS:
        executor.submit(connections.close_all).result()


def _is_open(answer_id: int) -> bool:
    return Message.objects.filter(pk=answer_id, status__in=OPEN_STATUSES).exists()


def _set_model_version(answer_id: int, model_version: str) -> None:
    Message.objects.filter(pk=answer_id).update(model_version=model_version[:80])


async def _write_answer(run: AnswerRun, client_factory: ClientFactory) -> None:
    started = time.monotonic()
    first_token_ms: int | None = None
    finished: GenerationFinished | None = None
    status, error, reason = MessageStatus.COMPLETE, "", ""
    ours = True  # the answer's end is this run's to record
    relay: RelayWriter | None = None  # to streams in other web processes
    try:
        if run.claimed is None:
            claimed = await _in_db_thread(run, _claim_answer)(run.answer_id, client_factory)
        elif isinstance(run.claimed, Exception):
            raise run.claimed
        else:
            claimed = run.claimed
        client, request = claimed
        if request is None:  # stopped before it started, or taken by another process
            ours = False  # closed already, or written there: nothing to record here
            answer = await _in_db_thread(run, Message.objects.get)(pk=run.answer_id)
            run.claimed_elsewhere = answer.status == MessageStatus.STREAMING
            return
        last_flush = last_check = time.monotonic()
        relay = RelayWriter(run.answer_id) if relay_enabled() else None
        stream = client.stream_chat(request)
        try:
            async for item in stream:
                if isinstance(item, GenerationFinished):
                    finished = item
                    continue
                item = storable(item)
                run.content += item
                if first_token_ms is None:
                    first_token_ms = int((time.monotonic() - started) * 1000)
                    run.begin()  # the send's response carries these words: not a moment later
                    # Saved at once: a stream that another process serves waits for it
                    # (``_wait_until_saved``), so that it opens with the words the page shows.
                    await _in_db_thread(run, do_save_partial_answer)(
                        answer_id=run.answer_id, content=run.content
                    )
                    last_flush = time.monotonic()
                run.publish(StreamEvent("token", item))
                if relay is not None:
                    relay.add(item)
                now = time.monotonic()
                if run.stop_requested or now - last_check >= settings.STREAM_STOP_CHECK_S:
                    last_check = now
                    reason = await _should_stop(run)
                    if reason:
                        status = MessageStatus.CANCELLED
                        break
                    if relay is not None and run.watched_elsewhere:
                        relay.activate(run.content)
                if now - last_flush >= settings.STREAM_FLUSH_S:
                    last_flush = now
                    await _in_db_thread(run, do_save_partial_answer)(
                        answer_id=run.answer_id, content=run.content
                    )
        finally:
            await stream.aclose()
    except (ChatInputError, PromptTooLong) as exc:
        status, error = MessageStatus.FAILED, str(exc)
    except InferenceBusy:
        status, error = MessageStatus.FAILED, BUSY_MESSAGE
    except InferenceUnavailable as exc:
        status, error = MessageStatus.FAILED, f"The model is unavailable: {exc}"
    except asyncio.CancelledError:
        status, error = MessageStatus.FAILED, "interrupted: the server is shutting down"
        raise
    except Exception:
        log.exception("answer %s failed", run.answer_id)
        status, error = MessageStatus.FAILED, "The answer failed because of a server error."
    finally:
        try:
            if ours:
                await _in_db_thread(run, do_finish_answer)(
                    answer_id=run.answer_id,
                    status=status,
                    content=run.content,
                    finish_reason=reason or (finished.finish_reason if finished else ""),
                    prompt_tokens=finished.prompt_tokens if finished else None,
                    completion_tokens=finished.completion_tokens if finished else None,
                    first_token_ms=first_token_ms,
                    latency_ms=int((time.monotonic() - started) * 1000),
                    error=error,
                )
            if finished is not None:
                await _in_db_thread(run, _set_model_version)(run.answer_id, finished.model_version)
            # Not on Django's sync thread: a send waiting there for ``begun`` would hold it up.
            # Unreachable cache: the flag, if any, expires on its own.
            with contextlib.suppress(*CACHE_ERRORS):
                await sync_to_async(cache.delete, thread_sensitive=False)(stop_key(run.answer_id))
        except Exception:  # the database or cache is down: the start-up sweep closes it later
            log.exception("answer %s: could not record its end", run.answer_id)
        finally:  # the pages are told in any case, and the run is forgotten
            run.finished = True
            if not run.begun.is_set():
                run.begin()
            run.publish(StreamEvent("done"))
            _forget(run)
            if relay is not None:  # then other processes' pages: after the database's end
                await relay.aclose()
