"""The chat with its shared cache unreachable (Redis restarting or down): sends, stops, answer
runs and streams go on without the rate-limit counter, stop flags and watch marks it holds."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from answer_following import follow, shown, write_here
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from factories import ConversationFactory

from feedback.models import ChatLimits, Message, MessageStatus
from feedback.services import answer_runs
from feedback.services.chat import (
    do_finish_answer,
    do_save_partial_answer,
    do_send_message,
    do_start_answer,
)

NOTHING_LISTENS = "redis://127.0.0.1:1/0"
HTMX = {"HTTP_HX_REQUEST": "true"}


@pytest.fixture
def no_cache(settings: Any) -> None:
    """Redis is down: the cache and the relay both point where nothing listens."""
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": NOTHING_LISTENS,
        }
    }
    settings.REDIS_URL = NOTHING_LISTENS


@pytest.mark.django_db
def test_a_send_goes_ahead_uncounted(
    client: Client, no_cache: None, caplog: pytest.LogCaptureFixture
) -> None:
    limits = ChatLimits.current()
    limits.messages_per_minute = 1
    limits.save()
    conversation = ConversationFactory()
    client.force_login(conversation.owner)
    url = reverse("chat_send", args=[conversation.pk])
    with caplog.at_level(logging.WARNING, logger="feedback.services.shared_cache"):
        for text in ("first", "second"):  # over the limit of 1: nothing counts the sends
            response = client.post(url, {"text": text}, **HTMX)
            assert response.status_code == 200
            answer = Message.objects.filter(role="assistant").latest("pk")
            do_finish_answer(answer_id=answer.pk, status=MessageStatus.COMPLETE, content="ok")
    assert Message.objects.filter(role="user").count() == 2
    assert "the cache is unreachable" in caplog.text


@pytest.mark.django_db
def test_stop_closes_an_answer_another_process_writes(client: Client, no_cache: None) -> None:
    """No run here and no flag to share: the answer closes in the database, with its text."""
    conversation = ConversationFactory()
    client.force_login(conversation.owner)
    answer = do_send_message(conversation=conversation, text="hi").answer
    do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)
    do_save_partial_answer(answer_id=answer.pk, content="Half an")
    response = client.post(reverse("chat_stop", args=[conversation.pk, answer.pk]), **HTMX)
    assert response.status_code == 204
    answer.refresh_from_db()
    assert answer.status == MessageStatus.CANCELLED and answer.content == "Half an"
    do_save_partial_answer(answer_id=answer.pk, content="Half an answer")  # the run goes on
    answer.refresh_from_db()
    assert answer.content == "Half an"  # refused: a closed answer keeps what it had


@pytest.mark.django_db(transaction=True)
def test_a_run_writes_the_whole_answer(policy: Path, no_cache: None, settings: Any) -> None:
    """The run checks its flags at every piece here, and cannot read them once."""
    settings.STREAM_STOP_CHECK_S = 0.0
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=24)
    answer_id = do_send_message(conversation=conversation, text="Hello").answer.pk
    write_here(answer_id)
    answer = Message.objects.get(pk=answer_id)
    assert answer.status == MessageStatus.COMPLETE, answer.error
    assert answer.content and answer.completion_tokens


@pytest.mark.django_db(transaction=True)
def test_a_run_stops_once_its_answer_is_closed_elsewhere(no_cache: None) -> None:
    answer = do_send_message(conversation=ConversationFactory(), text="hi").answer
    do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)
    run = answer_runs.AnswerRun(answer.pk)
    assert asyncio.run(answer_runs._should_stop(run)) == ""  # open: it goes on
    assert run.cache_unreachable
    answer_runs.stop_answers([answer])  # a Stop pressed in another process
    assert asyncio.run(answer_runs._should_stop(run)) == "stopped"


@pytest.mark.django_db(transaction=True)
def test_a_page_follows_another_process_through_the_database(no_cache: None, settings: Any) -> None:
    settings.STREAM_FLUSH_S = 0.05
    answer = do_send_message(conversation=ConversationFactory(), text="Hello").answer
    do_start_answer(answer_id=answer.pk, model_version="", dropped_turns=0)

    async def scenario() -> list[Any]:
        events: list[Any] = []
        following = asyncio.create_task(follow(answer.pk, events))
        await asyncio.sleep(0.2)
        await sync_to_async(do_finish_answer)(
            answer_id=answer.pk, status=MessageStatus.COMPLETE, content="Saved text."
        )
        await asyncio.wait_for(following, 5)
        return events

    events = asyncio.run(scenario())
    assert shown(events) == "Saved text." and events[-1][1].kind == "done"
