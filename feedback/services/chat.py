"""Every write of the chat: conversations, turns, branches, answer lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from feedback.models import (
    OPEN_STATUSES,
    ChatLimits,
    Conversation,
    Message,
    MessageRole,
    MessageStatus,
    Persona,
)
from feedback.services.chat_tree import deepest_latest_leaf


class ChatInputError(ValueError):
    """A request the user can fix: the message says what to change."""


class AnswerStillOpen(ChatInputError):
    """Refused because an answer of the conversation is still being written (another tab's,
    say): the reason is moot once that answer ends, and the page takes it away then."""


def validate_user_text(text: str, *, limits: ChatLimits) -> str:
    if "\x00" in text:
        raise ChatInputError("The message contains a NUL byte; remove it and send again.")
    text = text.strip()
    if not text:
        raise ChatInputError("The message is empty.")
    if len(text) > limits.max_message_chars:
        raise ChatInputError(
            f"The message is {len(text):,} characters long; the limit is "
            f"{limits.max_message_chars:,}."
        )
    return text


def conversations_of(user: User) -> QuerySet[Conversation]:
    """The only way views look conversations up: another user's id is simply not found."""
    return Conversation.objects.filter(owner=user)


@transaction.atomic
def do_start_conversation(*, owner: User, persona: Persona | None = None) -> Conversation:
    limits = ChatLimits.current()
    persona = persona or _default_persona()
    return Conversation.objects.create(
        owner=owner,
        persona=persona,
        system_prompt=persona.system_prompt if persona else "",
        temperature=limits.default_temperature,
        max_new_tokens=limits.default_new_tokens,
    )


def _default_persona() -> Persona | None:
    """The persona a conversation gets when none is picked (admins may mark one default)."""
    return Persona.objects.filter(is_active=True, is_default=True).first()


def do_open_new_conversation(*, owner: User, persona: Persona | None = None) -> Conversation:
    """What "New chat" opens: the owner's newest conversation when nothing was said in it yet
    and it has the persona asked for (clicking again does not leave a trail of empty
    conversations), else a new one (``do_start_conversation``)."""
    persona = persona or _default_persona()
    newest = Conversation.objects.filter(owner=owner).order_by("-created_at", "-pk").first()
    if (
        newest is not None
        and newest.persona_id == (persona.pk if persona else None)
        and not newest.messages.exists()
    ):
        return newest
    return do_start_conversation(owner=owner, persona=persona)


@transaction.atomic
def do_rename_conversation(*, conversation: Conversation, title: str) -> Conversation:
    title = " ".join(title.replace("\x00", "").split())
    if not title:
        raise ChatInputError("A title cannot be empty.")
    conversation.title = title[:120]
    conversation.save(update_fields=["title", "updated_at"])
    return conversation


@transaction.atomic
def do_delete_conversation(*, conversation: Conversation) -> None:
    conversation.delete()


@transaction.atomic
def do_update_sampling(
    *, conversation: Conversation, temperature: float, max_new_tokens: int
) -> Conversation:
    limits = ChatLimits.current()
    if not 0 <= temperature <= limits.max_temperature:
        raise ChatInputError(f"Temperature must be between 0 and {limits.max_temperature}.")
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise ChatInputError(f"Max tokens must be between 1 and {limits.max_new_tokens}.")
    conversation.temperature = temperature
    conversation.max_new_tokens = max_new_tokens
    conversation.save(update_fields=["temperature", "max_new_tokens", "updated_at"])
    return conversation


@dataclass(frozen=True)
class Turn:
    user: Message
    answer: Message


def open_answers_of(conversation: Conversation) -> QuerySet[Message]:
    """The conversation's answers still being written (one at most, by the rule below)."""
    return Message.objects.filter(
        conversation=conversation,
        role=MessageRole.ASSISTANT,
        status__in=OPEN_STATUSES,
    )


def _refuse_if_answering(conversation: Conversation) -> None:
    if open_answers_of(conversation).exists():
        raise AnswerStillOpen("An answer is still being written: wait for it or stop it.")


def _new_answer(conversation: Conversation, parent: Message) -> Message:
    return Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=MessageRole.ASSISTANT,
        status=MessageStatus.PENDING,
        sampling_params={
            "temperature": conversation.temperature,
            "max_new_tokens": conversation.max_new_tokens,
        },
    )


def _touch(conversation: Conversation, leaf: Message, also: list[str] | None = None) -> None:
    conversation.current_leaf = leaf
    conversation.save(update_fields=["current_leaf", "updated_at", *(also or [])])


@transaction.atomic
def do_send_message(
    *, conversation: Conversation, text: str, limits: ChatLimits | None = None
) -> Turn:
    """Append a user turn to the branch on screen and open a pending answer to it
    (``turn.answer.conversation`` is the conversation as it now stands)."""
    conversation = Conversation.objects.select_for_update().get(pk=conversation.pk)
    text = validate_user_text(text, limits=limits or ChatLimits.current())
    _refuse_if_answering(conversation)
    user = Message.objects.create(
        conversation=conversation,
        parent_id=conversation.current_leaf_id,  # by id: the leaf itself is not needed here
        role=MessageRole.USER,
        content=text,
    )
    answer = _new_answer(conversation, user)
    named = conversation.title == "New conversation"
    if named:  # a first message names the conversation
        conversation.title = " ".join(text.split())[:60]
    _touch(conversation, answer, also=["title"] if named else [])
    return Turn(user=user, answer=answer)


@transaction.atomic
def do_regenerate(*, answer: Message) -> Message:
    """A new sibling answer to the same user turn; it becomes the one on screen."""
    conversation = Conversation.objects.select_for_update().get(pk=answer.conversation_id)
    if answer.role != MessageRole.ASSISTANT or answer.parent is None:
        raise ChatInputError("Only an answer can be regenerated.")
    _refuse_if_answering(conversation)
    sibling = _new_answer(conversation, answer.parent)
    _touch(conversation, sibling)
    return sibling


@transaction.atomic
def do_edit_user_message(*, message: Message, text: str, limits: ChatLimits | None = None) -> Turn:
    """Editing a user turn starts a new branch beside it, with a fresh answer."""
    conversation = Conversation.objects.select_for_update().get(pk=message.conversation_id)
    if message.role != MessageRole.USER:
        raise ChatInputError("Only your own messages can be edited.")
    text = validate_user_text(text, limits=limits or ChatLimits.current())
    _refuse_if_answering(conversation)
    user = Message.objects.create(
        conversation=conversation, parent=message.parent, role=MessageRole.USER, content=text
    )
    answer = _new_answer(conversation, user)
    _touch(conversation, answer)
    return Turn(user=user, answer=answer)


@transaction.atomic
def do_show_message(*, message: Message) -> Conversation:
    """Switch the screen to the branch through ``message`` (its newest descendants); not while
    an answer is written, which would leave the screen (and its Stop) with it."""
    conversation = Conversation.objects.select_for_update().get(pk=message.conversation_id)
    _refuse_if_answering(conversation)
    conversation.current_leaf = deepest_latest_leaf(message)
    conversation.save(update_fields=["current_leaf"])
    return conversation


# --- the answer's lifecycle, driven by the stream runner --------------------------------------


@transaction.atomic
def do_start_answer(*, answer_id: int, model_version: str, dropped_turns: int) -> bool:
    """pending -> streaming; False when the answer is no longer pending (stopped, or taken)."""
    updated = Message.objects.filter(pk=answer_id, status=MessageStatus.PENDING).update(
        status=MessageStatus.STREAMING,
        model_version=model_version[:80],
        dropped_turns=dropped_turns,
        updated_at=timezone.now(),
    )
    return updated == 1


@transaction.atomic
def do_save_partial_answer(*, answer_id: int, content: str) -> None:
    Message.objects.filter(pk=answer_id, status=MessageStatus.STREAMING).update(
        content=content, updated_at=timezone.now()
    )


@transaction.atomic
def do_finish_answer(
    *,
    answer_id: int,
    status: MessageStatus,
    content: str,
    finish_reason: str = "",
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    first_token_ms: int | None = None,
    latency_ms: int | None = None,
    error: str = "",
) -> None:
    """Close an open answer, keeping what was produced. A closed answer is never reopened."""
    Message.objects.filter(pk=answer_id, status__in=OPEN_STATUSES).update(
        status=status,
        content=content,
        finish_reason=finish_reason[:16],
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        first_token_ms=first_token_ms,
        latency_ms=latency_ms,
        error=error[:300],
        updated_at=timezone.now(),
    )


@transaction.atomic
def do_cancel_answer(*, answer: Message, streaming_too: bool = False) -> None:
    """Stop: a pending answer closes at once; a streaming one closes at its runner's next step,
    or here at once with ``streaming_too`` (when its runner cannot be told: it keeps the text
    saved so far, and the runner's later saves of a closed answer are refused)."""
    closing = OPEN_STATUSES if streaming_too else (MessageStatus.PENDING,)
    Message.objects.filter(pk=answer.pk, status__in=closing).update(
        status=MessageStatus.CANCELLED, finish_reason="stopped", updated_at=timezone.now()
    )


@transaction.atomic
def do_sweep_open_answers(*, stale_after_s: float) -> int:
    """Close answers that nobody is writing any more, keeping what they had produced.

    A running answer saves progress every fraction of a second, so one untouched for
    ``stale_after_s`` was left by a process that stopped (a restart, a crash) or was never
    collected by its page. Returns how many were closed.
    """
    cutoff = timezone.now() - timedelta(seconds=stale_after_s)
    never_started = Message.objects.filter(
        status=MessageStatus.PENDING, updated_at__lt=cutoff
    ).update(
        status=MessageStatus.CANCELLED,
        error="never started: the page was closed first",
        updated_at=timezone.now(),
    )
    interrupted = Message.objects.filter(
        status=MessageStatus.STREAMING, updated_at__lt=cutoff
    ).update(
        status=MessageStatus.FAILED,
        error="interrupted: the server stopped while writing it",
        updated_at=timezone.now(),
    )
    return never_started + interrupted
