"""A real Celery worker runs tasks through real Redis against the test database."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.sessions.models import Session
from django.utils import timezone
from servicekit import clean_env, database_url_for_children

from feedback.tasks import clear_expired_sessions, ping
from webapp.celery import app

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def test_worker_runs_tasks_through_redis(
    redis_url: str,
    postgres_only: None,
    tmp_path: Path,
    start_worker: Callable[[dict[str, str]], subprocess.Popen[str]],
) -> None:
    assert app.conf.broker_url.startswith("redis://")
    now = timezone.now()
    Session.objects.create(
        session_key="a" * 32, session_data="x", expire_date=now - timedelta(days=1)
    )
    Session.objects.create(
        session_key="b" * 32, session_data="x", expire_date=now + timedelta(days=1)
    )

    worker = start_worker(
        clean_env(
            VAR_DIR=str(tmp_path / "var"),
            REDIS_URL=redis_url,
            DATABASE_URL=database_url_for_children(),
        )
    )
    result = ping.delay("hello")
    reply = result.get(timeout=60)
    assert reply["pong"] == "hello" and reply["worker_pid"] == worker.pid
    # The worker writes to the same Postgres database: the expired session is gone.
    assert clear_expired_sessions.delay().get(timeout=60) == 1
    assert list(Session.objects.values_list("session_key", flat=True)) == ["b" * 32]
