"""Liveness of the parts the app depends on: the database and the Celery broker (read-only)."""

from __future__ import annotations

import time
from dataclasses import dataclass

from celery import current_app
from django.db import connections


@dataclass(frozen=True)
class ComponentStatus:
    ok: bool
    latency_ms: float
    detail: str


def check_database() -> ComponentStatus:
    started = time.perf_counter()
    try:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:  # any driver error means "down"; the message says why
        return ComponentStatus(False, _ms(started), f"{type(exc).__name__}: {exc}".strip())
    return ComponentStatus(True, _ms(started), connections["default"].vendor)


def check_broker(timeout_s: float = 2.0) -> ComponentStatus:
    started = time.perf_counter()
    try:
        with current_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)
            transport = conn.transport_cls
    except Exception as exc:
        return ComponentStatus(False, _ms(started), f"{type(exc).__name__}: {exc}".strip())
    return ComponentStatus(True, _ms(started), str(transport))


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
