"""Fitting a conversation into the model's context window.

Rule: the system prompt (persona) is always kept, then turns are dropped oldest first until the
prompt plus room for the answer (its max tokens) fits; the newest user turn is never dropped. If
even that does not fit, the answer gets the room that is left, when that is at least
``MIN_ANSWER_TOKENS`` (max tokens is an upper bound: asking for the whole window must not make
every answer fail); with less, the request is refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from feedback.services.chat import ChatInputError


@dataclass(frozen=True)
class HistoryTurn:
    role: str  # "system" | "user" | "assistant"
    content: str


# The least room an answer is given when the prompt leaves less than its max tokens.
MIN_ANSWER_TOKENS = 32


@dataclass(frozen=True)
class FittedHistory:
    messages: list[HistoryTurn]
    dropped_turns: int
    prompt_tokens: int
    max_new_tokens: int  # as asked, or the room left when that is less


def fit_history(
    system_prompt: str,
    turns: Sequence[HistoryTurn],
    *,
    count_tokens: Callable[[Sequence[HistoryTurn]], int],
    context_length: int,
    max_new_tokens: int,
) -> FittedHistory:
    """Keep the system prompt and the newest turns so that prompt + answer fit the context."""
    if not turns or turns[-1].role != "user":
        raise ValueError("the history must end with a user turn")
    budget = context_length - max_new_tokens
    system = [HistoryTurn("system", system_prompt)] if system_prompt else []
    candidate: list[HistoryTurn] = []
    used = 0
    for start in range(len(turns)):
        # Never start on an assistant turn: the model would see an answer without its question.
        if turns[start].role != "user":
            continue
        candidate = system + list(turns[start:])
        used = count_tokens(candidate)
        if used <= budget:
            return FittedHistory(candidate, start, used, max_new_tokens)
    # The newest question alone (the last candidate) with less room for the answer.
    room = context_length - used
    if room >= min(MIN_ANSWER_TOKENS, max_new_tokens):
        return FittedHistory(candidate, len(turns) - 1, used, room)
    raise ChatInputError(
        f"This message is too long for the model's context window ({context_length} tokens, "
        "with the persona and room for an answer): shorten it."
    )
