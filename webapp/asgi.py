"""ASGI entry point (uvicorn webapp.asgi:application)."""

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

django_application = get_asgi_application()

from feedback.services.answer_runs import serve_streams_from  # noqa: E402 (needs setup)
from webapp.request_threads import RequestThreads  # noqa: E402

request_threads = RequestThreads()


async def application(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[Mapping[str, Any]], Awaitable[None]],
) -> None:
    """Django, after noting the loop that serves this process (answers start on it), with each
    HTTP request's sync code on a pooled thread (``webapp.request_threads``)."""
    serve_streams_from(asyncio.get_running_loop())
    if scope["type"] != "http":
        await django_application(scope, receive, send)
        return
    async with request_threads.lend():
        await django_application(scope, receive, send)
