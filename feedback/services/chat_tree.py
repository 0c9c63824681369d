"""Read-only walks over a conversation's message tree."""

from __future__ import annotations

from dataclasses import dataclass

from feedback.models import Conversation, Message


def path_to(leaf: Message | None) -> list[Message]:
    """Root-to-leaf messages ending at ``leaf`` (empty for None)."""
    if leaf is None:
        return []
    by_id = {m.pk: m for m in Message.objects.filter(conversation_id=leaf.conversation_id)}
    path: list[Message] = []
    node: Message | None = by_id.get(leaf.pk, leaf)
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    path.reverse()
    return path


def active_path(conversation: Conversation) -> list[Message]:
    return path_to(conversation.current_leaf)


def deepest_latest_leaf(message: Message) -> Message:
    """Follow the newest child down from ``message`` to a leaf."""
    node = message
    while True:
        child = node.children.order_by("-created_at", "-id").first()
        if child is None:
            return node
        node = child


@dataclass(frozen=True)
class SiblingPosition:
    index: int  # 1-based, as shown: "2 / 3"
    count: int
    previous_id: int | None
    next_id: int | None


def sibling_position(message: Message) -> SiblingPosition:
    siblings = list(
        Message.objects.filter(
            conversation_id=message.conversation_id, parent_id=message.parent_id
        ).values_list("id", flat=True)
    )
    i = siblings.index(message.pk)
    return SiblingPosition(
        index=i + 1,
        count=len(siblings),
        previous_id=siblings[i - 1] if i > 0 else None,
        next_id=siblings[i + 1] if i + 1 < len(siblings) else None,
    )
