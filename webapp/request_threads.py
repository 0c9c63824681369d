"""Each request's sync code on a thread that serves request after request.

Django's ASGI handler gives every request a thread-sensitive context of its own, and asgiref makes
that context a new thread, then starts one more to join it when the request ends. Starting a
thread blocks the event loop until the new thread gets the GIL, which it waits for behind every
busy thread: under a burst of chat sends, about a tenth of the loop's time. An outer context
with an executor of ours (asgiref uses the outer-most one) lends a thread from a pool instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext

# Threads kept idle beyond what a burst needed are let go.
MAX_IDLE = 64


class RequestThreads:
    """Single-thread executors lent to requests, one each, and taken back when they end. Used
    from one event loop."""

    def __init__(self) -> None:
        self._idle: list[ThreadPoolExecutor] = []

    @contextlib.asynccontextmanager
    async def lend(self) -> AsyncIterator[None]:
        """A thread-sensitive context on a pooled thread for the block (one request)."""
        if self._idle:
            executor = self._idle.pop()
        else:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="request")
        async with ThreadSensitiveContext(executor=executor):
            yield
        # Work the request left running (its client went away mid-call) ends before the
        # thread serves another request.
        await asyncio.wrap_future(executor.submit(_nothing))
        if len(self._idle) < MAX_IDLE:
            self._idle.append(executor)
        else:
            executor.shutdown(wait=False)

    @property
    def idle(self) -> int:
        return len(self._idle)


def _nothing() -> None:
    return None
