"""The server driven by the official ``openai`` client over real HTTP: chat and completions,
plain and streamed, n=2, usage, the exact completion parameters of the project's spec, and
OpenAI-shaped errors (401, 400, 429, 503)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import openai
import pytest
from openai import OpenAI
from serving_harness import ADMIN_KEY, API_KEY, RunningServer, ServeFactory, get_json

from model_runtime.engine import Engine, EngineConfig
from model_runtime.server.app import ServerSettings
from model_runtime.tokenizer import ChatMessage, ChatTokenizer

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello, who are you?"},
]
SPEC_PROMPT = (
    "The following is a conversation with an AI assistant.\n\nHuman: Hello, who are you?\nAI:"
)


def client_for(server: RunningServer, api_key: str = API_KEY) -> OpenAI:
    return OpenAI(base_url=f"{server.base_url}/v1", api_key=api_key, max_retries=0, timeout=60)


def chat_prompt_tokens(tokenizer: ChatTokenizer) -> int:
    messages = [ChatMessage(m["role"], m["content"]) for m in MESSAGES]
    return len(tokenizer.encode_chat(messages, add_generation_prompt=True).ids)


def test_models_lists_the_served_name_and_version(api_server: RunningServer) -> None:
    ids = [model.id for model in client_for(api_server).models.list().data]
    assert ids == ["palmloop", api_server.engine.version.name]


def test_chat_completion(api_server: RunningServer, tokenizer: ChatTokenizer) -> None:
    client = client_for(api_server)
    response = client.chat.completions.create(
        model="palmloop",
        messages=MESSAGES,
        max_tokens=12,
        seed=7,
        temperature=0.8,
        user="alice",
    )
    (choice,) = response.choices
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert response.model == api_server.engine.version.name
    assert response.system_fingerprint == api_server.engine.version.fingerprint
    usage = response.usage
    assert usage is not None
    assert usage.prompt_tokens == chat_prompt_tokens(tokenizer)
    assert 1 <= usage.completion_tokens <= 12
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    again = client.chat.completions.create(
        model="palmloop",
        messages=MESSAGES,
        max_tokens=12,
        seed=7,
        temperature=0.8,
        user="bob",  # accepted (OpenAI's end-user id); it never changes the sampling
    )
    assert again.choices[0].message.content == choice.message.content  # same seed, same answer


def test_streamed_chat_matches_the_plain_answer(api_server: RunningServer) -> None:
    client = client_for(api_server)
    kwargs = {"model": "palmloop", "messages": MESSAGES, "max_tokens": 20, "seed": 3}
    plain = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert content == plain.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason
    assert all(reason is None for reason in finishes[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_n_two_gives_two_seeded_choices(api_server: RunningServer) -> None:
    client = client_for(api_server)
    response = client.chat.completions.create(
        model="palmloop",
        messages=MESSAGES,
        max_tokens=15,
        n=2,
        seed=11,
    )
    assert [choice.index for choice in response.choices] == [0, 1]
    texts = [choice.message.content for choice in response.choices]
    assert texts[0] != texts[1]
    assert response.usage is not None
    streamed = client.chat.completions.create(
        model="palmloop",
        messages=MESSAGES,
        max_tokens=15,
        n=2,
        seed=11,
        stream=True,
    )
    pieces = {0: "", 1: ""}
    for chunk in streamed:
        for choice in chunk.choices:
            pieces[choice.index] += choice.delta.content or ""
    assert [pieces[0], pieces[1]] == texts


def test_completion_with_the_spec_parameters(api_server: RunningServer) -> None:
    client = client_for(api_server)
    response = client.completions.create(
        model="palmloop",
        prompt=SPEC_PROMPT,
        temperature=0.9,
        max_tokens=150,
        top_p=1,
        frequency_penalty=0,
        presence_penalty=0.6,
        stop=[" Human:", " AI:"],
    )
    (choice,) = response.choices
    assert choice.finish_reason in ("stop", "length")
    assert " Human:" not in choice.text and " AI:" not in choice.text
    usage = response.usage
    assert usage is not None
    assert 1 <= usage.completion_tokens <= 150
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_stop_strings_cut_the_completion(api_server: RunningServer) -> None:
    client = client_for(api_server)
    free = client.completions.create(
        model="palmloop", prompt="Human: Hello", max_tokens=40, seed=5, temperature=0.9
    ).choices[0]
    assert len(free.text) > 6
    stop = free.text[3:6]
    cut = client.completions.create(
        model="palmloop", prompt="Human: Hello", max_tokens=40, seed=5, temperature=0.9, stop=stop
    ).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop)]


def test_completion_logprobs(api_server: RunningServer) -> None:
    client = client_for(api_server)
    response = client.completions.create(
        model="palmloop", prompt="Hello", max_tokens=6, logprobs=3, seed=1, temperature=0.5
    )
    logprobs = response.choices[0].logprobs
    assert logprobs is not None and logprobs.tokens and logprobs.top_logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs or []) == len(logprobs.top_logprobs)
    assert all(len(top) <= 3 for top in logprobs.top_logprobs)
    assert all(lp is not None and lp <= 0 for lp in logprobs.token_logprobs or [])


def test_missing_or_wrong_key_is_401(api_server: RunningServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client_for(api_server, api_key="wrong").models.list()
    assert caught.value.status_code == 401
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["code"] == "invalid_api_key" and body["type"] == "invalid_request_error"
    status, payload = get_json(f"{api_server.base_url}/v1/models")
    assert status == 401 and set(payload["error"]) == {"message", "type", "param", "code"}


def test_bad_parameters_are_400_in_openai_shape(api_server: RunningServer) -> None:
    client = client_for(api_server)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="palmloop", messages=MESSAGES, temperature=5)
    assert caught.value.status_code == 400
    body = caught.value.body
    assert isinstance(body, dict) and body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="palmloop", prompt="Hello " * 400, max_tokens=1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="palmloop", messages=[])
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        client.completions.create(model="palmloop", prompt="Hi", logit_bias={"x": 1})


def test_queue_full_is_429(serve: ServeFactory, checkpoints: dict[str, Path]) -> None:
    config = EngineConfig(max_batch_size=1, max_queued=0)
    server = serve(lambda: Engine.from_checkpoint(checkpoints["v1"], config))
    client = client_for(server)
    tokenizer = server.engine.tokenizer
    never_end = {str(tokenizer.end_id): -100, str(tokenizer.eos_id): -100}
    busy = client.completions.create(
        model="palmloop", prompt="Hello", max_tokens=200, stream=True, logit_bias=never_end
    )
    next(iter(busy))  # the only slot is taken
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model="palmloop", prompt="Hello", max_tokens=5)
    refused_in = time.monotonic() - started
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "1"
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "queue_full"
    assert refused_in < 5  # refused, not queued behind the running request
    busy.close()  # a client hanging up frees its slot at the next step
    deadline = time.monotonic() + 30
    while server.engine.stats().running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.engine.stats().running == 0
    assert client.completions.create(model="palmloop", prompt="Hello", max_tokens=2).choices


def test_model_loading_is_503_then_ready(serve: ServeFactory, checkpoints: dict[str, Path]) -> None:
    release = threading.Event()

    def slow_load() -> Engine:
        release.wait(30)
        return Engine.from_checkpoint(checkpoints["v1"])

    server = serve(slow_load, wait_ready=False)
    client = client_for(server, api_key="anything")  # no keys configured: open
    with pytest.raises(openai.InternalServerError) as caught:
        client.models.list()
    assert caught.value.status_code == 503
    assert isinstance(caught.value.body, dict) and caught.value.body["code"] == "model_loading"
    assert get_json(f"{server.base_url}/healthz") == (503, {"status": "loading"})
    release.set()
    deadline = time.monotonic() + 30
    while get_json(f"{server.base_url}/healthz")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert client.models.list().data


def test_admin_swap_needs_the_admin_key_and_refuses_bad_versions(
    serve: ServeFactory, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    settings = ServerSettings(admin_key=ADMIN_KEY, checkpoint_root=checkpoints["v1"].parent)
    server = serve(lambda: Engine.from_checkpoint(checkpoints["v1"]), settings)
    admin = OpenAI(base_url=server.base_url, api_key=ADMIN_KEY, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(base_url=server.base_url, api_key="nope", max_retries=0).post(
            "/admin/swap", body={"checkpoint": str(checkpoints["v2"])}, cast_to=object
        )
    with pytest.raises(openai.BadRequestError, match="checkpoint root"):
        admin.post("/admin/swap", body={"checkpoint": str(tmp_path)}, cast_to=object)
    with pytest.raises(openai.BadRequestError, match="cannot load"):
        admin.post(
            "/admin/swap",
            body={"checkpoint": str(checkpoints["v1"].parent / "nope")},
            cast_to=object,
        )
    swapped = admin.post("/admin/swap", body={"checkpoint": str(checkpoints["v2"])}, cast_to=object)
    assert isinstance(swapped, dict)
    assert swapped["version"]["name"] == "v2" and swapped["previous"]["name"] == "v1"
    answer = client_for(server, "x").chat.completions.create(
        model="palmloop",
        messages=MESSAGES,
        max_tokens=3,
    )
    assert answer.model == "v2"
