"""Under a real uvicorn: closing the page's connection stops the answer, keeping its text."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from factories import ConversationFactory
from servicekit import clean_env, database_url_for_children, uvicorn_server

from feedback.models import Message, MessageStatus
from feedback.services.chat import do_send_message, do_update_sampling

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_closing_the_stream_cancels_the_answer(
    postgres_only: None, tmp_path: Path, tiny_policy_dir: Path
) -> None:
    conversation = ConversationFactory()
    do_update_sampling(conversation=conversation, temperature=0.0, max_new_tokens=400)
    answer = do_send_message(conversation=conversation, text="Tell me a long story.").answer
    login = Client()
    login.force_login(conversation.owner)
    cookie = {settings.SESSION_COOKIE_NAME: login.cookies[settings.SESSION_COOKIE_NAME].value}

    env = clean_env(
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=database_url_for_children(),
        POLICY_DIR=str(tiny_policy_dir),
        SECRET_KEY=settings.SECRET_KEY,  # the session cookie made here must verify there
        STREAM_RECONNECT_GRACE_S="0",
        STREAM_STOP_CHECK_S="0",
        # One thread and a larger batch budget keep the tiny model from finishing 400 tokens
        # before the test has closed the connection.
        OMP_NUM_THREADS="1",
    )
    with uvicorn_server(tmp_path / "uvicorn.log", env) as base:
        url = base + reverse("chat_stream", args=[conversation.pk, answer.pk])
        with httpx.Client(cookies=cookie, timeout=30) as http, http.stream("GET", url) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line == "event: token":
                    break
        # The connection is closed: after the grace period the answer stops.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            answer.refresh_from_db()
            if not answer.is_open:
                break
            time.sleep(0.1)
    answer.refresh_from_db()
    assert answer.status == MessageStatus.CANCELLED, (answer.status, answer.error)
    assert answer.finish_reason == "page closed"
    assert answer.content  # what was written is kept
    assert Message.objects.get(pk=answer.pk).completion_tokens is None
