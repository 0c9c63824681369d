"""The three roles and the one permission helper every view uses.

Roles are Django groups. They nest: an admin may also annotate and chat, an annotator may chat.
A superuser holds every role.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase
from django_htmx.http import HttpResponseClientRedirect


class Role(StrEnum):
    USER = "user"
    ANNOTATOR = "annotator"
    ADMIN = "admin"


# What each group grants, itself included.
IMPLIED_ROLES: dict[Role, frozenset[Role]] = {
    Role.USER: frozenset({Role.USER}),
    Role.ANNOTATOR: frozenset({Role.ANNOTATOR, Role.USER}),
    Role.ADMIN: frozenset({Role.ADMIN, Role.ANNOTATOR, Role.USER}),
}


def roles_of(user: AbstractBaseUser | AnonymousUser) -> frozenset[Role]:
    """Every role the user holds, directly or by implication; cached on the user object."""
    if not user.is_authenticated or not user.is_active:
        return frozenset()
    cached: frozenset[Role] | None = getattr(user, "_palmloop_roles", None)
    if cached is not None:
        return cached
    if getattr(user, "is_superuser", False):
        roles = frozenset(Role)
    else:
        names = set(user.groups.values_list("name", flat=True))  # type: ignore[attr-defined]
        roles = frozenset().union(*(IMPLIED_ROLES[r] for r in Role if r.value in names))
    user._palmloop_roles = roles  # type: ignore[attr-defined]
    return roles


def has_role(user: AbstractBaseUser | AnonymousUser, role: Role) -> bool:
    return role in roles_of(user)


ViewFunc = TypeVar("ViewFunc", bound=Callable[..., HttpResponseBase])


def role_required(role: Role) -> Callable[[ViewFunc], ViewFunc]:
    """View decorator: anonymous visitors go to the login page, users without the role get 403."""

    def decorator(view: ViewFunc) -> ViewFunc:
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not request.user.is_authenticated:
                if request.headers.get("HX-Request") == "true":
                    # The whole page goes to log in (not a fragment into it), and back to that
                    # page after, not to the URL the fragment came from (a POST, often).
                    page = urlsplit(request.headers.get("HX-Current-URL", ""))
                    back = urlunsplit(("", "", page.path, page.query, "")) or "/"
                    return HttpResponseClientRedirect(redirect_to_login(back)["Location"])
                return redirect_to_login(request.get_full_path())
            if not has_role(request.user, role):
                raise PermissionDenied(f"This page needs the {role.value} role.")
            return view(request, *args, **kwargs)

        wrapped.required_role = role  # type: ignore[attr-defined]
        return wrapped  # type: ignore[return-value]

    return decorator
