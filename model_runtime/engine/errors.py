"""Why the engine refused or ended a request; the HTTP server maps each to a status code."""

from __future__ import annotations


class EngineError(Exception):
    """Base of every error the engine raises to its callers."""


class InvalidRequestError(EngineError, ValueError):
    """A request the engine cannot serve as given (empty prompt, unknown token id, n too big).
    HTTP 400."""


class PromptTooLongError(InvalidRequestError):
    """The prompt leaves no room for one generated token in the model's context. HTTP 400.

    Rule: a prompt of P tokens is accepted when P <= max_seq_len - 1; nothing is truncated, so
    the caller decides what to drop (truncating silently would change the conversation)."""

    def __init__(self, prompt_tokens: int, max_seq_len: int) -> None:
        super().__init__(
            f"the prompt has {prompt_tokens} tokens; the model's context is {max_seq_len} tokens, "
            f"so a prompt may have at most {max_seq_len - 1}"
        )
        self.prompt_tokens = prompt_tokens
        self.max_seq_len = max_seq_len


class QueueFullError(EngineError):
    """Refused at once: the running batch and the waiting queue are full. HTTP 429."""


class EngineClosedError(EngineError):
    """The engine is shut down (or its scheduler died); nothing more is served. HTTP 503."""


class GenerationFailedError(EngineError):
    """A decode step raised; every request of that step's batch ends with this. HTTP 500."""


class SwapError(EngineError):
    """A checkpoint was refused by hot swap (load, hash, tokenizer or smoke generation failed);
    the serving version is unchanged."""


class SwapInProgressError(SwapError):
    """Another swap is loading or verifying a version right now."""
