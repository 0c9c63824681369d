"""Shared fixtures: real services on loopback, required in CI (REQUIRE_SERVICES=1)."""

from __future__ import annotations

import os

import pytest
from servicekit import need_service, port_open


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "")
    need_service("Redis (REDIS_URL)", bool(url) and port_open("127.0.0.1", 6379))
    return url


@pytest.fixture
def postgres_only(settings: object) -> None:
    from django.db import connection

    need_service("PostgreSQL (DATABASE_URL)", connection.vendor == "postgresql")
