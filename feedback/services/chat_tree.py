"""Read-only walks over a conversation's message tree."""

from __future__ import annotations

from dataclasses import dataclass

from feedback.models import Conversation, Message


def _walk_up(by_id: dict[int, Message], leaf_id: int | None) -> list[Message]:
    path: list[Message] = []
    node = by_id.get(leaf_id) if leaf_id is not None else None
    while node is not None:
        path.append(node)
        node = by_id.get(node.parent_id) if node.parent_id else None
    path.reverse()
    return path


def path_to(leaf: Message | None) -> list[Message]:
    """Root-to-leaf messages ending at ``leaf`` (empty for None)."""
    if leaf is None:
        return []
    by_id = {m.pk: m for m in Message.objects.filter(conversation_id=leaf.conversation_id)}
    by_id.setdefault(leaf.pk, leaf)
    return _walk_up(by_id, leaf.pk)


def active_path(conversation: Conversation) -> list[Message]:
    return [message for message, _ in thread_entries(conversation)]


def answers_on_screen(question: Message) -> bool:
    """Whether the branch on screen ends with the answer to ``question`` (a user message)."""
    leaf_id = Conversation.objects.filter(pk=question.conversation_id).values("current_leaf_id")
    return Message.objects.filter(pk__in=leaf_id, parent_id=question.pk).exists()


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
    return _position(siblings, message.pk)


def _position(siblings: list[int], message_id: int) -> SiblingPosition:
    i = siblings.index(message_id)
    return SiblingPosition(
        index=i + 1,
        count=len(siblings),
        previous_id=siblings[i - 1] if i > 0 else None,
        next_id=siblings[i + 1] if i + 1 < len(siblings) else None,
    )


def thread_entries(conversation: Conversation) -> list[tuple[Message, SiblingPosition]]:
    """The branch on screen, each message with its place among its siblings: one query for
    the whole conversation (a send renders this while the answer waits to start)."""
    if conversation.current_leaf_id is None:
        return []
    messages = list(Message.objects.filter(conversation_id=conversation.pk))  # created_at, id
    by_id = {m.pk: m for m in messages}
    children: dict[int | None, list[int]] = {}
    for m in messages:
        children.setdefault(m.parent_id, []).append(m.pk)
    path = _walk_up(by_id, conversation.current_leaf_id)
    return [(m, _position(children[m.parent_id], m.pk)) for m in path]
