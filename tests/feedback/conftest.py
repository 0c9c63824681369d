"""Each test starts with an empty cache (rate-limit counters and stop flags live there); a tiny
policy for the tests that stream answers; async tests leave no database connection open."""

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.cache import cache
from django.db import connections

from feedback.inference.factory import reset_inference_client
from feedback.services.answer_runs import close_run_connections


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def close_sync_thread_connections() -> Iterator[None]:
    """Async views reach the database from asgiref's sync thread, answer runs from their own
    threads; close those threads' connections after each test, so the test database can be
    dropped at the end."""
    yield
    asyncio.run(sync_to_async(connections.close_all)())
    close_run_connections()


@pytest.fixture
def policy(tiny_policy_dir: Path, settings: Any) -> Iterator[Path]:
    """This process serves the tiny policy for the test, from an engine in this process (one
    in a child process costs a start-up per test: tests/feedback/test_inference_local.py and
    the browser tests use that)."""
    settings.POLICY_DIR = tiny_policy_dir
    settings.INFERENCE_URL = ""
    settings.ENGINE_PROCESS = False
    reset_inference_client()
    yield tiny_policy_dir
    reset_inference_client()
