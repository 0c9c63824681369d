"""Accounts and roles: sign-up, role changes, demo accounts for a fresh install."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from django.contrib.auth.models import Group, User
from django.db import transaction

from feedback.models import Persona
from feedback.roles import Role


def ensure_role_groups() -> dict[Role, Group]:
    """The role groups exist after migrations; this also heals a database where one was deleted."""
    return {role: Group.objects.get_or_create(name=role.value)[0] for role in Role}


@transaction.atomic
def do_sign_up(*, username: str, password: str, email: str = "") -> User:
    """Create an account with the plain user role. Validation happens in the form beforehand."""
    user = User.objects.create_user(username=username, password=password, email=email)
    user.groups.add(ensure_role_groups()[Role.USER])
    return user


@transaction.atomic
def do_set_roles(*, user: User, roles: set[Role]) -> None:
    """Replace the user's role groups with exactly ``roles``."""
    groups = ensure_role_groups()
    user.groups.remove(*groups.values())
    user.groups.add(*(groups[r] for r in roles))


@dataclass(frozen=True)
class DemoAccount:
    username: str
    password: str
    role: str


DEMO_ACCOUNTS: tuple[tuple[str, Role], ...] = (
    ("admin", Role.ADMIN),
    ("annotator", Role.ANNOTATOR),
    ("user", Role.USER),
)


def demo_credentials_path(var_dir: Path) -> Path:
    return var_dir / "demo-accounts.json"


@transaction.atomic
def do_ensure_demo_accounts(*, var_dir: Path) -> list[DemoAccount]:
    """Create the missing demo accounts with random passwords; return only the new ones.

    Passwords are appended to ``var/demo-accounts.json`` (mode 0600) so they can be looked up
    after they were printed once.
    """
    created: list[DemoAccount] = []
    for username, role in DEMO_ACCOUNTS:
        if User.objects.filter(username=username).exists():
            continue
        password = secrets.token_urlsafe(12)
        user = User.objects.create_user(username=username, password=password)
        if role is Role.ADMIN:
            user.is_staff = True
            user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        do_set_roles(user=user, roles={role})
        created.append(DemoAccount(username=username, password=password, role=role.value))
    if created:
        _store_demo_credentials(demo_credentials_path(var_dir), created)
    return created


def _store_demo_credentials(path: Path, accounts: list[DemoAccount]) -> None:
    existing: dict[str, dict[str, str]] = {}
    if path.exists():
        existing = json.loads(path.read_text())
    existing.update({a.username: asdict(a) for a in accounts})
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(existing, fh, indent=2)


# Offered on a fresh install, so the persona picker has something in it. Their prompts are the
# ones the base policy's instruction tuning saw (model_runtime/corpus/distill.py).
DEMO_PERSONAS = (
    ("Helpful assistant", "Answers plainly.", "You are a helpful assistant."),
    ("Concise assistant", "Short, friendly answers.", "You are a friendly, concise assistant."),
)


@transaction.atomic
def do_ensure_demo_personas() -> list[Persona]:
    """Create the demo personas when there is no persona at all (an install whose admins made
    their own, or switched these off, keeps what it has); return the new ones."""
    if Persona.objects.exists():
        return []
    return [
        Persona.objects.create(name=name, description=description, system_prompt=prompt)
        for name, description, prompt in DEMO_PERSONAS
    ]
