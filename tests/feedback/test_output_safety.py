"""Hostile model output (and user text) renders inert in every place a message is shown."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from factories import ConversationFactory
from sse_streams import open_stream

from feedback.models import Message, MessageStatus
from feedback.rendering import render_markdown
from feedback.services.chat import do_finish_answer, do_send_message, do_start_answer

PAYLOADS = [
    "<script>alert('x')</script>",
    '<img src=x onerror="alert(1)">',
    "[click me](javascript:alert(1))",
    '<a href="javascript:alert(1)">link</a>',
    '<div hx-get="/chat/new/" hx-trigger="load">htmx</div>',
    '<button hx-on:click="alert(1)">x</button>',
    "</textarea><script>alert(2)</script>",
    '<svg onload="alert(3)"></svg>',
    "<iframe src=//evil.example></iframe>",
    '<a href="data:text/html,<script>alert(4)</script>">d</a>',
]
HOSTILE = "\n\n".join(PAYLOADS)


class Elements(HTMLParser):
    """Collects every start tag and its attributes, and textarea contents."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.textareas: list[str] = []
        self._in_textarea = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "textarea":
            self._in_textarea = True
            self.textareas.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "textarea":
            self._in_textarea = False

    def handle_data(self, data: str) -> None:
        if self._in_textarea:
            self.textareas[-1] += data


def assert_inert(html: str) -> Elements:
    parsed = Elements()
    parsed.feed(html)
    for tag, attrs in parsed.tags:
        assert tag not in ("iframe", "svg", "img", "object", "embed"), tag
        if tag == "script":
            assert attrs.get("src", "").startswith("/static/"), attrs  # only our own files
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)
            assert "javascript:" not in (value or "").lower(), (tag, name, value)
            assert not (value or "").lower().startswith("data:text/html"), (tag, name)
            if name.startswith(("hx-", "data-hx-")) and name not in ("hx-headers",):
                # htmx attributes only on our own controls, never with a payload's values
                assert "trigger" not in name or value != "load", (tag, name)
                assert value not in ("/chat/new/",), (tag, name)
    return parsed


def test_markdown_renderer_drops_everything_active() -> None:
    html = render_markdown(HOSTILE)
    assert_inert(html)
    assert "&lt;script&gt;" in html  # shown as text, not dropped silently


@pytest.mark.django_db
def test_chat_page_list_and_edit_box(client: Client) -> None:
    conversation = ConversationFactory()
    client.force_login(conversation.owner)
    turn = do_send_message(conversation=conversation, text=HOSTILE)
    do_start_answer(answer_id=turn.answer.pk, model_version="v", dropped_turns=0)
    do_finish_answer(answer_id=turn.answer.pk, status=MessageStatus.COMPLETE, content=HOSTILE)
    conversation.refresh_from_db()

    page = client.get(reverse("chat", args=[conversation.pk])).content.decode()
    parsed = assert_inert(page)
    # The edit box holds the user's text exactly, and nothing broke out of it.
    assert any(PAYLOADS[-4] in t for t in parsed.textareas)
    listing = client.get(reverse("conversations")).content.decode()
    assert_inert(listing)
    thread = client.post(
        reverse("chat_show", args=[conversation.pk, turn.answer.pk]), HTTP_HX_REQUEST="true"
    ).content.decode()
    assert_inert(thread)


@pytest.mark.django_db(transaction=True)
def test_streamed_pieces_are_escaped() -> None:
    """An answer written by another process: the stream follows it from the database."""
    conversation = ConversationFactory()
    turn = do_send_message(conversation=conversation, text="hi")
    do_start_answer(answer_id=turn.answer.pk, model_version="v", dropped_turns=0)
    Message.objects.filter(pk=turn.answer.pk).update(content=HOSTILE)

    async def read() -> str:
        body = b""

        async def finish_soon() -> None:
            await asyncio.sleep(0.3)
            await sync_to_async(do_finish_answer)(
                answer_id=turn.answer.pk, status=MessageStatus.COMPLETE, content=HOSTILE
            )

        task = asyncio.create_task(finish_soon())
        async for chunk in await open_stream(conversation, turn.answer):
            body += chunk
        await task
        return body.decode()

    body = asyncio.run(read())
    assert "event: reset" in body and "event: done" in body
    for line in body.splitlines():
        if line.startswith("data: "):
            assert_inert(line[6:])
    assert "&lt;script&gt;" in body


def test_a_text_is_rendered_once_then_kept() -> None:
    """A page renders every finished answer at each load: the sanitised HTML is kept."""
    from feedback.rendering import _sanitised_html

    text = "Kept: <script>alert(1)</script> and **bold**, a one-off text for this test."
    first = render_markdown(text)
    hits = _sanitised_html.cache_info().hits
    assert render_markdown(text) == first and "<script>" not in first
    assert _sanitised_html.cache_info().hits == hits + 1
