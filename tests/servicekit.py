"""Helpers for tests that use the real services and child processes of the app."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def services_required() -> bool:
    return os.environ.get("REQUIRE_SERVICES", "") not in ("", "0", "false")


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def need_service(name: str, available: bool) -> None:
    """Skip when a service is missing locally; fail in CI, where it must be there."""
    if available:
        return
    message = f"{name} is not reachable"
    if services_required():
        pytest.fail(f"{message} and REQUIRE_SERVICES is set")
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process of the app, without this run's service URLs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "DATABASE_URL",
            "REDIS_URL",
            "DJANGO_SETTINGS_MODULE",
            "VAR_DIR",
            # Set for the browser tests' own process only; never for an app process.
            "DJANGO_ALLOW_ASYNC_UNSAFE",
        )
    }
    env["DJANGO_SETTINGS_MODULE"] = "webapp.settings"
    env["PYTHONPATH"] = str(ROOT)
    env.update(overrides)
    return env


def database_url_for_children() -> str:
    """A URL to the very database this test run uses (pytest-django's test database)."""
    from django.db import connection

    s = connection.settings_dict
    user = s.get("USER") or "postgres"
    host = s.get("HOST") or "127.0.0.1"
    port = s.get("PORT") or 5432
    return f"postgres://{user}@{host}:{port}/{s['NAME']}"


@contextmanager
def uvicorn_server(log_path: Path, env: dict[str, str]) -> Iterator[str]:
    """The ASGI app under a real uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "webapp.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        try:
            while True:
                try:
                    with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(log_path.read_text()) from None
                    time.sleep(0.3)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
