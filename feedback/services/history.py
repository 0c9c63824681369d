"""Fitting a conversation into the model's context window.

Rule: the system prompt (persona) is always kept, then turns are dropped oldest first until the
prompt plus room for the answer fits; the newest user turn is never dropped. If even that does
not fit, the request is refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from feedback.services.chat import ChatInputError


@dataclass(frozen=True)
class HistoryTurn:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class FittedHistory:
    messages: list[HistoryTurn]
    dropped_turns: int
    prompt_tokens: int


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
    for start in range(len(turns)):
        # Never start on an assistant turn: the model would see an answer without its question.
        if turns[start].role != "user":
            continue
        candidate = system + list(turns[start:])
        used = count_tokens(candidate)
        if used <= budget:
            return FittedHistory(candidate, dropped_turns=start, prompt_tokens=used)
    raise ChatInputError(
        "This message is too long for the model's context window even with the earlier "
        "conversation left out: shorten it or lower the answer's max tokens."
    )
