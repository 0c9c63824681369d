"""The inference engine: continuous batching, streaming, cancellation, backpressure, hot swap.

Modules: ``engine`` (the :class:`Engine` and its scheduler thread), ``batch`` (one version's
running batch over a padded KV cache), ``sampler`` (per-row sampling in a batch), ``request``
(handles, results, versions), ``versions`` (loading and verifying a checkpoint), ``errors``.
"""

from model_runtime.engine.engine import Engine, EngineConfig, EngineStats
from model_runtime.engine.errors import (
    EngineClosedError,
    EngineError,
    GenerationFailedError,
    InvalidRequestError,
    PromptTooLongError,
    QueueFullError,
    SwapError,
    SwapInProgressError,
)
from model_runtime.engine.request import (
    CompletionResult,
    FinishReason,
    ModelVersion,
    RequestHandle,
    TokenLogprob,
)

__all__ = [
    "CompletionResult",
    "Engine",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "EngineStats",
    "FinishReason",
    "GenerationFailedError",
    "InvalidRequestError",
    "ModelVersion",
    "PromptTooLongError",
    "QueueFullError",
    "RequestHandle",
    "SwapError",
    "SwapInProgressError",
    "TokenLogprob",
]
