"""The domain's tables."""

from feedback.models.chat import (
    ChatLimits,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    Persona,
)

__all__ = ["ChatLimits", "Conversation", "Message", "MessageRole", "MessageStatus", "Persona"]
