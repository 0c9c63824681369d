"""The chat answered by a separate engine process over its OpenAI-compatible API."""

from __future__ import annotations

import asyncio
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from factories import ConversationFactory
from servicekit import PYTHON, ROOT, clean_env, free_port
from sse_streams import read_stream

from feedback.inference.base import ChatGenerationRequest, ChatTurn, InferenceClient
from feedback.inference.factory import get_inference_client, reset_inference_client
from feedback.inference.local import LocalInferenceClient
from feedback.inference.remote import RemoteInferenceClient
from feedback.models import MessageStatus
from feedback.services.answer_runs import close_run_connections
from feedback.services.chat import do_send_message, do_update_sampling
from model_runtime.tokenizer import ChatTokenizer

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


@pytest.fixture(autouse=True)
def close_sync_thread_connections() -> Iterator[None]:
    """The streams reach the database from asgiref's sync thread, the answer runs from their
    own threads: close those connections after each test, so the test database can be dropped
    at the end."""
    yield
    asyncio.run(sync_to_async(connections.close_all)())
    close_run_connections()


@pytest.fixture
def engine_url(tiny_policy_dir: Path, tmp_path: Path) -> Any:
    port = free_port()
    with open(tmp_path / "engine.log", "w") as log:
        proc = subprocess.Popen(
            [
                PYTHON,
                "-m",
                "model_runtime.server",
                "--model",
                str(tiny_policy_dir),
                "--port",
                str(port),
                "--dtype",
                "auto",  # as the in-process engine: the same numbers from both
                "--api-key",
                "sekret",
            ],
            cwd=ROOT,
            env=clean_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((tmp_path / "engine.log").read_text())
            time.sleep(0.3)
        yield url
        proc.terminate()
        proc.wait(timeout=20)


def test_chat_through_a_remote_engine(
    engine_url: str, tiny_policy_dir: Path, settings: Any
) -> None:
    settings.INFERENCE_URL = engine_url
    settings.INFERENCE_API_KEY = "sekret"
    settings.POLICY_DIR = tiny_policy_dir  # for its tokenizer: history is fitted before sending
    reset_inference_client()
    assert isinstance(get_inference_client(), RemoteInferenceClient)
    conversation = ConversationFactory()
    do_update_sampling(conversation=conversation, temperature=0.0, max_new_tokens=30)
    answer = do_send_message(conversation=conversation, text="Tell me about the river.").answer

    body = asyncio.run(read_stream(conversation, answer))
    reset_inference_client()
    answer.refresh_from_db()
    assert answer.status == MessageStatus.COMPLETE, answer.error
    assert body.count(b"event: token") >= 3 and answer.content
    assert answer.model_version.startswith("tiny-v1@")
    assert answer.completion_tokens and answer.prompt_tokens


def test_a_wrong_key_fails_the_answer_clearly(
    engine_url: str, tiny_policy_dir: Path, settings: Any
) -> None:
    settings.INFERENCE_URL = engine_url
    settings.INFERENCE_API_KEY = "wrong"
    settings.POLICY_DIR = tiny_policy_dir
    reset_inference_client()
    conversation = ConversationFactory()
    answer = do_send_message(conversation=conversation, text="hello").answer

    asyncio.run(read_stream(conversation, answer))
    reset_inference_client()
    answer.refresh_from_db()
    assert answer.status == MessageStatus.FAILED
    assert "401" in answer.error


def test_remote_and_in_process_engines_sample_alike(engine_url: str, tiny_policy_dir: Path) -> None:
    """Same checkpoint, seed and settings (temperature, the chat's nucleus): same answer."""
    request = ChatGenerationRequest(
        messages=[ChatTurn("user", "Tell me about the river.")],
        temperature=0.9,
        max_new_tokens=40,
        seed=11,
    )
    tokenizer = ChatTokenizer.from_str((tiny_policy_dir / "tokenizer.json").read_text())
    remote = RemoteInferenceClient(
        base_url=engine_url, tokenizer=tokenizer, context_length=512, api_key="sekret"
    )
    local = LocalInferenceClient.load(tiny_policy_dir)

    async def answer(client: InferenceClient) -> str:
        return "".join([p async for p in client.stream_chat(request) if isinstance(p, str)])

    try:
        from_local = asyncio.run(answer(local))
    finally:
        local.close()
    assert from_local and asyncio.run(answer(remote)) == from_local
