"""Conversations as trees of messages, the personas users pick, and the limits admins set."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class Persona(models.Model):
    """A system prompt an admin defines and users pick when they start a conversation."""

    name = models.CharField(max_length=80, unique=True)
    description = models.CharField(max_length=200, blank=True)
    system_prompt = models.TextField(max_length=4000)
    is_active = models.BooleanField(default=True)
    is_default = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="one_default_persona"
            )
        ]

    def __str__(self) -> str:
        return self.name


class ChatLimits(models.Model):
    """Bounds on what users may ask of the model; one row (pk=1), edited in the admin."""

    max_temperature = models.FloatField(default=1.5)
    default_temperature = models.FloatField(default=0.7)
    max_new_tokens = models.PositiveIntegerField(default=512)
    default_new_tokens = models.PositiveIntegerField(default=256)
    max_message_chars = models.PositiveIntegerField(default=8000)
    messages_per_minute = models.PositiveIntegerField(default=12)

    class Meta:
        verbose_name = "chat limits"
        verbose_name_plural = "chat limits"
        constraints = [
            models.CheckConstraint(
                condition=Q(max_temperature__gte=0) & Q(max_temperature__lte=2),
                name="max_temperature_range",
            ),
            models.CheckConstraint(
                condition=Q(default_temperature__gte=0)
                & Q(default_temperature__lte=models.F("max_temperature")),
                name="default_temperature_within_max",
            ),
            models.CheckConstraint(
                condition=Q(default_new_tokens__gte=1)
                & Q(default_new_tokens__lte=models.F("max_new_tokens")),
                name="default_tokens_within_max",
            ),
        ]

    def __str__(self) -> str:
        return "chat limits"

    @classmethod
    def current(cls) -> ChatLimits:
        limits, _ = cls.objects.get_or_create(pk=1)
        return limits


class Conversation(models.Model):
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="conversations"
    )
    title = models.CharField(max_length=120, default="New conversation")
    persona = models.ForeignKey(Persona, null=True, blank=True, on_delete=models.SET_NULL)
    # The persona's prompt as it was when the conversation started: later edits don't rewrite it.
    system_prompt = models.TextField(blank=True, default="")
    temperature = models.FloatField(default=0.7)
    max_new_tokens = models.PositiveIntegerField(default=256)
    # The leaf of the branch on screen; the path root -> current_leaf is what the model sees.
    current_leaf = models.ForeignKey(
        "Message", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["owner", "-updated_at"])]

    def __str__(self) -> str:
        return self.title


class MessageRole(models.TextChoices):
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus(models.TextChoices):
    PENDING = "pending"
    STREAMING = "streaming"
    COMPLETE = "complete"
    CANCELLED = "cancelled"
    FAILED = "failed"


# An answer still being written (or about to be): what Stop closes and the sweep looks for.
OPEN_STATUSES = (MessageStatus.PENDING, MessageStatus.STREAMING)


class Message(models.Model):
    """One turn. Regenerating adds a sibling answer; editing a user turn adds a sibling branch."""

    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    parent = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.CASCADE, related_name="children"
    )
    role = models.CharField(max_length=16, choices=MessageRole.choices)
    content = models.TextField(blank=True, default="")
    status = models.CharField(
        max_length=16, choices=MessageStatus.choices, default=MessageStatus.COMPLETE
    )
    # What produced an assistant answer.
    model_version = models.CharField(max_length=80, blank=True, default="")
    sampling_params = models.JSONField(default=dict, blank=True)
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    finish_reason = models.CharField(max_length=16, blank=True, default="")
    first_token_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    # How many earlier turns were left out to fit the context window.
    dropped_turns = models.PositiveIntegerField(default=0)
    error = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "parent"]),
            models.Index(fields=["status"]),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(role="assistant") | Q(status="complete"),
                name="user_turns_are_complete",
            )
        ]

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STATUSES
