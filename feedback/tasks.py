"""Celery tasks of the default queue: thin wrappers around services."""

import os
import socket

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from feedback.services.chat import do_sweep_open_answers
from feedback.services.housekeeping import do_clear_expired_sessions


@shared_task(name="feedback.tasks.clear_expired_sessions")  # type: ignore[untyped-decorator]
def clear_expired_sessions() -> int:
    return do_clear_expired_sessions()


@shared_task(name="feedback.tasks.ping")  # type: ignore[untyped-decorator]
def ping(payload: str) -> dict[str, str | int]:
    """Round trip through the broker for operators and tests: echoes the payload and says
    which worker process answered."""
    return {
        "pong": payload,
        "at": timezone.now().isoformat(),
        "worker_pid": os.getpid(),
        "worker_host": socket.gethostname(),
    }


@shared_task(name="feedback.tasks.sweep_open_answers")  # type: ignore[untyped-decorator]
def sweep_open_answers() -> int:
    return do_sweep_open_answers(stale_after_s=settings.STALE_ANSWER_S)
