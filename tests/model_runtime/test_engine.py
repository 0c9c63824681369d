"""The engine: continuous batching gives each request the output it gets alone, streaming,
cancellation, backpressure and per-request limits, from many threads at once."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from model_runtime.config import PaLMConfig
from model_runtime.engine import (
    CompletionResult,
    Engine,
    EngineClosedError,
    EngineConfig,
    InvalidRequestError,
    ModelVersion,
    PromptTooLongError,
    QueueFullError,
)
from model_runtime.engine.batch import DecodeBatch
from model_runtime.engine.request import EngineRequest
from model_runtime.engine.versions import LoadedVersion
from model_runtime.generation import completion_seed, generate
from model_runtime.palm import PaLM
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatTokenizer, train_tokenizer

CORPUS = "Hello there! How are you today? I am well, thanks for asking. Café, naïve.\n" * 30
VERSION = ModelVersion(name="v-test", sha256="ab" * 32)
MakeEngine = Callable[..., Engine]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    corpus = tmp_path_factory.mktemp("engine") / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return train_tokenizer([Path(corpus)], 300)


def tiny_model(tokenizer: ChatTokenizer, *, seed: int = 0, max_seq_len: int = 64) -> PaLM:
    torch.manual_seed(seed)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        depth=2,
        heads=4,
        dim_head=8,
        max_seq_len=max_seq_len,
        xpos_scale_base=64,
    )
    return PaLM(config).eval()


@pytest.fixture
def make_engine(tokenizer: ChatTokenizer) -> Iterator[MakeEngine]:
    engines: list[Engine] = []

    def make(*, max_seq_len: int = 64, **limits: Any) -> Engine:
        config = EngineConfig(**limits)
        engine = Engine(
            tiny_model(tokenizer, max_seq_len=max_seq_len),
            tokenizer,
            version=VERSION,
            config=config,
        )
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def prompt_of(tokenizer: ChatTokenizer, text: str) -> list[int]:
    return tokenizer.encode_text(text)


def never_end(tokenizer: ChatTokenizer) -> dict[int, float]:
    """A logit bias that keeps a random model from ending early (long-running requests)."""
    return {tokenizer.end_id: -100.0, tokenizer.eos_id: -100.0}


TARGETS = [
    SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=20, seed=11),
    SamplingParams(temperature=0.0, max_new_tokens=20, seed=1),
    SamplingParams(
        temperature=1.2,
        top_k=40,
        presence_penalty=0.6,
        frequency_penalty=0.3,
        repetition_penalty=1.3,
        max_new_tokens=20,
        seed=12345,
    ),
]


def assert_same_completion(alone: CompletionResult, busy: CompletionResult) -> None:
    assert busy.token_ids == alone.token_ids
    assert busy.text == alone.text
    assert busy.finish_reason == alone.finish_reason
    # Logits agree within float rounding of the batched matmuls.
    assert busy.logprobs == pytest.approx(alone.logprobs, abs=1e-4)
    for top_alone, top_busy in zip(alone.top_logprobs, busy.top_logprobs, strict=True):
        assert [t.token_id for t in top_busy] == [t.token_id for t in top_alone]
        assert [t.logprob for t in top_busy] == pytest.approx(
            [t.logprob for t in top_alone], abs=1e-4
        )


@pytest.mark.parametrize("params", TARGETS, ids=["top_p", "greedy", "penalties"])
def test_request_gets_the_same_output_alone_and_in_a_busy_batch(
    make_engine: MakeEngine, tokenizer: ChatTokenizer, params: SamplingParams
) -> None:
    engine = make_engine()
    prompt = prompt_of(tokenizer, "Hello there! How are")
    alone = engine.submit(prompt, params, top_logprobs=3).result(timeout=30)
    assert alone.completion_tokens > 0

    # Neighbours of other prompt lengths and settings, joining before and after the target.
    noise = [
        engine.submit(
            prompt_of(tokenizer, "I am well " * (i + 1)),
            SamplingParams(temperature=1.0, top_p=0.8, max_new_tokens=60, seed=100 + i),
            logit_bias=never_end(tokenizer),
        )
        for i in range(4)
    ]
    noise_stream = iter(noise[0])  # held open: closing a stream cancels its request
    next(noise_stream)  # the batch is decoding before the target joins
    target = engine.submit(prompt, params, top_logprobs=3)
    late = [
        engine.submit(
            prompt_of(tokenizer, "Café " * (i + 2)),
            SamplingParams(temperature=0.7, max_new_tokens=60, seed=200 + i),
        )
        for i in range(2)
    ]
    busy_sizes = []
    pieces = []
    for piece in target:
        pieces.append(piece)
        busy_sizes.append(engine.stats().running)
    busy = target.result()
    assert "".join(pieces) == busy.text
    assert max(busy_sizes, default=engine.stats().running) >= 3
    assert_same_completion(alone, busy)
    for handle in noise + late:
        assert handle.result(timeout=30).completion_tokens > 0
    assert "".join(noise_stream)  # the rest of the stream is still there


def test_engine_matches_batch_generate(make_engine: MakeEngine, tokenizer: ChatTokenizer) -> None:
    """The engine's seeding, penalties and stop rules are those of generation.generate."""
    engine = make_engine()
    prompt = prompt_of(tokenizer, "How are you today?")
    for params in TARGETS:
        (expected,) = generate(engine.model, tokenizer, [prompt], params)
        got = engine.submit(prompt, params).result(timeout=30)
        assert got.token_ids == expected.token_ids
        assert got.text == expected.text
        assert got.finish_reason == expected.finish_reason
        assert got.logprobs == pytest.approx(expected.logprobs, abs=1e-4)
        assert got.version == VERSION


def test_submit_n_seeds_each_completion_like_generate(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine()
    prompt = prompt_of(tokenizer, "Hello")
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=42, n=3)
    handles = engine.submit_n(prompt, params)
    results = [handle.result(timeout=30) for handle in handles]
    assert [r.seed for r in results] == [completion_seed(42, j) for j in range(3)]
    assert len({r.token_ids for r in results}) > 1
    single = SamplingParams(temperature=1.0, max_new_tokens=12, seed=completion_seed(42, 2))
    assert engine.submit(prompt, single).result(timeout=30).token_ids == results[2].token_ids


def test_many_threads_submit_at_once(make_engine: MakeEngine, tokenizer: ChatTokenizer) -> None:
    engine = make_engine(max_batch_size=8, max_queued=32)
    prompt = prompt_of(tokenizer, "thanks for asking")
    params = [SamplingParams(temperature=0.8, max_new_tokens=15, seed=s) for s in range(12)]
    expected = [engine.submit(prompt, p).result(timeout=30).token_ids for p in params]
    got: dict[int, tuple[int, ...]] = {}
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            handle = engine.submit(prompt, params[index])
            text = "".join(handle)
            result = handle.result()
            assert text == result.text
            got[index] = result.token_ids
        except BaseException as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert [got[i] for i in range(12)] == expected


def test_async_stream_yields_the_same_pieces(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine()
    prompt = prompt_of(tokenizer, "Café, naïve")
    params = SamplingParams(temperature=1.0, max_new_tokens=25, seed=3)
    sync_pieces = list(engine.submit(prompt, params))

    async def consume() -> tuple[list[str], CompletionResult]:
        handle = engine.submit(prompt, params)
        pieces = [piece async for piece in handle]
        return pieces, await handle.aresult()

    async_pieces, result = asyncio.run(consume())
    assert async_pieces == sync_pieces
    assert "".join(async_pieces) == result.text


def test_stop_string_is_cut_and_never_streamed(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine()
    prompt = prompt_of(tokenizer, "Hello there")
    free = engine.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=30)).result()
    assert len(free.text) >= 4
    stop = free.text[2:4]
    handle = engine.submit(
        prompt, SamplingParams(temperature=0.0, max_new_tokens=30, stop_strings=(stop,))
    )
    streamed = "".join(handle)
    result = handle.result()
    assert result.finish_reason == "stop"
    assert result.text == free.text[: free.text.index(stop)]
    assert streamed == result.text


def test_closing_the_stream_cancels_and_frees_the_slot(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_batch_size=2, max_queued=0, max_seq_len=512)
    long = SamplingParams(temperature=1.0, max_new_tokens=400, seed=5)
    prompt = prompt_of(tokenizer, "Hello")
    first = engine.submit(prompt, long, logit_bias=never_end(tokenizer))
    second = engine.submit(prompt, long, logit_bias=never_end(tokenizer))
    with pytest.raises(QueueFullError):
        engine.submit(prompt, long)

    stream = iter(first)
    next(stream)
    stream.close()  # a client hanging up
    result = first.result(timeout=30)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 400

    deadline = time.monotonic() + 30
    while engine.stats().running > 1 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert engine.stats().running == 1
    third = engine.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=3))
    assert third.result(timeout=30).completion_tokens == 3
    second.cancel()
    assert second.result(timeout=30).finish_reason == "cancelled"


def test_overflow_is_refused_at_once_and_waiting_requests_run(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_batch_size=2, max_queued=2, max_seq_len=512)
    prompt = prompt_of(tokenizer, "Hello")
    params = SamplingParams(temperature=1.0, max_new_tokens=200, seed=9)
    handles = [
        engine.submit(prompt, params, logit_bias=never_end(tokenizer)) for _ in range(4)
    ]  # 2 run, 2 wait
    with pytest.raises(QueueFullError, match="capacity"):
        engine.submit(prompt, params)
    with pytest.raises(QueueFullError):  # all or none: n=2 does not fit either
        engine.submit_n(prompt, SamplingParams(n=2, seed=1))
    for handle in handles:
        handle.cancel()
    assert all(h.result(timeout=30).finish_reason == "cancelled" for h in handles)
    assert engine.submit(prompt, SamplingParams(max_new_tokens=2, seed=1)).result(timeout=30)


def test_prompt_longer_than_the_context_is_refused(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine()
    with pytest.raises(PromptTooLongError, match="at most 63"):
        engine.submit([7] * 64, SamplingParams())
    with pytest.raises(InvalidRequestError, match="empty"):
        engine.submit([], SamplingParams())
    with pytest.raises(InvalidRequestError, match="outside"):
        engine.submit([tokenizer.vocab_size], SamplingParams())
    fits = engine.submit([7] * 63, SamplingParams(max_new_tokens=10, seed=0)).result(timeout=30)
    assert fits.completion_tokens == 1
    assert fits.finish_reason in ("length", "stop")


def test_engine_caps_max_tokens_and_wall_time(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_new_tokens=5, max_seq_len=512)
    prompt = prompt_of(tokenizer, "Hello")
    capped = engine.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=300))
    result = capped.result(timeout=30)
    assert result.completion_tokens <= 5
    if result.finish_reason == "length":
        assert result.completion_tokens == 5

    engine = make_engine(request_timeout_s=0.05, max_seq_len=4096)
    slow = engine.submit(
        prompt,
        SamplingParams(temperature=1.0, max_new_tokens=2048, seed=2),
        logit_bias=never_end(tokenizer),
    )
    timed_out = slow.result(timeout=30)
    assert timed_out.finish_reason == "timeout"
    assert timed_out.completion_tokens < 2048


def test_closed_engine_refuses_and_fails_running_requests(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    engine = make_engine(max_seq_len=4096)
    prompt = prompt_of(tokenizer, "Hello")
    running = engine.submit(
        prompt, SamplingParams(max_new_tokens=4000, seed=1), logit_bias=never_end(tokenizer)
    )
    stream = iter(running)
    next(stream)
    engine.close()
    with pytest.raises(EngineClosedError):
        running.result(timeout=30)
    with pytest.raises(EngineClosedError):
        engine.submit(prompt, SamplingParams())


def test_extreme_sampling_values_behave_as_their_limits(
    make_engine: MakeEngine, tokenizer: ChatTokenizer
) -> None:
    """Values that round to 0 or overflow in float32/int64 keep their meaning: a temperature of
    1e-300 is greedy, top_p of 1e-300 keeps the top token, a top_k past the vocabulary is off."""
    engine = make_engine()
    prompt = prompt_of(tokenizer, "Hello there")
    greedy = engine.submit(prompt, SamplingParams(temperature=0.0, max_new_tokens=10)).result()
    tiny_temperature = SamplingParams(temperature=1e-300, max_new_tokens=10, seed=1)
    tiny_top_p = SamplingParams(temperature=1.0, top_p=1e-300, max_new_tokens=10, seed=2)
    assert engine.submit(prompt, tiny_temperature).result().token_ids == greedy.token_ids
    assert engine.submit(prompt, tiny_top_p).result().token_ids == greedy.token_ids
    huge_k = SamplingParams(temperature=1.0, top_k=2**64, max_new_tokens=10, seed=3)
    no_k = SamplingParams(temperature=1.0, max_new_tokens=10, seed=3)
    assert (
        engine.submit(prompt, huge_k).result().token_ids
        == engine.submit(prompt, no_k).result().token_ids
    )


def test_prompts_prefilled_together_match_prefilled_alone(tokenizer: ChatTokenizer) -> None:
    """A burst of joiners is prefilled as one left-padded batch: each row still gets the logits
    and tokens it gets alone (pad keys are masked, positions start at each row's first token)."""
    model = tiny_model(tokenizer)
    version = LoadedVersion(info=VERSION, model=model, tokenizer=tokenizer)

    def request(text: str, seed: int) -> EngineRequest:
        return EngineRequest(
            request_id=text,
            prompt=tuple(prompt_of(tokenizer, text)),
            params=SamplingParams(temperature=1.0, max_new_tokens=12, seed=seed),
            max_new_tokens=12,
            top_logprobs=2,
            logit_bias={},
            submitted_at=0.0,
            deadline=float("inf"),
        )

    def run(requests: list[EngineRequest]) -> list[CompletionResult]:
        batch = DecodeBatch(version)
        assert batch.prefill(requests) == []
        with torch.inference_mode():
            while len(batch):
                batch.step()
        return [r.handle.result(timeout=0) for r in requests]

    texts = ["Hello", "How are you today? I am well", "Café, naïve. Thanks for asking!"]
    alone = [run([request(text, seed)])[0] for seed, text in enumerate(texts)]
    together = run([request(text, seed) for seed, text in enumerate(texts)])
    for a, b in zip(alone, together, strict=True):
        assert_same_completion(a, b)
