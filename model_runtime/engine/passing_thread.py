"""Run model loading in a thread that ends with it, so that the scheduler decodes at full speed.

libgomp (the OpenMP runtime of torch's CPU kernels) gives every thread that runs a parallel region
its own pool of worker threads, kept for as long as that thread lives. Once the pools hold more
threads than the machine has cores, libgomp stops letting idle workers spin between regions (its
"throttled" spin): each of the hundreds of small parallel regions of a decoding step then waits
for its workers to wake up. Loading a checkpoint and its smoke generation run parallel kernels;
done in the caller's thread (a web worker, the main thread) they left a pool behind, and the
scheduler's steps of the 20M base policy took 6.7 ms instead of 4.2 (2 threads, 2 cores). Done in
a thread that then ends, they leave nothing: the scheduler's pool is the only one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_passing_thread(work: Callable[[], T], *, name: str) -> T:
    """``work()`` in a new thread that ends when it returns; its result, or its exception."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure.pop()  # popped: the list must not keep the traceback (and a model) alive
    return outcome.pop()
