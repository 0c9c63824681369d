"""The cache's Redis connections: one pool for the whole process, however many threads ask."""

from __future__ import annotations

import os
import threading
import uuid

from django.core.cache.backends.redis import RedisCache

from webapp.redis_pool import SharedClientRedisCache, SharedConnectionPool


def cache_in_a_thread_of_its_own(location: str, name: str) -> RedisCache:
    """A cache object as each request's thread gets one, used once from that thread. ``name``:
    the connections' client name, which gives this test a pool no other test has used."""
    made: list[RedisCache] = []

    def use() -> None:
        options = {"pool_class": SharedConnectionPool, "client_name": name}
        cache = RedisCache(location, {"OPTIONS": options})
        cache.set("palmloop:test-shared-pool", os.getpid(), timeout=30)
        assert cache.get("palmloop:test-shared-pool") == os.getpid()
        made.append(cache)

    thread = threading.Thread(target=use)
    thread.start()
    thread.join()
    return made[0]


def test_cache_objects_of_many_threads_share_one_pool_and_its_connection(
    redis_url: str,
) -> None:
    name = f"palmloop-test-{uuid.uuid4().hex}"
    caches = [cache_in_a_thread_of_its_own(redis_url, name) for _ in range(5)]
    pools = {id(cache._cache._get_connection_pool(write=True)) for cache in caches}
    assert len(pools) == 1
    pool = caches[0]._cache._get_connection_pool(write=True)
    assert isinstance(pool, SharedConnectionPool)
    # Used one after another: the first connection made serves them all.
    assert pool._created_connections == 1


def test_other_urls_and_options_get_pools_of_their_own(redis_url: str) -> None:
    first = SharedConnectionPool.from_url(redis_url)
    assert SharedConnectionPool.from_url(redis_url) is first
    assert SharedConnectionPool.from_url(redis_url, socket_timeout=3) is not first
    other_db = redis_url.rsplit("/", 1)[0] + "/7"
    assert SharedConnectionPool.from_url(other_db) is not first


def test_the_cache_uses_one_client_per_pool_from_every_thread(redis_url: str) -> None:
    """Django makes a ``redis.Redis`` for every cache operation; ours share the pool's one,
    from every thread's cache object, and it works from each."""
    options = {"pool_class": SharedConnectionPool, "client_name": f"t-{uuid.uuid4().hex}"}
    clients: list[object] = []

    def use(value: int) -> None:
        cache = SharedClientRedisCache(redis_url, {"OPTIONS": options})
        assert cache.add(f"palmloop:test-client-{value}", value, timeout=30)
        assert cache.incr(f"palmloop:test-client-{value}") == value + 1
        clients.append(cache._cache.get_client(write=True))
        clients.append(cache._cache.get_client(write=False))

    threads = [threading.Thread(target=use, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clients) == 8 and len({id(client) for client in clients}) == 1
    plain = RedisCache(redis_url, {"OPTIONS": options})  # Django's own: a client per call
    assert plain._cache.get_client() is not plain._cache.get_client()
