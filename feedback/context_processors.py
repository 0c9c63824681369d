"""Puts the signed-in user's roles in every template, for the role-aware navigation."""

from django.http import HttpRequest

from feedback.roles import Role, roles_of


def roles(request: HttpRequest) -> dict[str, object]:
    held = roles_of(request.user)
    return {
        "user_roles": sorted(r.value for r in held),
        "can_chat": Role.USER in held,
        "can_annotate": Role.ANNOTATOR in held,
        "can_administer": Role.ADMIN in held,
    }
