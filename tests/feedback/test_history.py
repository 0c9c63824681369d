"""Fitting history into the context window: persona kept, oldest turns dropped first."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from feedback.services.chat import ChatInputError
from feedback.services.history import MIN_ANSWER_TOKENS, HistoryTurn, fit_history


def words(turns: Sequence[HistoryTurn]) -> int:
    # 2 tokens of framing per turn, one per word: easy to reason about by hand.
    return sum(2 + len(t.content.split()) for t in turns) + 1


TURNS = [
    HistoryTurn("user", "one two three"),  # 5
    HistoryTurn("assistant", "four five"),  # 4
    HistoryTurn("user", "six"),  # 3
    HistoryTurn("assistant", "seven eight"),  # 4
    HistoryTurn("user", "nine ten"),  # 4
]


def test_everything_fits() -> None:
    fitted = fit_history(
        "be kind", TURNS, count_tokens=words, context_length=100, max_new_tokens=10
    )
    assert fitted.dropped_turns == 0 and fitted.messages[0] == HistoryTurn("system", "be kind")
    assert fitted.prompt_tokens == 4 + 5 + 4 + 3 + 4 + 4 + 1


def test_oldest_turns_go_first_and_the_persona_stays() -> None:
    # Budget 20 - 5 = 15: system(4) + six..ten (3+4+4) + 1 = 16 > 15, so only "nine ten" stays.
    fitted = fit_history("be kind", TURNS, count_tokens=words, context_length=20, max_new_tokens=5)
    assert [t.content for t in fitted.messages] == ["be kind", "nine ten"]
    assert fitted.dropped_turns == 4


def test_never_starts_on_an_answer() -> None:
    fitted = fit_history("", TURNS, count_tokens=words, context_length=17, max_new_tokens=5)
    assert fitted.messages[0].role == "user"


def test_too_long_even_alone() -> None:
    with pytest.raises(ChatInputError, match="too long"):
        fit_history("be kind", TURNS, count_tokens=words, context_length=10, max_new_tokens=5)


def test_an_answer_that_asks_for_the_whole_window_gets_the_room_left() -> None:
    """Max tokens is an upper bound: set to the context length, every answer failed."""
    fitted = fit_history(
        "be kind", TURNS, count_tokens=words, context_length=100, max_new_tokens=100
    )
    # system(4) + "nine ten"(4) + 1 = 9 tokens of prompt: 91 left for the answer
    assert [t.content for t in fitted.messages] == ["be kind", "nine ten"]
    assert fitted.dropped_turns == 4 and fitted.prompt_tokens == 9
    assert fitted.max_new_tokens == 91


def test_an_answer_is_not_squeezed_below_a_useful_length() -> None:
    assert MIN_ANSWER_TOKENS == 32
    with pytest.raises(ChatInputError, match="too long"):  # 40 - 9 = 31 tokens of room
        fit_history("be kind", TURNS, count_tokens=words, context_length=40, max_new_tokens=40)
    fitted = fit_history("be kind", TURNS, count_tokens=words, context_length=41, max_new_tokens=40)
    assert fitted.max_new_tokens == 32


def test_what_fits_keeps_the_asked_max_tokens() -> None:
    fitted = fit_history("be kind", TURNS, count_tokens=words, context_length=20, max_new_tokens=5)
    assert fitted.max_new_tokens == 5
