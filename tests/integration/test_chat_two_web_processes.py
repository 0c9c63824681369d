"""Two uvicorn web processes on one database and one Redis, as behind a proxy: the send reaches
one, which writes the answer; the page's stream reaches the other, which shows the answer
piece by piece as it is written (relayed through Redis), not in saved batches."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.test import Client
from factories import ConversationFactory
from servicekit import clean_env, database_url_for_children, uvicorn_server
from sse_streams import parse_events
from tiny_policy import build_tiny_policy

from feedback.models import ChatLimits, Message, MessageStatus
from feedback.services.chat import do_update_sampling

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

# The database is saved and checked this seldom: pieces sooner came by Redis. Far longer than
# the answer takes (1,500 tokens: 5-30 s here, by the machine's load), so that the whole
# answer must have come by Redis.
FLUSH_S = 90.0


def test_a_stream_in_another_process_shows_each_piece_as_it_is_written(
    postgres_only: None, redis_url: str, tmp_path: Path
) -> None:
    # Long enough an answer (up to 1,500 tokens) that it is still being written when the
    # second process's stream opens.
    policy = build_tiny_policy(tmp_path / "policy" / "long-v1", dim=256, depth=6, max_seq_len=2048)
    limits = ChatLimits.current()
    limits.max_new_tokens = 1500
    limits.save()
    conversation = ConversationFactory()
    do_update_sampling(conversation=conversation, temperature=0.0, max_new_tokens=1500)
    login = Client()
    login.force_login(conversation.owner)
    cookie = {settings.SESSION_COOKIE_NAME: login.cookies[settings.SESSION_COOKIE_NAME].value}
    env = clean_env(
        DATABASE_URL=database_url_for_children(),
        REDIS_URL=redis_url,
        POLICY_DIR=str(policy),
        SECRET_KEY=settings.SECRET_KEY,  # the session cookie made here must verify there
        STREAM_FLUSH_S=str(FLUSH_S),
        OMP_NUM_THREADS="1",
    )
    with (
        uvicorn_server(tmp_path / "writer.log", {**env, "VAR_DIR": str(tmp_path / "a")}) as a,
        uvicorn_server(tmp_path / "follower.log", {**env, "VAR_DIR": str(tmp_path / "b")}) as b,
        httpx.Client(cookies=cookie, timeout=60) as http,
    ):
        page = http.get(f"{a}/chat/{conversation.pk}/")
        token = re.search(r'"X-CSRFToken": "([^"]+)"', page.text)
        assert token, page.text[:300]
        sent = http.post(
            f"{a}/chat/{conversation.pk}/send/",
            data={"text": "Tell me about the river."},
            headers={"HX-Request": "true", "X-CSRFToken": token.group(1)},
        )
        assert sent.status_code == 200, sent.text[:300]
        stream_url = re.search(r'sse-connect="([^"]+)"', sent.text)
        assert stream_url, sent.text[:300]
        answer = Message.objects.get(conversation=conversation, role="assistant")
        deadline = time.monotonic() + 60
        while answer.status == MessageStatus.PENDING and time.monotonic() < deadline:
            time.sleep(0.01)  # the first process has claimed it: the second can only follow
            answer.refresh_from_db()
        assert answer.status == MessageStatus.STREAMING, answer.status
        opened = time.monotonic()
        events: list[tuple[str, str]] = []
        arrived: list[float] = []
        with http.stream("GET", b + stream_url.group(1)) as response:
            assert response.status_code == 200
            received = b""  # the server ends every line with LF: an event ends at a blank line
            for chunk in response.iter_bytes():
                received += chunk
                *whole, received = received.split(b"\n\n")
                for block in whole:
                    events += parse_events([block + b"\n\n"])
                    arrived += [time.monotonic()] * (len(events) - len(arrived))
                if events and events[-1][0] == "done":
                    break
        took = time.monotonic() - opened

    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE, answer.error
    tokens = [text for kind, text in events if kind == "token"]
    # Written by the first process while the second streamed it: many pieces, and the end
    # came through Redis too, long before the second process's next database check.
    assert events[0][0] == "reset" and events[-1][0] == "done"
    assert len(tokens) >= 10, (len(tokens), took, answer.completion_tokens)
    last_token = max(t for t, (kind, _) in zip(arrived, events, strict=True) if kind == "token")
    assert arrived[-1] - last_token < 1.0 and took < FLUSH_S, (took, arrived[-1] - last_token)
    # Everything written, shown once (a CR in the text arrives as a line feed).
    streamed = html.unescape("".join(text for kind, text in events if kind != "done"))
    assert streamed == answer.content.replace("\r\n", "\n").replace("\r", "\n")
