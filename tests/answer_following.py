"""Following and writing answers in tests: a page's view of a run in another process, and a run
written in this process as a send under uvicorn starts it."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from asgiref.sync import sync_to_async

from feedback.inference.factory import get_inference_client
from feedback.services import answer_runs
from feedback.services.answer_runs import StreamEvent, serve_streams_from, start_answer_soon


async def follow(answer_id: int, into: list[tuple[float, StreamEvent]]) -> None:
    async for event in answer_runs._follow_elsewhere(answer_id):
        into.append((time.monotonic(), event))


async def until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def write_here(answer_id: int) -> None:
    """Write a sent answer in this process, as a send under uvicorn starts it."""

    async def scenario() -> None:
        serve_streams_from(asyncio.get_running_loop())
        try:
            await sync_to_async(start_answer_soon)(answer_id, get_inference_client)
            await until(lambda: answer_id in answer_runs._runs)
            await asyncio.wait_for(answer_runs._runs[answer_id].task, 60)  # type: ignore[arg-type]
        finally:
            serve_streams_from(None)

    asyncio.run(scenario())


def shown(events: list[tuple[float, StreamEvent]]) -> str:
    text = ""
    for _, event in events:
        text = event.text if event.kind == "reset" else text + event.text
    return text
