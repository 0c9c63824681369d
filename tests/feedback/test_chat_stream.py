"""Answers streamed from the real in-process engine through the async SSE view."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.test import RequestFactory
from django.urls import reverse
from factories import ConversationFactory
from sse_streams import logged_in_client, open_stream, parse_events
from tiny_policy import build_tiny_policy

from feedback.inference.base import GenerationFinished
from feedback.inference.factory import get_inference_client
from feedback.models import Conversation, Message, MessageStatus
from feedback.services.answer_runs import BUSY_MESSAGE, StreamEvent, watch_answer
from feedback.services.chat import do_send_message, do_update_sampling
from feedback.views import chat_stream
from model_runtime.sampling import SamplingParams

pytestmark = pytest.mark.django_db(transaction=True)


def new_turn(max_new_tokens: int = 40, temperature: float = 0.0) -> tuple[Conversation, Message]:
    conversation = ConversationFactory()
    do_update_sampling(
        conversation=conversation, temperature=temperature, max_new_tokens=max_new_tokens
    )
    turn = do_send_message(conversation=conversation, text="Tell me about the river.")
    return conversation, turn.answer


def test_pieces_arrive_one_by_one_and_the_answer_is_saved(policy: Path) -> None:
    conversation, answer = new_turn(max_new_tokens=24)

    async def read() -> tuple[list[bytes], list[float]]:
        chunks, times = [], []
        async for chunk in await open_stream(conversation, answer):
            chunks.append(chunk)
            times.append(time.monotonic())
        return chunks, times

    chunks, _ = asyncio.run(read())
    events = parse_events(chunks)
    kinds = [e[0] for e in events]
    assert kinds[0] == "reset" and kinds[-1] == "done"
    tokens = [e[1] for e in events if e[0] == "token"]
    answer.refresh_from_db()
    assert len(tokens) >= 3, (events, answer.status, answer.error, answer.content)
    assert sum(1 for c in chunks if b"event: token" in c) == len(tokens)
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE
    assert answer.finish_reason in ("stop", "length") and answer.completion_tokens
    assert answer.model_version.startswith("tiny-v1@")
    assert answer.first_token_ms is not None and answer.latency_ms is not None
    done_html = events[-1][1]
    assert f'id="msg-{answer.pk}"' in done_html and "Regenerate" in done_html
    assert "sse-connect" not in done_html  # the finished message stops streaming
    tokens = re.findall(r'name="csrfmiddlewaretoken" value="([^"]*)"', done_html)
    assert tokens and all(tokens)  # its forms carry the page's CSRF token


async def read_then_stop(
    conversation: Conversation, answer: Message, *, after_tokens: int
) -> list[bytes]:
    """The whole stream, pressing stop (as the owner) once ``after_tokens`` pieces arrived."""
    chunks: list[bytes] = []
    async for chunk in await open_stream(conversation, answer):
        chunks.append(chunk)
        if sum(b"event: token" in c for c in chunks) == after_tokens:
            client = await logged_in_client(conversation.owner)
            url = reverse("chat_stop", args=[conversation.pk, answer.pk])
            assert (await client.post(url)).status_code == 302
    return chunks


def test_stop_keeps_what_was_written(policy: Path, settings: Any) -> None:
    settings.STREAM_STOP_CHECK_S = 0.0
    conversation, answer = new_turn(max_new_tokens=150)

    events = parse_events(asyncio.run(read_then_stop(conversation, answer, after_tokens=3)))
    assert events[-1][0] == "done"
    answer.refresh_from_db()
    assert answer.status == MessageStatus.CANCELLED, answer.error
    assert answer.finish_reason == "stopped"
    assert answer.content and len([e for e in events if e[0] == "token"]) < 150
    assert "Stopped." in events[-1][1]


def test_a_stop_in_this_process_takes_effect_at_the_next_piece(policy: Path, settings: Any) -> None:
    """The run lives in this process: stop needs no cache poll (the poll is an hour away)."""
    settings.STREAM_STOP_CHECK_S = 3600.0
    conversation, answer = new_turn(max_new_tokens=150)

    events = parse_events(asyncio.run(read_then_stop(conversation, answer, after_tokens=3)))
    answer.refresh_from_db()
    assert answer.status == MessageStatus.CANCELLED, answer.error
    assert answer.finish_reason == "stopped"
    assert len([e for e in events if e[0] == "token"]) < 150


def test_a_reconnect_picks_the_stream_up(policy: Path, settings: Any) -> None:
    settings.STREAM_RECONNECT_GRACE_S = 30
    conversation, answer = new_turn(max_new_tokens=60)

    async def read_twice() -> tuple[str, list[tuple[str, str]]]:
        first = await open_stream(conversation, answer)
        seen = ""
        async for chunk in first:
            for kind, data in parse_events([chunk]):
                seen += data if kind == "token" else ""
            if seen:
                break
        await first.aclose()  # type: ignore[attr-defined]
        second = [chunk async for chunk in await open_stream(conversation, answer)]
        return seen, parse_events(second)

    seen, events = asyncio.run(read_twice())
    assert events[0][0] == "reset" and events[-1][0] == "done"
    assert events[0][1].startswith(seen)  # everything written so far comes first
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE


def test_a_busy_engine_says_so(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    from feedback.inference.factory import reset_inference_client

    # A long context lets the blocking request run for seconds, not a fraction of one.
    settings.POLICY_DIR = build_tiny_policy(
        tmp_path_factory.mktemp("policy") / "long-v1", max_seq_len=4096
    )
    settings.INFERENCE_URL = ""
    reset_inference_client()
    settings.ENGINE_MAX_BATCH = 1
    settings.ENGINE_MAX_QUEUE = 0
    client = get_inference_client()
    engine = client.engine  # type: ignore[attr-defined]
    # Occupy the only slot with a long greedy request.
    blocker = engine.submit(
        [engine.tokenizer.user_id], SamplingParams(temperature=0.0, max_new_tokens=2000)
    )
    conversation, answer = new_turn(max_new_tokens=10)

    async def read() -> list[bytes]:
        return [chunk async for chunk in await open_stream(conversation, answer)]

    events = parse_events(asyncio.run(read()))
    blocker.cancel()
    reset_inference_client()
    answer.refresh_from_db()
    assert answer.status == MessageStatus.FAILED and answer.error == BUSY_MESSAGE
    assert "busy" in events[-1][1]


def test_a_missing_policy_fails_the_answer_clearly(settings: Any, tmp_path: Path) -> None:
    from feedback.inference.factory import reset_inference_client

    settings.POLICY_DIR = tmp_path / "nothing-here"
    settings.INFERENCE_URL = ""
    reset_inference_client()
    conversation, answer = new_turn()

    async def read() -> list[bytes]:
        return [chunk async for chunk in await open_stream(conversation, answer)]

    events = parse_events(asyncio.run(read()))
    answer.refresh_from_db()
    assert answer.status == MessageStatus.FAILED
    assert "unavailable" in answer.error and "nothing-here" in answer.error
    assert events[-1][0] == "done"


class _NulWritingClient:
    """An engine whose answer spells a NUL byte (a byte-level token can)."""

    def context_length(self) -> int:
        return 512

    def count_tokens(self, messages: Any) -> int:
        return 10

    async def stream_chat(self, request: Any) -> AsyncIterator[str | GenerationFinished]:
        for piece in ("Tab", "\x00", "le."):
            yield piece
        yield GenerationFinished("stop", 10, 3, "nul@1")


def test_model_output_with_a_nul_byte_is_kept(settings: Any) -> None:
    """PostgreSQL text cannot hold NUL: it is stored (and shown) as U+FFFD."""
    _, answer = new_turn()

    async def read() -> list[StreamEvent]:
        return [e async for e in watch_answer(answer.pk, _NulWritingClient)]

    events = asyncio.run(read())
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE, answer.error
    assert answer.content == "Tab\N{REPLACEMENT CHARACTER}le."
    assert "\x00" not in "".join(e.text for e in events)


def test_the_stream_hands_its_database_connection_back_before_streaming() -> None:
    """A stream lasts as long as its answer: the connection its checks used goes back to the
    pool at once, and so does the one that renders the finished message."""
    conversation, answer = new_turn()
    request = RequestFactory().get("/")
    request.user = conversation.owner

    def in_a_request_thread() -> tuple[bool, bool, bool]:
        allowed = chat_stream._may_watch(request, conversation.pk, answer.pk)
        released_after_check = connection.connection is None
        chat_stream._render_done(answer.pk, request)
        return allowed, released_after_check, connection.connection is None

    with ThreadPoolExecutor(max_workers=1) as thread:
        allowed, after_check, after_render = thread.submit(in_a_request_thread).result()
    assert allowed and after_check and after_render


@pytest.mark.parametrize(
    ("query", "shown"),
    [
        ("", 0),
        ("?shown=12", 12),
        ("?shown=-3", 0),
        ("?shown=abc", 0),
        ("?shown=99999999999", chat_stream.MAX_SHOWN),
        ("?shown=999999999", chat_stream.MAX_SHOWN),
        ("?shown=%C2%B2", 0),  # a digit to str.isdigit, not to int
        ("?shown=" + "9" * 5000, 0),  # longer than int parses
    ],
)
def test_the_page_says_how_much_it_shows_in_the_stream_url(query: str, shown: int) -> None:
    assert chat_stream._shown(RequestFactory().get(f"/stream/{query}")) == shown


def test_line_breaks_of_every_kind_reach_the_browser_whole() -> None:
    # SSE ends a line at CRLF, CR or LF: model text with a bare CR must not cut a data field,
    # and characters that are not SSE line ends (NEL, LINE SEPARATOR) stay inside it.
    text = "one\r\ntwo\rthree\nfour\x85five\u2028six"
    events = parse_events([chat_stream.sse("token", text)])
    assert events == [("token", "one\ntwo\nthree\nfour\x85five\u2028six")]
