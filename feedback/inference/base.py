"""The one interface both inference paths implement."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Protocol


class InferenceBusy(Exception):
    """The engine's queue is full: the user should try again in a moment."""


class InferenceUnavailable(Exception):
    """No policy is loaded or the engine cannot be reached."""


class PromptTooLong(Exception):
    """The prompt does not fit the model's context window."""


@dataclass(frozen=True)
class ChatTurn:
    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class ChatGenerationRequest:
    messages: Sequence[ChatTurn]
    temperature: float
    max_new_tokens: int
    seed: int | None = None
    user: str = ""


@dataclass(frozen=True)
class GenerationFinished:
    """The last item of a stream: why it ended and what it cost."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    model_version: str


class InferenceClient(Protocol):
    def context_length(self) -> int: ...

    def count_tokens(self, messages: Sequence[ChatTurn]) -> int:
        """Prompt tokens of ``messages`` laid out as a chat, with the answer prompt."""
        ...

    def stream_chat(
        self, request: ChatGenerationRequest
    ) -> AsyncGenerator[str | GenerationFinished, None]:
        """Text pieces as they are produced, then one GenerationFinished.

        Closing the iterator early (``aclose``) cancels the generation.
        """
        ...
