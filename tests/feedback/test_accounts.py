"""Sign-up, log-in, log-out, password change and the demo accounts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client
from factories import PASSWORD, PersonaFactory, UserFactory
from pytest_django.fixtures import Settings as SettingsWrapper

from feedback.models import Persona
from feedback.roles import Role, roles_of
from feedback.services.accounts import do_ensure_demo_accounts, do_ensure_demo_personas

pytestmark = pytest.mark.django_db


def test_sign_up_gives_the_user_role(client: Client) -> None:
    response = client.post(
        "/signup/",
        {"username": "newcomer", "email": "", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    user = User.objects.get(username="newcomer")
    assert roles_of(user) == {Role.USER}
    assert client.get("/").status_code == 200  # signed in right away


def test_sign_up_rejects_a_weak_password(client: Client) -> None:
    response = client.post("/signup/", {"username": "weak", "password1": "123", "password2": "123"})
    assert response.status_code == 200
    assert not User.objects.filter(username="weak").exists()
    assert "too short" in response.content.decode()


def test_sign_up_can_be_switched_off(client: Client, settings: SettingsWrapper) -> None:
    settings.SIGNUP_ENABLED = False
    assert client.get("/signup/").status_code == 404
    assert client.post("/signup/", {"username": "x"}).status_code == 404
    assert "/signup/" not in client.get("/accounts/login/").content.decode()


def test_login_logout_and_password_change(client: Client) -> None:
    user = UserFactory(username="alice")
    response = client.post("/accounts/login/", {"username": "alice", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    response = client.post(
        "/accounts/password/",
        {
            "old_password": PASSWORD,
            "new_password1": "an0ther-long-phrase",
            "new_password2": "an0ther-long-phrase",
        },
    )
    assert response.status_code == 302
    user.refresh_from_db()
    assert user.check_password("an0ther-long-phrase")
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_one_address_makes_a_limited_number_of_accounts(
    client: Client, settings: SettingsWrapper
) -> None:
    """Each account has its own send limit: accounts without end would be sends without end."""
    settings.SIGNUPS_PER_HOUR = 2

    def sign_up(name: str, address: str) -> int:
        other = Client(REMOTE_ADDR=address)
        form = {"username": name, "email": "", "password1": PASSWORD, "password2": PASSWORD}
        return other.post("/signup/", form).status_code

    assert [sign_up(f"new{i}", "203.0.113.9") for i in range(2)] == [302, 302]
    response = Client(REMOTE_ADDR="203.0.113.9").post(
        "/signup/",
        {"username": "third", "email": "", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 429
    assert "Too many accounts were made from your address" in response.content.decode()
    assert not User.objects.filter(username="third").exists()
    assert sign_up("elsewhere", "198.51.100.7") == 302  # another address is not held back


def test_the_password_change_form_stops_checking_after_too_many_wrong_passwords(
    client: Client, settings: SettingsWrapper
) -> None:
    """Someone holding a session (a shared computer) must not be able to guess the password
    through this form: the log-in lock-out does not see it."""
    user = UserFactory(username="alice")
    client.force_login(user)

    def change(old: str) -> str:
        form = {
            "old_password": old,
            "new_password1": "n3w-long-phrase",
            "new_password2": "n3w-long-phrase",
        }
        response = client.post("/accounts/password/", form)
        return "changed" if response.status_code == 302 else response.content.decode()

    for _ in range(settings.AXES_FAILURE_LIMIT):
        assert "Your old password was entered incorrectly" in change("a-guess")
    refused = change(PASSWORD)  # even the right one, for now
    assert "Too many wrong passwords" in refused
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    cache.clear()  # the cool-off has passed
    assert change(PASSWORD) == "changed"


def test_other_users_can_still_change_their_passwords(client: Client) -> None:
    guesser, other = UserFactory(), UserFactory()
    client.force_login(guesser)
    for _ in range(10):
        client.post(
            "/accounts/password/", {"old_password": "x", "new_password1": "y", "new_password2": "y"}
        )
    client.force_login(other)
    form = {
        "old_password": PASSWORD,
        "new_password1": "n3w-long-phrase",
        "new_password2": "n3w-long-phrase",
    }
    assert client.post("/accounts/password/", form).status_code == 302


@pytest.mark.parametrize("path", ["/accounts/login/", "/django-admin/login/"])
def test_an_overlong_user_name_is_a_failed_log_in_not_a_500(client: Client, path: str) -> None:
    response = client.post(path, {"username": "a" * 300, "password": "x"})
    assert response.status_code == 200  # the form again, with its error
    assert "a" * 150 in AccessAttempt.objects.values_list("username", flat=True)


def test_demo_accounts_created_once(tmp_path: Path) -> None:
    created = do_ensure_demo_accounts(var_dir=tmp_path)
    assert {a.username for a in created} == {"admin", "annotator", "user"}
    stored = json.loads((tmp_path / "demo-accounts.json").read_text())
    assert oct((tmp_path / "demo-accounts.json").stat().st_mode & 0o777) == "0o600"
    for account in created:
        user = User.objects.get(username=account.username)
        assert user.check_password(stored[account.username]["password"])
        assert Role(account.role) in roles_of(user)
    assert User.objects.get(username="admin").is_superuser
    assert do_ensure_demo_accounts(var_dir=tmp_path) == []


def test_bootstrap_command_prints_passwords_once(
    tmp_path: Path, settings: SettingsWrapper, capsys: pytest.CaptureFixture[str]
) -> None:
    settings.VAR_DIR = tmp_path
    call_command("bootstrap_demo")
    first = capsys.readouterr().out
    password = json.loads((tmp_path / "demo-accounts.json").read_text())["user"]["password"]
    assert password in first
    call_command("bootstrap_demo")
    second = capsys.readouterr().out
    assert password not in second and "already exist" in second


def test_a_fresh_install_offers_personas_once() -> None:
    created = do_ensure_demo_personas()
    assert [p.name for p in created] == ["Helpful assistant", "Concise assistant"]
    assert not any(p.is_default for p in created)  # a new chat still starts without one
    assert do_ensure_demo_personas() == []
    Persona.objects.all().delete()
    PersonaFactory(name="Pirate")
    assert do_ensure_demo_personas() == []  # an install with its own personas keeps them


def test_the_bootstrap_command_creates_the_personas(
    tmp_path: Path, settings: SettingsWrapper, client: Client
) -> None:
    settings.VAR_DIR = tmp_path
    call_command("bootstrap_demo")
    client.force_login(User.objects.get(username="user"))
    page = client.get("/chat/").content.decode()
    assert "Helpful assistant" in page and "Concise assistant" in page
