"""ASGI entry point (uvicorn webapp.asgi:application)."""

import asyncio
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

django_application = get_asgi_application()

from feedback.services.answer_runs import serve_streams_from  # noqa: E402 (needs setup)


async def application(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[Mapping[str, Any]], Awaitable[None]],
) -> None:
    """Django, after noting the loop that serves this process: answers start on it."""
    serve_streams_from(asyncio.get_running_loop())
    await django_application(scope, receive, send)
