"""Which inference client this process uses: remote when INFERENCE_URL is set, else in-process."""

from __future__ import annotations

import threading

from django.conf import settings

from feedback.inference.base import InferenceClient, InferenceUnavailable

_lock = threading.Lock()
_client: InferenceClient | None = None


def get_inference_client() -> InferenceClient:
    """The process-wide client, created on first use (loading a policy takes seconds)."""
    global _client
    with _lock:
        if _client is None:
            _client = _create()
        return _client


def inference_client_if_ready() -> InferenceClient | None:
    """The process-wide client if it is made already, else None: never waits for a policy
    that is loading (nor for the lock its loading holds)."""
    return _client


def reset_inference_client() -> None:
    """Forget the client (tests, and after settings change); an in-process engine is closed."""
    global _client
    with _lock:
        close = getattr(_client, "close", None)
        if close is not None:
            close()
        _client = None


def _create() -> InferenceClient:
    from model_runtime.tokenizer import ChatTokenizer

    tokenizer_path = settings.POLICY_DIR / "tokenizer.json"
    if settings.INFERENCE_URL:
        from feedback.inference.remote import RemoteInferenceClient

        if not tokenizer_path.exists():
            raise InferenceUnavailable(f"no tokenizer at {tokenizer_path} (set POLICY_DIR)")
        return RemoteInferenceClient(
            base_url=settings.INFERENCE_URL,
            tokenizer=ChatTokenizer.from_file(tokenizer_path),
            context_length=settings.INFERENCE_CONTEXT_LENGTH,
            api_key=settings.INFERENCE_API_KEY,
            timeout_s=settings.INFERENCE_TIMEOUT_S,
        )
    from feedback.inference.local import LocalInferenceClient

    return LocalInferenceClient.load(
        settings.POLICY_DIR,
        device=settings.TORCH_DEVICE,
        max_batch=settings.ENGINE_MAX_BATCH,
        max_queue=settings.ENGINE_MAX_QUEUE,
        own_process=settings.ENGINE_PROCESS,
    )
