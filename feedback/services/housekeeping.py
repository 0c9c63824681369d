"""Periodic clean-up work that beat schedules."""

from django.contrib.sessions.models import Session
from django.db import transaction
from django.utils import timezone


@transaction.atomic
def do_clear_expired_sessions() -> int:
    """Delete expired login sessions; returns how many were removed."""
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
