"""django-axes locks a username+address out after repeated failures, for a fixed cool-off."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import pytest
from axes.models import AccessAttempt
from django.core.asgi import get_asgi_application
from django.test import Client
from django.utils import timezone
from factories import PASSWORD, UserFactory
from pytest_django.fixtures import Settings as SettingsWrapper
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

pytestmark = pytest.mark.django_db


def attempt(client: Client, password: str) -> int:
    response = client.post("/accounts/login/", {"username": "bob", "password": password})
    return response.status_code


def test_lockout_and_cool_off(client: Client, settings: SettingsWrapper) -> None:
    UserFactory(username="bob")
    limit = settings.AXES_FAILURE_LIMIT
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME
    for _ in range(limit - 1):
        assert attempt(client, "wrong") == 200  # the form again, with an error
    assert attempt(client, "wrong") == 429
    # While locked, even the right password is refused.
    response = client.post("/accounts/login/", {"username": "bob", "password": PASSWORD})
    assert response.status_code == 429
    assert "Too many failed log-ins" in response.content.decode()
    # Once the cool-off has passed, the right password works again.
    AccessAttempt.objects.update(attempt_time=timezone.now() - timedelta(minutes=16))
    assert attempt(client, PASSWORD) == 302


def test_other_accounts_unaffected(client: Client, settings: SettingsWrapper) -> None:
    UserFactory(username="bob")
    UserFactory(username="carol")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        attempt(client, "wrong")
    response = client.post("/accounts/login/", {"username": "carol", "password": PASSWORD})
    assert response.status_code == 302


def _behind_a_proxy(trusted: str) -> Callable[[str, str, str], Awaitable[int]]:
    """Log-in attempts through uvicorn's proxy-headers middleware (as ``uvicorn`` runs the app,
    ``FORWARDED_ALLOW_IPS=trusted``), all arriving from the proxy at 10.0.0.5 for the clients
    that its X-Forwarded-For names."""
    application = ProxyHeadersMiddleware(get_asgi_application(), trusted_hosts=trusted)
    transport = httpx.ASGITransport(app=application, client=("10.0.0.5", 40000))

    async def attempt(username: str, password: str, client_address: str) -> int:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            page = await http.get("/accounts/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
            assert token is not None
            response = await http.post(
                "/accounts/login/",
                data={
                    "username": username,
                    "password": password,
                    "csrfmiddlewaretoken": token.group(1),
                },
                headers={"X-Forwarded-For": client_address},
            )
            return response.status_code

    return attempt


@pytest.mark.django_db(transaction=True)
def test_behind_a_trusted_proxy_each_client_is_locked_out_alone(
    settings: SettingsWrapper,
) -> None:
    """The proxy's clients share its address: counted by it, five wrong passwords from anyone
    would lock the account for everybody."""
    UserFactory(username="bob")
    attempt = _behind_a_proxy(trusted="10.0.0.5")

    async def scenario() -> tuple[list[int], int]:
        attacker = [
            await attempt("bob", "wrong", "203.0.113.9") for _ in range(settings.AXES_FAILURE_LIMIT)
        ]
        return attacker, await attempt("bob", PASSWORD, "198.51.100.7")

    attacker, owner = asyncio.run(scenario())
    assert attacker[-1] == 429  # the guesser is locked out
    assert owner == 302  # the owner, from elsewhere, is not
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"203.0.113.9"}


@pytest.mark.django_db(transaction=True)
def test_an_untrusted_x_forwarded_for_changes_nothing(settings: SettingsWrapper) -> None:
    """A client that is not a trusted proxy cannot pick its address: a new X-Forwarded-For on
    each guess does not escape the lock-out."""
    UserFactory(username="bob")
    attempt = _behind_a_proxy(trusted="127.0.0.1")

    async def scenario() -> list[int]:
        return [
            await attempt("bob", "wrong", f"203.0.113.{i}")
            for i in range(settings.AXES_FAILURE_LIMIT + 1)
        ]

    assert asyncio.run(scenario())[-2:] == [429, 429]
    assert set(AccessAttempt.objects.values_list("ip_address", flat=True)) == {"10.0.0.5"}
