"""Close answers a stopped process left open; run at start-up (and by beat every minute)."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from feedback.services.chat import do_sweep_open_answers


class Command(BaseCommand):
    help = "Mark answers left pending or streaming by a stopped process as cancelled or failed."

    def handle(self, *args: Any, **options: Any) -> None:
        closed = do_sweep_open_answers(stale_after_s=settings.STALE_ANSWER_S)
        self.stdout.write(f"closed {closed} abandoned answer(s)")
