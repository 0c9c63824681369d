"""Requests' sync code runs on pooled threads: one per request at a time, reused after it ends,
also under the thread-sensitive context Django's ASGI handler enters for each request."""

from __future__ import annotations

import asyncio
import threading

from asgiref.sync import ThreadSensitiveContext, sync_to_async

from webapp.request_threads import RequestThreads


async def _request_thread(pool: RequestThreads, hold: asyncio.Event | None = None) -> int:
    async with pool.lend(), ThreadSensitiveContext():  # the inner one: Django's
        ident = await sync_to_async(threading.get_ident)()
        assert await sync_to_async(threading.get_ident)() == ident  # one thread per request
        if hold is not None:
            await hold.wait()
        return ident


def test_a_request_after_another_reuses_its_thread() -> None:
    pool = RequestThreads()

    async def two_in_a_row() -> tuple[int, int]:
        return await _request_thread(pool), await _request_thread(pool)

    first, second = asyncio.run(two_in_a_row())
    assert first == second != threading.get_ident()
    assert pool.idle == 1


def test_requests_at_the_same_time_have_threads_of_their_own() -> None:
    pool = RequestThreads()

    async def together() -> list[int]:
        hold = asyncio.Event()
        requests = [asyncio.create_task(_request_thread(pool, hold)) for _ in range(3)]
        await asyncio.sleep(0.1)
        hold.set()
        return list(await asyncio.gather(*requests))

    assert len(set(asyncio.run(together()))) == 3
    assert pool.idle == 3


def test_a_thread_goes_back_only_once_its_work_is_done() -> None:
    pool = RequestThreads()
    release = threading.Event()
    finished: list[str] = []
    calls: list[asyncio.Future[None]] = []

    def slow() -> None:
        assert release.wait(10)
        finished.append("slow")

    async def request() -> None:
        async with pool.lend():
            calls.append(asyncio.ensure_future(sync_to_async(slow)()))
            await asyncio.sleep(0.05)  # the call runs on the request's thread
        # the block ended with the call still running: like a client gone mid-request

    async def left_running() -> None:
        ended = asyncio.create_task(request())
        await asyncio.sleep(0.2)
        assert pool.idle == 0 and not ended.done()  # not lent again while its call runs
        release.set()
        await ended
        await calls[0]

    asyncio.run(left_running())
    assert finished == ["slow"] and pool.idle == 1
