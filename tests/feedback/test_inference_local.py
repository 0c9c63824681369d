"""The web app's own engine: served in the fastest dtype of the machine (``"auto"``), and from a
child process (as deployed) with the same answers and refusals as the client promises."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from feedback.inference.base import (
    ChatGenerationRequest,
    ChatTurn,
    GenerationFinished,
    InferenceBusy,
    PromptTooLong,
)
from feedback.inference.local import LocalInferenceClient
from model_runtime.engine import engine as engine_module


def test_the_chat_serves_in_the_fastest_dtype_here(tiny_policy_dir: Path) -> None:
    client = LocalInferenceClient.load(tiny_policy_dir)
    try:
        dtypes = {p.dtype for p in client.engine.model.parameters()}  # type: ignore[union-attr]
        assert dtypes == {engine_module.fastest_dtype("cpu")}
    finally:
        client.close()


def _request(text: str, max_new_tokens: int) -> ChatGenerationRequest:
    return ChatGenerationRequest(
        messages=[ChatTurn("user", text)], temperature=0.0, max_new_tokens=max_new_tokens
    )


async def _drain(client: LocalInferenceClient, request: ChatGenerationRequest) -> list[object]:
    return [item async for item in client.stream_chat(request)]


def test_an_engine_in_its_own_process_answers_as_the_one_in_this_process(
    tiny_policy_dir: Path,
) -> None:
    request = _request("Tell me about rivers.", 10)
    here = LocalInferenceClient.load(tiny_policy_dir)
    try:
        expected = asyncio.run(_drain(here, request))
    finally:
        here.close()
    child = LocalInferenceClient.load(tiny_policy_dir, own_process=True)
    try:
        assert child.context_length() == here.context_length()
        assert child.count_tokens(request.messages) == here.count_tokens(request.messages)
        items = asyncio.run(_drain(child, request))
    finally:
        child.close()
    assert isinstance(items[-1], GenerationFinished)
    assert items[-1].completion_tokens > 0
    assert "".join(str(i) for i in items[:-1]) == "".join(str(i) for i in expected[:-1])
    assert items[-1] == expected[-1]


def test_its_refusals_are_the_clients_errors(tiny_policy_dir: Path) -> None:
    client = LocalInferenceClient.load(tiny_policy_dir, max_batch=1, max_queue=0, own_process=True)
    try:
        with pytest.raises(PromptTooLong):
            asyncio.run(_drain(client, _request("rivers " * 2000, 4)))

        async def two_at_once() -> list[object]:
            long = _request("Tell me about rivers.", 300)
            return await asyncio.gather(
                _drain(client, long), _drain(client, long), return_exceptions=True
            )

        outcomes = asyncio.run(two_at_once())
        assert sum(isinstance(o, InferenceBusy) for o in outcomes) == 1
        assert sum(isinstance(o, list) for o in outcomes) == 1
    finally:
        client.close()
