"""A Redis connection pool shared by every cache object of the process."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis


class SharedConnectionPool(redis.ConnectionPool):
    """``from_url`` returns one pool per URL and options for the whole process.

    Django gives each request (under ASGI, each request's thread) its own cache object, and each
    cache object makes its own pool: every request opened a Redis connection. redis-py's pools
    are thread-safe and start afresh in a forked child, so one pool can serve them all.
    """

    _shared: ClassVar[dict[str, redis.ConnectionPool]] = {}
    # not ``_lock``: each pool has a lock of its own by that name
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SharedConnectionPool:
        key = f"{url} {sorted(kwargs.items())!r}"
        with cls._shared_lock:
            pool = cls._shared.get(key)
            if pool is None:
                pool = cls._shared[key] = super().from_url(url, **kwargs)
        return pool  # type: ignore[return-value]
