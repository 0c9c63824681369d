"""An answer's pieces relayed through Redis to the streams that other web processes serve.

Several web processes behind a proxy: the send reaches one, which writes the answer; the page's
stream may reach another. That stream subscribes to the answer's channel and marks the answer
as watched (the key ``answer_runs`` already uses for that); the writing process sees the mark
at its next check, writes everything so far to a Redis string, and from then on appends each
piece to it and publishes the piece with the offset where it starts. The stream shows each
piece from where it stands. The database is still saved every ``STREAM_FLUSH_S`` and stays the
truth: a follower checks it at that pace, so a writer that died, a missed message or a Redis
restart costs smoothness, never the answer. Without Redis (the zero-setup default: one web
process) nothing is relayed and a stream written elsewhere follows the database alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# The text of an answer lives this long after its last piece (a writer that died leaves it).
CONTENT_TTL_S = 3600
# After the end: long enough for a follower that subscribed just before it to read the text.
ENDED_TTL_S = 60
END = json.dumps({"end": True})


def relay_enabled() -> bool:
    return bool(settings.REDIS_URL)


def content_key(answer_id: int) -> str:
    return f"palmloop:answer-text:{answer_id}"


def channel(answer_id: int) -> str:
    return f"palmloop:answer-pieces:{answer_id}"


def _client() -> aioredis.Redis:
    # One per writer or follower: an asyncio client belongs to the loop that made it.
    return aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5, socket_connect_timeout=2)


@functools.lru_cache(maxsize=4)
def _shared_client(url: str) -> redis.Redis:
    """One blocking client per URL for the process: its pool is thread-safe and keeps its
    connections between answers."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)


def forget_relayed(answer_id: int) -> None:
    """Drop any text relayed under this id before (a database reset since, and ids start over):
    called (from a thread, blocking) before a run claims its answer, so that no follower, which
    starts following once the answer is claimed, can take an old text for the start of this
    one. Through the process's shared client: a client of its own for each answer cost a new
    connection, 1.5-9 ms of the event loop's time on the way to the first token. Never raises."""
    try:
        client = _shared_client(settings.REDIS_URL)
    except ValueError as exc:  # REDIS_URL is not a Redis URL
        log.warning("answer %s: cannot reach Redis (%s)", answer_id, exc)
        return
    try:
        client.delete(content_key(answer_id))
    except (RedisError, OSError) as exc:
        log.warning("answer %s: could not clear its relayed text (%s)", answer_id, exc)


class RelayWriter:
    """Relays the pieces of one answer as its run writes them, once a page in another process
    follows it (``activate``; until then nothing is sent: one process alone pays nothing).
    ``add`` never waits: a task sends what has gathered since its last send, one round trip
    for several pieces when Redis is slower than the model. A Redis error ends the relaying,
    not the answer."""

    def __init__(self, answer_id: int) -> None:
        self._answer_id = answer_id
        self._redis: aioredis.Redis | None = None
        self._pending: list[str] = []  # written since the last send
        self._relayed = ""  # sent so far
        self._bytes = 0  # its UTF-8 length: what the Redis string must hold
        self._wake = asyncio.Event()
        self._closing = False
        self._broken = False
        self._task: asyncio.Task[None] | None = None

    def add(self, piece: str) -> None:
        """A new piece: sent if relaying, else nothing (``activate`` gets the text so far)."""
        if piece and self._task is not None and not self._broken:
            self._pending.append(piece)
            self._wake.set()

    def activate(self, written: str) -> None:
        """A page in another process follows the answer: relay what is ``written`` so far,
        then each piece as it comes."""
        if self._task is not None or self._broken or self._closing:
            return
        try:
            self._redis = _client()
        except ValueError as exc:  # REDIS_URL is not a Redis URL
            self._give_up(exc)
            return
        self._pending = [written] if written else []
        self._task = asyncio.get_running_loop().create_task(self._pump())
        self._wake.set()

    async def aclose(self) -> None:
        """Send what is left, then the end (call it once the answer's end is in the
        database). Never raises: the relay is a courtesy to other processes."""
        self._closing = True
        if self._task is None or self._redis is None:
            return  # never relayed: a page that follows sees the end in the database
        try:
            self._wake.set()
            await asyncio.wait_for(self._task, timeout=10)
            if not self._broken:
                async with self._redis.pipeline(transaction=True) as pipe:
                    pipe.publish(channel(self._answer_id), END)
                    pipe.expire(content_key(self._answer_id), ENDED_TTL_S)
                    await pipe.execute()
        except Exception as exc:  # Redis down, a timeout, a bug: all the same here
            self._give_up(exc)
        finally:
            self._task.cancel()
            with contextlib.suppress(Exception):
                await self._redis.aclose()

    async def _pump(self) -> None:
        assert self._redis is not None
        key, topic = content_key(self._answer_id), channel(self._answer_id)
        while not self._broken:
            await self._wake.wait()
            self._wake.clear()
            text = "".join(self._pending)
            self._pending.clear()
            if text:
                message = json.dumps({"o": len(self._relayed), "t": text})
                try:
                    async with self._redis.pipeline(transaction=True) as pipe:
                        if self._relayed:
                            pipe.append(key, text)
                        else:  # replaces a text left under this id (a database reset since)
                            pipe.set(key, text)
                        pipe.expire(key, CONTENT_TTL_S)
                        pipe.publish(topic, message)
                        stored = (await pipe.execute())[0]
                    appended = bool(self._relayed)
                    self._relayed += text
                    self._bytes += len(text.encode())
                    if appended and stored != self._bytes:
                        # Redis lost the string (restarted): the append made a new one of the
                        # last piece alone. Put the whole text back.
                        await self._redis.set(key, self._relayed, ex=CONTENT_TTL_S)
                except (RedisError, OSError) as exc:
                    self._give_up(exc)
                    return
            if self._closing and not self._pending:
                return

    def _give_up(self, exc: BaseException) -> None:
        if not self._broken:
            log.warning(
                "answer %s: relaying through Redis failed (%s); other web processes follow "
                "it in the database",
                self._answer_id,
                exc,
            )
        self._broken = True
        self._pending.clear()


Event = tuple[str, str]  # ("reset" | "token", text)


async def follow_relayed(
    answer_id: int,
    saved: Callable[[], Awaitable[tuple[str, bool]]],
    heartbeat: Callable[[], Awaitable[None]],
) -> AsyncGenerator[Event, None]:
    """Events of an answer another process writes: ("reset", everything so far), then
    ("token", piece) as each piece is published; ends when the answer is closed.

    ``saved()`` gives the answer's content and whether it is still open, from the database;
    ``heartbeat()`` tells the writer a page watches. Both run every ``STREAM_FLUSH_S``; the
    saved text moves the page on too when it is ahead (a writer that stopped relaying).
    """
    client = _client()
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel(answer_id))
        # Confirmed before the text is read: no piece published after the read is missed.
        await pubsub.get_message(timeout=2.0)
        await heartbeat()
        content, still_open = await saved()
        checked = time.monotonic()
        stored = _decoded(await client.get(content_key(answer_id)))
        # The saved text is a prefix of the answer; a stored one that is not is left over.
        shown = stored if stored is not None and stored.startswith(content) else content
        yield "reset", shown
        ended = not still_open
        while True:
            if ended or time.monotonic() - checked >= settings.STREAM_FLUSH_S:
                if not ended:
                    checked = time.monotonic()
                    await heartbeat()
                    content, still_open = await saved()
                for event in _advance(shown, 0, content):  # the database is ahead, or final
                    shown = shown_after(shown, event)
                    yield event
                if ended or not still_open:
                    return
            message = await pubsub.get_message(
                ignore_subscribe_messages=True,
                timeout=max(0.0, checked + settings.STREAM_FLUSH_S - time.monotonic()),
            )
            if message is None:
                continue
            data = json.loads(message["data"])
            if data.get("end"):
                content, still_open = await saved()
                ended = True
                continue
            offset, text = int(data["o"]), str(data["t"])
            if offset > len(shown):  # a message missed: catch up from the stored text
                stored = _decoded(await client.get(content_key(answer_id)))
                if stored is not None and stored[offset:].startswith(text):
                    text, offset = stored, 0
                else:  # the stored text is not whole (Redis restarted): wait for the database
                    continue
            for event in _advance(shown, offset, text):
                shown = shown_after(shown, event)
                yield event
    finally:
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()  # type: ignore[no-untyped-call]
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()


def _decoded(value: bytes | str | None) -> str | None:
    """A Redis string as text (bytes: the client does not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value


def shown_after(shown: str, event: Event) -> str:
    """What a page shows after ``event``."""
    kind, text = event
    return text if kind == "reset" else shown + text


def _advance(shown: str, offset: int, text: str) -> list[Event]:
    """What a page showing ``shown`` needs to show ``text`` placed at ``offset``: nothing when
    it has it already (or is ahead of it), the new end when it starts within what is shown,
    everything again when the two disagree."""
    end = offset + len(text)
    if end <= len(shown) and shown[offset:end] == text:
        return []
    if shown[offset:] == text[: len(shown) - offset]:
        return [("token", text[len(shown) - offset :])]
    return [("reset", shown[:offset] + text)]
