"""Both inference paths sample an answer with the chat's settings: the nucleus and the
frequency penalty that keeps the base policy out of loops (docs/base-model.md)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from feedback.inference.base import ChatGenerationRequest, ChatTurn, InferenceBusy
from feedback.inference.local import LocalInferenceClient
from feedback.inference.remote import RemoteInferenceClient
from model_runtime.engine import QueueFullError
from model_runtime.sampling import (
    CHAT_FREQUENCY_PENALTY,
    CHAT_TEMPERATURE,
    CHAT_TOP_P,
    SamplingParams,
)
from model_runtime.tokenizer import ChatTokenizer

TOKENIZER = Path(__file__).resolve().parents[2] / "models" / "base" / "tokenizer.json"
REQUEST = ChatGenerationRequest(
    messages=[ChatTurn("user", "What is a giraffe?")], temperature=0.7, max_new_tokens=20
)


async def _drain(client: Any) -> None:
    async for _ in client.stream_chat(REQUEST):
        pass


class _RecordingEngine:
    """Takes the submitted params, then refuses as a full queue does."""

    def __init__(self) -> None:
        self.tokenizer = ChatTokenizer.from_file(TOKENIZER)
        self.params: list[SamplingParams] = []

    def submit(self, prompt: list[int], params: SamplingParams) -> None:
        self.params.append(params)
        raise QueueFullError("full")


def test_the_in_process_engine_gets_the_chats_penalty_and_nucleus() -> None:
    engine = _RecordingEngine()
    with pytest.raises(InferenceBusy):
        asyncio.run(_drain(LocalInferenceClient(engine)))  # type: ignore[arg-type]
    [params] = engine.params
    assert params.frequency_penalty == CHAT_FREQUENCY_PENALTY > 0
    assert params.top_p == CHAT_TOP_P
    assert params.repetition_penalty == 1.0  # it would also count the question's words


def test_a_remote_engine_gets_the_same_in_its_request() -> None:
    bodies: list[dict[str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(json.loads(request.content))
        return httpx.Response(429, json={"error": {"message": "busy"}})

    client = RemoteInferenceClient(
        base_url="http://engine.invalid",
        tokenizer=ChatTokenizer.from_file(TOKENIZER),
        context_length=512,
        transport=httpx.MockTransport(handler),
    )
    with pytest.raises(InferenceBusy):
        asyncio.run(_drain(client))
    [body] = bodies
    assert body["frequency_penalty"] == CHAT_FREQUENCY_PENALTY
    assert body["top_p"] == CHAT_TOP_P
    assert "repetition_penalty" not in body


def test_the_model_cards_temperature_is_the_chats_default() -> None:
    """Samples and the topic check in docs/base-model.md use CHAT_TEMPERATURE: it must be what
    a new conversation samples at."""
    from feedback.models import ChatLimits

    assert ChatLimits._meta.get_field("default_temperature").default == CHAT_TEMPERATURE
