"""GET /healthz: JSON with the database and broker status; 200, or 503 when one is down."""

from __future__ import annotations

from dataclasses import asdict

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from feedback.services.health import check_broker, check_database


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    components = {"database": check_database(), "broker": check_broker()}
    healthy = all(c.ok for c in components.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        **{name: asdict(status) for name, status in components.items()},
    }
    return JsonResponse(body, status=200 if healthy else 503)
