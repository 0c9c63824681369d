"""factory-boy factories for the domain's rows."""

from __future__ import annotations

from typing import Any

import factory
from django.contrib.auth.models import User

from feedback.models import Conversation, Persona
from feedback.roles import Role
from feedback.services.accounts import do_set_roles

PASSWORD = "correct-horse-battery-staple"


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"person{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.org")
    password = factory.django.Password(PASSWORD)

    @factory.post_generation
    def role(self, create: bool, extracted: Role | None, **kwargs: Any) -> None:
        if create:
            do_set_roles(user=self, roles={extracted or Role.USER})


class PersonaFactory(factory.django.DjangoModelFactory[Persona]):
    class Meta:
        model = Persona

    name = factory.Sequence(lambda n: f"Persona {n}")
    system_prompt = "You are a helpful assistant."


class ConversationFactory(factory.django.DjangoModelFactory[Conversation]):
    class Meta:
        model = Conversation

    owner = factory.SubFactory(UserFactory)
    title = "New conversation"
