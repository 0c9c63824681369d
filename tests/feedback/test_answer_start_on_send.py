"""An answer starts writing when it is sent, before its page opens the stream (under uvicorn,
where ``webapp.asgi`` declares the loop that serves the streams)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.urls import reverse
from django.utils.html import escape
from factories import ConversationFactory
from sse_streams import logged_in_client, parse_events, read_stream

from feedback.models import Conversation, Message, MessageStatus
from feedback.services.answer_runs import serve_streams_from

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def conversation() -> Iterator[Conversation]:
    conversation = ConversationFactory(temperature=0.0, max_new_tokens=16)
    yield conversation
    serve_streams_from(None)


async def send_and_wait(conversation: Conversation, *, wait_s: float) -> Message:
    """Send through the view with this test's loop serving streams; no page opens a stream.
    Returns the answer once it closes, or as it stands after ``wait_s``."""
    serve_streams_from(asyncio.get_running_loop())
    client = await logged_in_client(conversation.owner)
    response = await client.post(
        reverse("chat_send", args=[conversation.pk]),
        {"text": "Tell me about the river."},
        headers={"HX-Request": "true"},
    )
    assert response.status_code == 200
    answer = await Message.objects.aget(conversation=conversation, role="assistant")
    deadline = time.monotonic() + wait_s
    while answer.is_open and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await answer.arefresh_from_db()
    return answer


def test_the_answer_is_written_before_any_page_watches(
    policy: Path, conversation: Conversation
) -> None:
    async def scenario() -> tuple[Message, bytes]:
        answer = await send_and_wait(conversation, wait_s=60)
        return answer, await read_stream(conversation, answer)

    answer, body = asyncio.run(scenario())
    assert answer.status == MessageStatus.COMPLETE, answer.error
    assert answer.content and answer.first_token_ms is not None
    # A page that opens the stream afterwards gets the whole answer at once, then "done".
    events = parse_events([body])
    assert [kind for kind, _ in events] == ["reset", "done"]
    assert events[0][1] == escape(answer.content)
    assert f'id="msg-{answer.pk}"' in events[1][1]


def test_with_start_on_send_off_the_answer_waits_for_its_page(
    policy: Path, conversation: Conversation, settings: Any
) -> None:
    settings.CHAT_START_ON_SEND = False
    answer = asyncio.run(send_and_wait(conversation, wait_s=0.5))
    assert answer.status == MessageStatus.PENDING
    body = asyncio.run(read_stream(conversation, answer))  # the page's stream starts it
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE and answer.content
    assert parse_events([body])[-1][0] == "done"


def test_without_a_serving_loop_the_answer_waits_for_its_page(
    policy: Path, conversation: Conversation, client: Any
) -> None:
    """The sync test client (like WSGI) has no loop that outlives the request."""
    client.force_login(conversation.owner)
    response = client.post(
        reverse("chat_send", args=[conversation.pk]), {"text": "Hello"}, HTTP_HX_REQUEST="true"
    )
    assert response.status_code == 200
    time.sleep(0.3)
    answer = Message.objects.get(conversation=conversation, role="assistant")
    assert answer.status == MessageStatus.PENDING
