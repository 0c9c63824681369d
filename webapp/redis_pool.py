"""The cache's Redis: one connection pool, and one client on it, for the whole process."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import redis
from django.core.cache.backends.redis import RedisCache, RedisCacheClient


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


class SharedClientRedisCache(RedisCache):
    """Django's Redis cache, with one ``redis.Redis`` per connection pool. Django's makes a new
    one for every operation: 0.2 ms of CPU here, more than the command it sends (a rate-limit
    check is two). A client takes a connection from its pool for each command and gives it
    back, so threads can share one (redis-py's own rule)."""

    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = _SharedClientCacheClient


class _SharedClientCacheClient(RedisCacheClient):
    def get_client(self, key: Any = None, *, write: bool = False) -> redis.Redis:
        pool = self._get_connection_pool(write)  # type: ignore[attr-defined]
        client: redis.Redis | None = getattr(pool, _CLIENT, None)
        if client is None:
            with _client_lock:
                client = getattr(pool, _CLIENT, None)
                if client is None:
                    client = self._client(connection_pool=pool)  # type: ignore[attr-defined]
                    setattr(pool, _CLIENT, client)  # lives as long as its pool
        return client


_CLIENT = "palmloop_cache_client"
_client_lock = threading.Lock()
