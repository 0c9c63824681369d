"""The chat's writes: turns, branches, siblings, limits, the answer lifecycle and the sweep."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from factories import ConversationFactory, PersonaFactory, UserFactory

from feedback.models import ChatLimits, Message, MessageStatus
from feedback.services.chat import (
    ChatInputError,
    do_cancel_answer,
    do_edit_user_message,
    do_finish_answer,
    do_open_new_conversation,
    do_regenerate,
    do_send_message,
    do_show_message,
    do_start_answer,
    do_start_conversation,
    do_sweep_open_answers,
    do_update_sampling,
)
from feedback.services.chat_tree import active_path, sibling_position, thread_entries

pytestmark = pytest.mark.django_db


def complete(answer: Message, text: str = "an answer") -> None:
    assert do_start_answer(answer_id=answer.pk, model_version="v1", dropped_turns=0)
    do_finish_answer(answer_id=answer.pk, status=MessageStatus.COMPLETE, content=text)


def test_start_uses_the_default_persona_and_limits() -> None:
    persona = PersonaFactory(is_default=True, system_prompt="Be brief.")
    limits = ChatLimits.current()
    conversation = do_start_conversation(owner=UserFactory())
    assert conversation.persona == persona and conversation.system_prompt == "Be brief."
    assert conversation.temperature == limits.default_temperature


def test_new_chat_opens_the_newest_conversation_while_nothing_was_said_in_it() -> None:
    user, pirate = UserFactory(), PersonaFactory(name="Pirate")
    first = do_open_new_conversation(owner=user)
    assert do_open_new_conversation(owner=user) == first  # no trail of empty conversations
    with_persona = do_open_new_conversation(owner=user, persona=pirate)
    assert with_persona != first and with_persona.persona == pirate  # another persona: new
    assert do_open_new_conversation(owner=user, persona=pirate) == with_persona
    do_send_message(conversation=with_persona, text="Ahoy")
    assert do_open_new_conversation(owner=user, persona=pirate) not in (first, with_persona)
    other = UserFactory()
    assert do_open_new_conversation(owner=other).owner == other  # never another user's


def test_send_builds_a_path_and_titles_the_conversation() -> None:
    conversation = ConversationFactory()
    turn = do_send_message(conversation=conversation, text="  How do rivers form?  ")
    assert turn.user.content == "How do rivers form?"
    assert turn.answer.status == MessageStatus.PENDING and turn.answer.parent == turn.user
    conversation.refresh_from_db()
    assert conversation.title == "How do rivers form?"
    assert active_path(conversation) == [turn.user, turn.answer]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("", "empty"), ("   \n", "empty"), ("a\x00b", "NUL"), ("x" * 8001, "limit is 8,000")],
)
def test_bad_messages_are_refused_clearly(text: str, fragment: str) -> None:
    conversation = ConversationFactory()
    with pytest.raises(ChatInputError, match=fragment):
        do_send_message(conversation=conversation, text=text)
    assert not Message.objects.exists()


def test_one_answer_at_a_time() -> None:
    conversation = ConversationFactory()
    do_send_message(conversation=conversation, text="first")
    with pytest.raises(ChatInputError, match="still being written"):
        do_send_message(conversation=conversation, text="second")


def test_regenerate_adds_a_sibling_and_switching_follows_branches() -> None:
    conversation = ConversationFactory()
    turn = do_send_message(conversation=conversation, text="hi")
    complete(turn.answer, "first answer")
    second = do_regenerate(answer=turn.answer)
    assert second.parent == turn.user
    assert sibling_position(second).index == 2 and sibling_position(second).count == 2
    complete(second, "second answer")
    # Go on from the second answer, then switch back to the first: its branch comes back.
    later = do_send_message(conversation=conversation, text="and then?")
    complete(later.answer)
    do_show_message(message=turn.answer)
    conversation.refresh_from_db()
    assert [m.content for m in active_path(conversation)] == ["hi", "first answer"]
    do_show_message(message=second)
    conversation.refresh_from_db()
    assert active_path(conversation)[-1] == later.answer  # the newest leaf under it


def test_edit_makes_a_branch_beside_the_original() -> None:
    conversation = ConversationFactory()
    turn = do_send_message(conversation=conversation, text="tell me about cats")
    complete(turn.answer)
    edited = do_edit_user_message(message=turn.user, text="tell me about dogs")
    assert edited.user.parent == turn.user.parent
    assert sibling_position(edited.user).count == 2
    conversation.refresh_from_db()
    assert active_path(conversation)[0].content == "tell me about dogs"
    with pytest.raises(ChatInputError):
        do_regenerate(answer=edited.user)


def test_finished_answers_are_never_reopened() -> None:
    conversation = ConversationFactory()
    turn = do_send_message(conversation=conversation, text="hi")
    do_cancel_answer(answer=turn.answer)
    turn.answer.refresh_from_db()
    assert turn.answer.status == MessageStatus.CANCELLED
    assert not do_start_answer(answer_id=turn.answer.pk, model_version="v", dropped_turns=0)
    do_finish_answer(answer_id=turn.answer.pk, status=MessageStatus.COMPLETE, content="late")
    turn.answer.refresh_from_db()
    assert turn.answer.status == MessageStatus.CANCELLED and turn.answer.content == ""


def test_sampling_within_admin_limits() -> None:
    conversation = ConversationFactory()
    limits = ChatLimits.current()
    do_update_sampling(conversation=conversation, temperature=0.2, max_new_tokens=64)
    with pytest.raises(ChatInputError, match="Temperature"):
        do_update_sampling(
            conversation=conversation, temperature=limits.max_temperature + 0.1, max_new_tokens=64
        )
    with pytest.raises(ChatInputError, match="Max tokens"):
        do_update_sampling(
            conversation=conversation, temperature=0.2, max_new_tokens=limits.max_new_tokens + 1
        )


def test_sweep_closes_only_stale_answers_keeping_their_text() -> None:
    conversation = ConversationFactory()
    stale_streaming = do_send_message(conversation=conversation, text="a").answer
    do_start_answer(answer_id=stale_streaming.pk, model_version="v", dropped_turns=0)
    Message.objects.filter(pk=stale_streaming.pk).update(content="half an ans")
    other = ConversationFactory()
    stale_pending = do_send_message(conversation=other, text="b").answer
    fresh = do_send_message(conversation=ConversationFactory(), text="c").answer
    old = fresh.updated_at - timedelta(minutes=10)
    Message.objects.filter(pk__in=[stale_streaming.pk, stale_pending.pk]).update(updated_at=old)

    assert do_sweep_open_answers(stale_after_s=120) == 2
    stale_streaming.refresh_from_db()
    stale_pending.refresh_from_db()
    fresh.refresh_from_db()
    assert stale_streaming.status == MessageStatus.FAILED
    assert stale_streaming.content == "half an ans" and "interrupted" in stale_streaming.error
    assert stale_pending.status == MessageStatus.CANCELLED
    assert fresh.status == MessageStatus.PENDING


def test_the_thread_on_screen_and_its_sibling_positions_come_from_one_query(
    django_assert_num_queries: Any,
) -> None:
    conversation = ConversationFactory()
    first = do_send_message(conversation=conversation, text="one")
    do_finish_answer(answer_id=first.answer.pk, status=MessageStatus.COMPLETE, content="a")
    second = do_regenerate(answer=first.answer)
    do_finish_answer(answer_id=second.pk, status=MessageStatus.COMPLETE, content="b")
    conversation.refresh_from_db()
    with django_assert_num_queries(1):
        entries = thread_entries(conversation)
    assert [m.pk for m, _ in entries] == [first.user.pk, second.pk]
    user_place, answer_place = (place for _, place in entries)
    assert (user_place.index, user_place.count) == (1, 1)
    assert (answer_place.index, answer_place.count) == (2, 2)
    assert answer_place.previous_id == first.answer.pk and answer_place.next_id is None
