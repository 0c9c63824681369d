"""The domain's tables."""

from feedback.models.chat import (
    OPEN_STATUSES,
    ChatLimits,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    Persona,
)

__all__ = [
    "OPEN_STATUSES",
    "ChatLimits",
    "Conversation",
    "Message",
    "MessageRole",
    "MessageStatus",
    "Persona",
]
