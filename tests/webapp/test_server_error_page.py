"""A server error answers with the app's own 500 page, which needs nothing from the database."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.test import Client
from django.urls import path


def broken(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("the database went away")


urlpatterns = [path("broken/", broken)]


def test_a_server_error_shows_the_apps_page(settings: object) -> None:
    """No database access is allowed here: the page must render while the database is down."""
    settings.ROOT_URLCONF = __name__  # type: ignore[attr-defined]
    settings.DEBUG = False  # type: ignore[attr-defined]
    client = Client(raise_request_exception=False)
    response = client.get("/broken/")
    assert response.status_code == 500
    html = response.content.decode()
    assert "Something went wrong" in html and "try again" in html
    assert "the database went away" not in html  # no detail of the failure leaks
