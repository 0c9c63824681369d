"""Relaying an answer's pieces through Redis to a stream that another web process serves."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from answer_following import follow, shown, until, write_here
from asgiref.sync import sync_to_async
from django.core.cache import cache
from factories import ConversationFactory

from feedback.models import Message, MessageStatus
from feedback.services import answer_runs
from feedback.services.answer_relay import RelayWriter, channel, content_key
from feedback.services.answer_runs import StreamEvent
from feedback.services.chat import (
    do_finish_answer,
    do_save_partial_answer,
    do_send_message,
    do_start_answer,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def streaming_answer(redis_url: str, settings: Any) -> int:
    """An answer another process is writing; its text in Redis starts empty. The database is
    checked only every 5 s here, so what a follower gets sooner came through Redis."""
    settings.REDIS_URL = redis_url
    settings.STREAM_FLUSH_S = 5.0
    answer = do_send_message(conversation=ConversationFactory(), text="Hello").answer
    do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)
    redis.Redis.from_url(redis_url).delete(content_key(answer.pk))
    return answer.pk


def answer_written_here_watched_elsewhere(settings: Any, relay_url: str) -> Message:
    """Write an answer in this process, as a page that another process serves watches it."""
    settings.REDIS_URL = relay_url
    settings.STREAM_STOP_CHECK_S = 0.0
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=32)
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk
    cache.set(answer_runs.watched_key(answer_id), 1, timeout=60)

    write_here(answer_id)
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE, answer.error
    return answer


def test_a_follower_gets_what_was_written_then_each_piece_as_it_comes(
    streaming_answer: int, redis_url: str
) -> None:
    answer_id = streaming_answer
    store = redis.Redis.from_url(redis_url)

    async def scenario() -> tuple[list[tuple[float, StreamEvent]], list[float]]:
        writer = RelayWriter(answer_id)
        writer.add("Rivers ")
        writer.add("carve ")
        await asyncio.sleep(0.1)
        assert store.get(content_key(answer_id)) is None  # nobody follows: nothing is sent
        events: list[tuple[float, StreamEvent]] = []
        following = asyncio.create_task(follow(answer_id, events))
        await until(lambda: len(events) == 1)  # the saved text: none yet
        # The follower marked the answer watched; the run sees it and starts relaying.
        assert await answer_runs._should_stop(answer_runs.AnswerRun(answer_id)) == ""
        sent_at = [time.monotonic()]
        writer.activate("Rivers carve ")  # what the run has written
        await until(lambda: shown(events) == "Rivers carve ")
        for piece in ("valleys", " over", " time."):
            sent_at.append(time.monotonic())
            writer.add(piece)
            await until(lambda piece=piece: shown(events).endswith(piece))
        await sync_to_async(do_finish_answer)(
            answer_id=answer_id, status=MessageStatus.COMPLETE, content="Rivers carve valleys."
        )
        ended = time.monotonic()
        await writer.aclose()
        await asyncio.wait_for(following, 3)
        return events, [*sent_at, ended]

    events, sent_at = asyncio.run(scenario())
    kinds = [event.kind for _, event in events]
    assert kinds[:5] == ["reset", "token", "token", "token", "token"] and kinds[-1] == "done"
    assert [event.text for _, event in events[:2]] == ["", "Rivers carve "]
    # Each piece arrived well before the 5 s database check could have shown it.
    for (arrived, _), sent in zip(events[1:5], sent_at, strict=False):
        assert arrived - sent < 1.0
    assert events[-1][0] - sent_at[-1] < 1.0  # the end too
    # The database has the last word: the text the answer was closed with.
    assert shown(events) == "Rivers carve valleys."


def test_the_run_relays_once_a_page_elsewhere_watches(
    policy: Path, redis_url: str, settings: Any
) -> None:
    """The mark a follower in another process leaves makes the run start relaying."""
    answer = answer_written_here_watched_elsewhere(settings, redis_url)
    # The whole text is in Redis, for a page that follows from now on (unwatched: nothing).
    stored = redis.Redis.from_url(redis_url).get(content_key(answer.pk))
    assert stored is not None and stored.decode() == answer.content


def test_a_text_left_under_the_answers_id_is_gone_before_the_answer_is_claimed(
    policy: Path, redis_url: str, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids start over when the database is reset, and Redis may keep an old answer's text: a
    follower, which starts once the answer is claimed, must never take it for this one's
    start (it would show the old text and skip this answer's pieces as already shown)."""
    settings.REDIS_URL = redis_url
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=8)
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk
    store = redis.Redis.from_url(redis_url)
    store.set(content_key(answer_id), "an old answer's text", ex=60)
    at_claim: list[bytes | None] = []
    claim = answer_runs.do_start_answer  # marks the answer streaming: followers start then

    def spy(*, answer_id: int, **kwargs: Any) -> Any:
        at_claim.append(store.get(content_key(answer_id)))
        return claim(answer_id=answer_id, **kwargs)

    monkeypatch.setattr(answer_runs, "do_start_answer", spy)

    write_here(answer_id)
    assert at_claim == [None]
    assert Message.objects.get(pk=answer_id).status == MessageStatus.COMPLETE


def test_a_missed_piece_is_caught_up_from_the_stored_text(
    streaming_answer: int, redis_url: str
) -> None:
    answer_id = streaming_answer
    store = redis.Redis.from_url(redis_url)

    async def scenario() -> list[tuple[float, StreamEvent]]:
        store.append(content_key(answer_id), "a")
        events: list[tuple[float, StreamEvent]] = []
        following = asyncio.create_task(follow(answer_id, events))
        await until(lambda: len(events) == 1)
        store.append(content_key(answer_id), "bc")  # "b" was never published: lost
        store.publish(channel(answer_id), json.dumps({"o": 2, "t": "c"}))
        await until(lambda: shown(events) == "abc")
        store.publish(channel(answer_id), json.dumps({"o": 1, "t": "bc"}))  # a repeat
        store.append(content_key(answer_id), "d")
        store.publish(channel(answer_id), json.dumps({"o": 3, "t": "d"}))
        await until(lambda: shown(events) == "abcd")
        await sync_to_async(do_finish_answer)(
            answer_id=answer_id, status=MessageStatus.COMPLETE, content="abcd"
        )
        store.publish(channel(answer_id), json.dumps({"end": True}))
        await asyncio.wait_for(following, 3)
        return events

    events = asyncio.run(scenario())
    assert [e.kind for _, e in events] == ["reset", "token", "token", "done"]
    assert [e.text for _, e in events[:3]] == ["a", "bc", "d"]


def test_a_follower_whose_redis_connection_drops_still_shows_the_whole_answer(
    streaming_answer: int, redis_url: str, settings: Any
) -> None:
    """Redis restarting under a page that follows: reconnected, or on the database, the page
    ends with the whole answer."""
    settings.STREAM_FLUSH_S = 0.2
    answer_id = streaming_answer
    admin = redis.Redis.from_url(redis_url)

    async def scenario() -> list[tuple[float, StreamEvent]]:
        writer = RelayWriter(answer_id)
        writer.activate("")
        events: list[tuple[float, StreamEvent]] = []
        following = asyncio.create_task(follow(answer_id, events))
        writer.add("Before the restart.")
        await until(lambda: shown(events) == "Before the restart.")
        assert admin.client_kill_filter(_type="pubsub") >= 1
        writer.add(" After it.")
        await asyncio.sleep(0.3)
        await sync_to_async(do_save_partial_answer)(
            answer_id=answer_id, content="Before the restart. After it."
        )
        writer.add(" The end.")
        await sync_to_async(do_finish_answer)(
            answer_id=answer_id,
            status=MessageStatus.COMPLETE,
            content="Before the restart. After it. The end.",
        )
        await writer.aclose()
        await asyncio.wait_for(following, 5)
        return events

    events = asyncio.run(scenario())
    assert shown(events) == "Before the restart. After it. The end."
    assert events[-1][1].kind == "done"
    # The database took over from what the page showed: the text never went back.
    assert [e.kind for _, e in events].count("reset") == 1


def test_a_follower_moves_on_with_the_saved_text_when_nothing_is_relayed(
    streaming_answer: int, settings: Any
) -> None:
    """A writer that never relays (its Redis failed, or it has none): the page still moves on
    at the pace the database is saved."""
    settings.STREAM_FLUSH_S = 0.1
    answer_id = streaming_answer

    async def scenario() -> list[tuple[float, StreamEvent]]:
        events: list[tuple[float, StreamEvent]] = []
        following = asyncio.create_task(follow(answer_id, events))
        await until(lambda: len(events) == 1)
        await sync_to_async(do_save_partial_answer)(answer_id=answer_id, content="Saved")
        await until(lambda: shown(events) == "Saved", timeout=2)
        await sync_to_async(do_save_partial_answer)(answer_id=answer_id, content="Saved more")
        await until(lambda: shown(events) == "Saved more", timeout=2)
        await sync_to_async(do_finish_answer)(
            answer_id=answer_id, status=MessageStatus.COMPLETE, content="Saved more."
        )
        await asyncio.wait_for(following, 3)
        return events

    events = asyncio.run(scenario())
    assert [e.kind for _, e in events] == ["reset", "token", "token", "token", "done"]
    assert shown(events) == "Saved more."


def test_a_string_redis_lost_is_written_whole_again(streaming_answer: int, redis_url: str) -> None:
    """Redis restarted mid-answer and lost the string: the next append would leave only the
    new piece there, so the writer puts the whole text back."""
    answer_id = streaming_answer
    store = redis.Redis.from_url(redis_url)

    async def scenario() -> None:
        writer = RelayWriter(answer_id)
        writer.add("Rivers carve ")
        writer.activate("Rivers carve ")
        await until(lambda: store.get(content_key(answer_id)) == b"Rivers carve ")
        store.delete(content_key(answer_id))
        writer.add("valleys.")
        await until(lambda: store.get(content_key(answer_id)) == b"Rivers carve valleys.")
        await writer.aclose()

    asyncio.run(scenario())


def test_closing_a_writer_nobody_followed_sends_nothing(settings: Any) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # any attempt would fail slowly

    async def scenario() -> float:
        writer = RelayWriter(1)
        writer.add("text")
        started = time.monotonic()
        await writer.aclose()
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.05


def test_a_follower_without_redis_follows_the_database(
    streaming_answer: int, settings: Any
) -> None:
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    settings.STREAM_FLUSH_S = 0.05
    answer_id = streaming_answer

    async def scenario() -> list[tuple[float, StreamEvent]]:
        events: list[tuple[float, StreamEvent]] = []
        following = asyncio.create_task(follow(answer_id, events))
        await asyncio.sleep(0.2)
        await sync_to_async(do_finish_answer)(
            answer_id=answer_id, status=MessageStatus.COMPLETE, content="Saved text."
        )
        await asyncio.wait_for(following, 5)
        return events

    events = asyncio.run(scenario())
    assert shown(events) == "Saved text." and events[-1][1].kind == "done"


def test_an_answer_is_written_whole_when_redis_is_unreachable(policy: Path, settings: Any) -> None:
    """Relaying fails from its start: the answer itself is not touched."""
    answer = answer_written_here_watched_elsewhere(settings, "redis://127.0.0.1:1/0")
    assert answer.content and answer.completion_tokens
