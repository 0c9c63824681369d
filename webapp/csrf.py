"""A failed CSRF check on an htmx request: a notice on the page, not a dropped response.

The token a page carries goes stale when the session changes under it (a log-in or log-out in
another tab). For a plain form Django's own 403 page says so. An htmx request would drop that
403, or under ``DEBUG`` django-htmx would replace the page with it, losing what the user typed.
Instead the reason goes into the page's notice area, and the 422 status keeps htmx swapping it
while the composer keeps its draft (``chat.js`` clears it only on a 200).
"""

from __future__ import annotations

from http import HTTPStatus

from django.http import HttpRequest, HttpResponse
from django.views.csrf import csrf_failure as django_csrf_failure

STALE_PAGE = (
    "This page is out of date: you logged in or out in another tab. Copy anything you typed, "
    "then reload the page."
)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if request.headers.get("HX-Request") != "true":
        return django_csrf_failure(request, reason)
    return HttpResponse(
        STALE_PAGE,
        status=HTTPStatus.UNPROCESSABLE_ENTITY,
        headers={"HX-Retarget": "#notice", "HX-Reswap": "innerHTML"},
        content_type="text/plain; charset=utf-8",
    )
