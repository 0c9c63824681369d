"""The middleware chain under ASGI runs in one trip to a worker thread, not one per middleware."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import SyncToAsync, async_to_sync
from django.conf import settings
from django.test import AsyncClient


def test_the_chain_ends_with_the_one_thread_middleware() -> None:
    assert settings.MIDDLEWARE[-1] == "webapp.middleware.OneThreadMiddlewareChain"


@pytest.mark.django_db
def test_a_request_crosses_to_a_worker_thread_a_handful_of_times(monkeypatch: Any) -> None:
    crossings: list[str] = []
    cross = SyncToAsync.__call__

    def counted(self: SyncToAsync[Any, Any], *args: Any, **kwargs: Any) -> Any:
        crossings.append(getattr(self.func, "__qualname__", repr(self.func)))
        return cross(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    response = async_to_sync(AsyncClient().get)("/accounts/login/")
    assert response.status_code == 200
    # request_started, the whole chain (sessions, CSRF, auth, messages, CSP, axes...), CSRF's
    # process_view, the view, the template render, request_finished: 6. With each middleware
    # adapted on its own, each process_request and process_response was a crossing: 18.
    assert len(crossings) <= 6, crossings
