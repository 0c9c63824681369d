"""In a real browser: sign up, see the navigation of the role, log out, log in again."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import User
from factories import PASSWORD, UserFactory
from playwright.sync_api import Page, expect

from feedback.roles import Role

pytestmark = pytest.mark.e2e


def test_sign_up_log_in_navigation_log_out(page: Page) -> None:
    page.goto("/")
    expect(page).to_have_url("/accounts/login/?next=/")
    page.get_by_role("link", name="Sign up").first.click()
    page.get_by_label("Username").fill("dana")
    page.locator("#id_password1").fill(PASSWORD)
    page.locator("#id_password2").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Welcome, dana")).to_be_visible()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Chat")).to_be_visible()
    expect(nav.get_by_role("link", name="Annotate")).to_have_count(0)
    expect(nav.get_by_role("link", name="Training & models")).to_have_count(0)
    assert User.objects.get(username="dana").groups.filter(name="user").exists()

    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    page.goto("/annotate/")
    expect(page).to_have_url("/accounts/login/?next=/annotate/")


def test_admin_sees_every_area(page: Page) -> None:
    UserFactory(username="erin", role=Role.ADMIN)
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill("erin")
    page.locator("#id_password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    nav = page.get_by_role("navigation", name="Main")
    expect(nav.get_by_role("link", name="Annotate")).to_be_visible()
    nav.get_by_role("link", name="Training & models").click()
    expect(page.get_by_role("heading", name="Training & models")).to_be_visible()
    expect(page.locator("td.ok").first).to_have_text("up")
