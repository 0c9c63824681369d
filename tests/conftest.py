"""Shared fixtures: real services on loopback, required in CI (REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from servicekit import need_service, port_open
from tiny_policy import build_tiny_policy


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    need_service("Redis (REDIS_URL)", bool(url) and port_open("127.0.0.1", 6379))
    return url


@pytest.fixture
def postgres_only(settings: object) -> None:
    from django.db import connection

    need_service("PostgreSQL (DATABASE_URL)", connection.vendor == "postgresql")


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) policy checkpoint, built once per test run."""
    return build_tiny_policy(tmp_path_factory.mktemp("policy") / "tiny-v1")
