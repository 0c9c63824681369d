"""A real uvicorn server on the test database and Debian's Chromium driven by Playwright."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, expect
from servicekit import clean_env, database_url_for_children, need_service, uvicorn_server
from tiny_policy import build_tiny_policy

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

# A loaded CI machine runs these pages 2-3x slower than an idle one: assertions wait up to 15 s
# (Playwright's default, 5 s, once ran out while the first answer was still on its way).
expect.set_options(timeout=15_000)

# Playwright's sync API runs an event loop in this thread; the ORM calls the tests make
# between browser steps are still plain synchronous code.
os.environ.setdefault("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


@pytest.fixture(scope="session")
def browser_policy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bigger and with a longer context than the unit tests' policy, so that a long answer
    (4,000 tokens: 15-30 s on one thread here) outlasts the steps a test takes before it stops
    it, even on a loaded machine (2,000 tokens of a 4-layer model took under 4 s)."""
    return build_tiny_policy(
        tmp_path_factory.mktemp("policy") / "e2e-v1", dim=128, depth=8, max_seq_len=4096
    )


@pytest.fixture
def live_url(
    postgres_only: None, transactional_db: None, tmp_path: Path, browser_policy_dir: Path
) -> Iterator[str]:
    """uvicorn serving the app against this test run's database; yields its base URL."""
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"),
        DATABASE_URL=database_url_for_children(),
        DEBUG="1",
        AXES_FAILURE_LIMIT="50",
        POLICY_DIR=str(browser_policy_dir),
        OMP_NUM_THREADS="1",
    )
    if os.environ.get("REDIS_URL"):
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    with uvicorn_server(tmp_path / "uvicorn.log", env) as base:
        yield base


def is_page_error(message: ConsoleMessage) -> bool:
    """A console error, except an answer stream cut by the network: the end of a stream and a
    page leaving mid-stream are both normal, and the SSE extension reconnects or stops. Nor is a
    422 (input the user can fix), which the page shows where the form is."""
    if message.type != "error" or "status of 422" in message.text:
        return False
    stream = "/stream/" in message.location.get("url", "")
    return not (stream or message.text.startswith("htmx:sseError"))


@pytest.fixture
def expected_console_errors() -> list[str]:
    """Fragments of console errors a test provokes on purpose (a failure it simulates)."""
    return []


@pytest.fixture
def browser_context_options() -> dict[str, object]:
    """Playwright's options for the page's browser context (a test may parametrize a phone)."""
    return {}


@pytest.fixture
def page(
    live_url: str, expected_console_errors: list[str], browser_context_options: dict[str, object]
) -> Iterator[object]:
    need_service("Debian chromium (/usr/bin/chromium)", Path(CHROMIUM).exists())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(base_url=live_url, **browser_context_options)
        page = context.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if is_page_error(m) else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        # No CSP violation or script error on any page the test visited.
        errors = [e for e in errors if not any(x in e for x in expected_console_errors)]
        assert errors == [], errors
        browser.close()
