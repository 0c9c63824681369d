"""What the chat keeps in the shared cache (Redis when configured), and how it does without it.

The cache holds no user data, only coordination: counters (each user's sends, each address's new
accounts, each user's wrong passwords in the password-change form), stop flags, and marks that a
page served by another process still watches an answer. When the cache is unreachable (Redis
restarting or down), a request must not fail because of it: the limits let requests through (the
engine's bounded queue still refuses a flood with "busy"), and the answer runs go on without the
flags (see ``answer_runs``). Each such fallback logs a warning.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpRequest
from django_ratelimit.core import get_usage, is_ratelimited
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# What an unreachable cache raises: redis-py's errors for Redis, OSError for the file cache.
CACHE_ERRORS: tuple[type[Exception], ...] = (RedisError, OSError)


def sending_too_fast(request: HttpRequest, per_minute: int) -> bool:
    """Count this send against the user's ``per_minute`` limit; True when it is over.

    With the cache unreachable the send goes ahead (fails open): a Redis restart should not stop
    every conversation, and the engine's bounded queue still answers a flood with "busy".
    """
    return _counted("send", request, group="chat-send", key="user", rate=f"{per_minute}/m")


def signing_up_too_fast(request: HttpRequest, per_hour: int) -> bool:
    """Count this new account against its address's ``per_hour`` limit; True when it is over
    (each account has its own send limit, so accounts without end would mean sends without
    end). Fails open like :func:`sending_too_fast`."""
    return _counted("sign-up", request, group="sign-up", key="ip", rate=f"{per_hour}/h")


def _password_guesses(request: HttpRequest, *, increment: bool) -> int:
    minutes = max(1, int(settings.AXES_COOLOFF_TIME.total_seconds() // 60))
    usage = get_usage(
        request,
        group="password-change",
        key="user",
        rate=f"{settings.AXES_FAILURE_LIMIT}/{minutes}m",
        increment=increment,
    )
    return int(usage["count"]) if usage else 0


def password_guesses_left(request: HttpRequest) -> bool:
    """Whether the signed-in user may still try a current password in the password-change form:
    not after ``AXES_FAILURE_LIMIT`` wrong ones within the log-in cool-off (django-axes counts
    log-ins, not this form, which someone holding a session could use to guess the password).
    Fails open with the cache unreachable."""
    try:
        guesses = _password_guesses(request, increment=False)
    except CACHE_ERRORS as exc:
        log.warning("password guesses not checked, the cache is unreachable: %s", exc)
        return True
    return guesses < int(settings.AXES_FAILURE_LIMIT)


def count_wrong_password(request: HttpRequest) -> None:
    """One more wrong current password in the password-change form."""
    try:
        _password_guesses(request, increment=True)
    except CACHE_ERRORS as exc:
        log.warning("wrong password not counted, the cache is unreachable: %s", exc)


def _counted(what: str, request: HttpRequest, **limit: str) -> bool:
    try:
        limited: bool = is_ratelimited(request, increment=True, **limit)
    except CACHE_ERRORS as exc:
        log.warning("%s not counted against its limit, the cache is unreachable: %s", what, exc)
        return False
    return limited
