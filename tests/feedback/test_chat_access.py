"""Walks the URLconf: every URL that takes an id answers 404 to anyone but the owner.

A new id-taking URL without an ownership check makes this test fail; a new kind of id makes it
fail until the test learns how to make an object of that kind.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse
from factories import ConversationFactory, UserFactory

from feedback.services.chat import do_send_message

pytestmark = pytest.mark.django_db

KNOWN_ID_KWARGS = {"conversation_id", "message_id"}


def patterns(
    resolver: URLResolver | None = None, prefix: str = ""
) -> Iterator[tuple[str, URLPattern]]:
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        if isinstance(entry, URLResolver):
            if entry.app_name == "admin":  # Django's admin checks staff permissions itself
                continue
            yield from patterns(entry, prefix + str(entry.pattern))
        else:
            yield prefix + str(entry.pattern), entry


def id_taking_patterns() -> list[URLPattern]:
    found = [p for _, p in patterns() if p.pattern.converters]
    assert found, "the URLconf has no id-taking URL: this test walks the wrong resolver"
    return found


def test_every_id_kwarg_is_known() -> None:
    for pattern in id_taking_patterns():
        unknown = set(pattern.pattern.converters) - KNOWN_ID_KWARGS
        assert not unknown, f"{pattern.name} takes {unknown}: teach this test about it"


def test_other_users_objects_are_not_found(client: Client) -> None:
    owner_conversation = ConversationFactory()
    turn = do_send_message(conversation=owner_conversation, text="private")
    client.force_login(UserFactory())
    for pattern in id_taking_patterns():
        kwargs = {"conversation_id": owner_conversation.pk}
        if "message_id" in pattern.pattern.converters:
            kwargs["message_id"] = turn.answer.pk
        url = reverse(pattern.name, kwargs=kwargs)
        for method in ("get", "post"):
            response = getattr(client, method)(url, {"text": "x", "title": "x"})
            assert response.status_code in (404, 405), (
                f"{method.upper()} {url} answered {response.status_code} to another user"
            )
        assert (client.get(url).status_code, client.post(url).status_code) != (405, 405)
    owner_conversation.refresh_from_db()
    assert owner_conversation.title == "private"


def test_a_message_from_another_conversation_is_not_found(client: Client) -> None:
    mine = ConversationFactory()
    theirs = do_send_message(conversation=ConversationFactory(), text="not yours")
    client.force_login(mine.owner)
    url = reverse("chat_stop", kwargs={"conversation_id": mine.pk, "message_id": theirs.answer.pk})
    assert client.post(url).status_code == 404
