"""The role helper and the pages it guards."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import Client
from factories import UserFactory

from feedback.roles import Role, has_role, roles_of

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (Role.USER, {Role.USER}),
        (Role.ANNOTATOR, {Role.ANNOTATOR, Role.USER}),
        (Role.ADMIN, {Role.ADMIN, Role.ANNOTATOR, Role.USER}),
    ],
)
def test_roles_nest(role: Role, expected: set[Role]) -> None:
    assert roles_of(UserFactory(role=role)) == expected


def test_anonymous_and_inactive_hold_nothing() -> None:
    assert roles_of(AnonymousUser()) == frozenset()
    user = UserFactory(role=Role.ADMIN)
    user.is_active = False
    assert not has_role(user, Role.USER)


def test_superuser_holds_every_role() -> None:
    user = UserFactory(role=Role.USER, is_superuser=True)
    assert roles_of(user) == frozenset(Role)


@pytest.mark.parametrize(
    ("role", "url", "status"),
    [
        (Role.USER, "/annotate/", 403),
        (Role.USER, "/manage/", 403),
        (Role.ANNOTATOR, "/annotate/", 200),
        (Role.ANNOTATOR, "/manage/", 403),
        (Role.ADMIN, "/annotate/", 200),
        (Role.ADMIN, "/manage/", 200),
        (Role.USER, "/", 200),
    ],
)
def test_pages_check_roles(client: Client, role: Role, url: str, status: int) -> None:
    client.force_login(UserFactory(role=role))
    assert client.get(url).status_code == status


@pytest.mark.parametrize("url", ["/", "/annotate/", "/manage/"])
def test_anonymous_is_sent_to_login(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_an_htmx_request_after_the_session_ended_sends_the_page_to_login(client: Client) -> None:
    """Not the login page swapped into a fragment of the chat page: the page goes there, and
    comes back to itself after (not to the POST-only URL the fragment came from)."""
    response = client.post(
        "/chat/7/send/",
        {"text": "hi"},
        HTTP_HX_REQUEST="true",
        HTTP_HX_CURRENT_URL="http://testserver/chat/7/?q=1",
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/accounts/login/?next=/chat/7/%3Fq%3D1"


def test_navigation_follows_roles(client: Client) -> None:
    client.force_login(UserFactory(role=Role.USER))
    page = client.get("/").content.decode()
    assert 'data-nav="annotate"' not in page and 'data-nav="manage"' not in page
    client.force_login(UserFactory(role=Role.ANNOTATOR))
    page = client.get("/").content.decode()
    assert 'data-nav="annotate"' in page and 'data-nav="manage"' not in page
    client.force_login(UserFactory(role=Role.ADMIN))
    page = client.get("/").content.decode()
    assert 'data-nav="annotate"' in page and 'data-nav="manage"' in page


def test_pages_carry_csrf_header_and_strict_csp(client: Client) -> None:
    client.force_login(UserFactory(role=Role.USER))
    response = client.get("/")
    assert 'hx-headers=\'{"X-CSRFToken": "' in response.content.decode()
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "<script>" not in response.content.decode()  # no inline script anywhere
