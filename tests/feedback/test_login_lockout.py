"""django-axes locks a username+address out after repeated failures, for a fixed cool-off."""

from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.test import Client
from django.utils import timezone
from factories import PASSWORD, UserFactory
from pytest_django.fixtures import Settings as SettingsWrapper

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
