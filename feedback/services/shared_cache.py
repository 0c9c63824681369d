"""What the chat keeps in the shared cache (Redis when configured), and how it does without it.

The cache holds no user data, only coordination: each user's send counter (the rate limit), stop
flags, and marks that a page served by another process still watches an answer. When the cache
is unreachable (Redis restarting or down), a request must not fail because of it: the rate limit
lets the send through (the engine's bounded queue still refuses a flood with "busy"), and the
answer runs go on without the flags (see ``answer_runs``). Each such fallback logs a warning.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest
from django_ratelimit.core import is_ratelimited
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# What an unreachable cache raises: redis-py's errors for Redis, OSError for the file cache.
CACHE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


def sending_too_fast(request: HttpRequest, per_minute: int) -> bool:
    """Count this send against the user's ``per_minute`` limit; True when it is over.

    With the cache unreachable the send goes ahead (fails open): a Redis restart should not stop
    every conversation, and the engine's bounded queue still answers a flood with "busy".
    """
    try:
        limited: bool = is_ratelimited(
            request, group="chat-send", key="user", rate=f"{per_minute}/m", increment=True
        )
    except CACHE_ERRORS as exc:
        log.warning("send not counted against the rate limit, the cache is unreachable: %s", exc)
        return False
    return limited
