"""A real uvicorn server on the test database and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from servicekit import PYTHON, ROOT, clean_env, database_url_for_children, free_port, need_service

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
# between browser steps are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture
def live_url(postgres_only: None, transactional_db: None, tmp_path: Path) -> Iterator[str]:
    """uvicorn serving the app against this test run's database; yields its base URL."""
    port = free_port()
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=database_url_for_children(),
        DEBUG="1",
        AXES_FAILURE_LIMIT="50",
    )
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    log = open(tmp_path / "uvicorn.log", "w")  # noqa: SIM115 - closed below
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
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                raise RuntimeError((tmp_path / "uvicorn.log").read_text()) from None
            time.sleep(0.3)
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture
def page(live_url: str) -> Iterator[object]:
    need_service("Debian chromium (/usr/bin/chromium)", Path(CHROMIUM).exists())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_url)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        # No CSP violation or script error on any page the test visited.
        assert errors == [], errors
        browser.close()
