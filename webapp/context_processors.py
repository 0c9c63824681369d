"""Values every page template can use."""

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, object]:
    return {"site_name": settings.SITE_NAME, "signup_enabled": settings.SIGNUP_ENABLED}
