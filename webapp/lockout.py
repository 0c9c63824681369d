"""What django-axes records of a failed log-in (``AXES_USERNAME_CALLABLE``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import User
from django.http import HttpRequest

USERNAME_MAX_LENGTH: int = User._meta.get_field("username").max_length or 150


def lockout_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    """The user name tried, cut to the longest a user name can be: axes stores it in a 255
    character column, so a longer one made the log-in page fail with a server error. No
    account has a longer name, so no account's lock-out is changed by the cut."""
    source: Any = credentials if credentials is not None else request.POST
    return str(source.get("username") or "")[:USERNAME_MAX_LENGTH]
