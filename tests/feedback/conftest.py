"""Each test starts with an empty cache (rate-limit counters and stop flags live there); a tiny
policy for the tests that stream answers."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.core.cache import cache

from feedback.inference.factory import reset_inference_client


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def policy(tiny_policy_dir: Path, settings: Any) -> Iterator[Path]:
    """This process serves the tiny policy in-process for the test."""
    settings.POLICY_DIR = tiny_policy_dir
    settings.INFERENCE_URL = ""
    reset_inference_client()
    yield tiny_policy_dir
    reset_inference_client()
