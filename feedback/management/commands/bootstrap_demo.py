"""Create the demo accounts (and personas) of a fresh install; print the passwords once."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from feedback.services.accounts import (
    demo_credentials_path,
    do_ensure_demo_accounts,
    do_ensure_demo_personas,
)


class Command(BaseCommand):
    help = "Create the admin, annotator and user demo accounts, and personas, if they are missing."

    def handle(self, *args: Any, **options: Any) -> None:
        for persona in do_ensure_demo_personas():
            self.stdout.write(f"Persona created: {persona.name}")
        created = do_ensure_demo_accounts(var_dir=settings.VAR_DIR)
        path = demo_credentials_path(settings.VAR_DIR)
        if not created:
            self.stdout.write(f"Demo accounts already exist; their passwords are in {path}")
            return
        self.stdout.write(
            self.style.SUCCESS(f"Demo accounts created (shown once, kept in {path}):")
        )
        for account in created:
            self.stdout.write(f"  {account.role:<10} {account.username:<10} {account.password}")
