"""Hot swap: a new version is verified beside the serving one and takes over between steps;
running requests finish on the version they began with; a bad version is refused; memory
returns to its baseline after repeated swaps."""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest
import torch

from model_runtime.checkpoints import save_checkpoint
from model_runtime.config import PaLMConfig
from model_runtime.engine import (
    CompletionResult,
    Engine,
    EngineConfig,
    ModelVersion,
    SwapError,
)
from model_runtime.generation import generate
from model_runtime.palm import PaLM
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatTokenizer, train_tokenizer

CORPUS = "Hello there! How are you today? I am well, thanks for asking. Café, naïve.\n" * 30
FIXED = SamplingParams(temperature=1.0, max_new_tokens=24, seed=3)  # same seed: same output


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    corpus = tmp_path_factory.mktemp("swap") / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return train_tokenizer([Path(corpus)], 300)


def tiny_model(tokenizer: ChatTokenizer, seed: int) -> PaLM:
    torch.manual_seed(seed)
    config = PaLMConfig(
        vocab_size=tokenizer.vocab_size,
        dim=32,
        depth=2,
        heads=4,
        dim_head=8,
        max_seq_len=64,
        xpos_scale_base=64,
    )
    return PaLM(config).eval()


@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: ChatTokenizer
) -> dict[str, Path]:
    """Three versions with different weights: v1, v2, v3."""
    root = tmp_path_factory.mktemp("versions")
    dirs = {}
    for seed, name in enumerate(("v1", "v2", "v3"), start=1):
        dirs[name] = root / name
        save_checkpoint(tiny_model(tokenizer, seed), dirs[name], tokenizer_json=tokenizer.to_str())
    return dirs


@pytest.fixture
def engine(checkpoints: dict[str, Path]) -> Iterator[Engine]:
    engine = Engine.from_checkpoint(
        checkpoints["v1"], EngineConfig(max_batch_size=8, max_queued=64)
    )
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def expected(checkpoints: dict[str, Path], tokenizer: ChatTokenizer) -> dict[str, tuple[int, ...]]:
    """Seeded output of the test prompt under each version, by weights sha256."""
    out = {}
    for directory in checkpoints.values():
        probe = Engine.from_checkpoint(directory)
        try:
            (result,) = generate(probe.model, tokenizer, [prompt_ids(tokenizer)], FIXED)
            out[probe.version.sha256] = result.token_ids
        finally:
            probe.close()
    assert len(set(out.values())) == 3, "the versions must answer differently"
    return out


def prompt_ids(tokenizer: ChatTokenizer) -> list[int]:
    return tokenizer.encode_text("Hello there! How are you")


def wait_until(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def never_end(tokenizer: ChatTokenizer) -> dict[int, float]:
    return {tokenizer.end_id: -100.0, tokenizer.eos_id: -100.0}


def test_running_request_finishes_on_its_version_and_new_ones_use_the_new(
    engine: Engine, checkpoints: dict[str, Path], tokenizer: ChatTokenizer
) -> None:
    old = engine.version
    long = engine.submit(
        prompt_ids(tokenizer),
        SamplingParams(temperature=1.0, max_new_tokens=60, seed=4),
        logit_bias=never_end(tokenizer),
    )
    stream = iter(long)
    next(stream)  # running on v1
    new = engine.swap(checkpoints["v2"])
    assert engine.version == new != old
    assert new.name == "v2"
    fresh = engine.submit(prompt_ids(tokenizer), FIXED)
    live = engine.stats().versions
    fresh_result = fresh.result(timeout=30)
    "".join(stream)
    long_result = long.result(timeout=30)
    assert long_result.version == old
    assert fresh_result.version == new
    assert set(live) == {old, new}  # two versions decoded side by side
    assert wait_until(lambda: engine.stats().versions == (new,))  # the old one left, drained


def test_ten_swaps_under_load_fail_no_request(
    engine: Engine,
    checkpoints: dict[str, Path],
    tokenizer: ChatTokenizer,
    expected: dict[str, tuple[int, ...]],
) -> None:
    results: list[CompletionResult] = []
    straddled: list[CompletionResult] = []  # finished on a version no longer current
    errors: list[BaseException] = []
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            try:
                handle = engine.submit(prompt_ids(tokenizer), FIXED)
                "".join(handle)
                result = handle.result(timeout=30)
                results.append(result)
                if engine.version != result.version:
                    straddled.append(result)
            except BaseException as error:  # every failure is reported below
                errors.append(error)
                return

    clients = [threading.Thread(target=client) for _ in range(4)]
    for thread in clients:
        thread.start()
    order = ["v2", "v3", "v1"] * 4
    swapped: list[ModelVersion] = []
    for name in order[:10]:
        before = len(results)
        deadline = time.monotonic() + 30
        while len(results) < before + 2 and time.monotonic() < deadline and not errors:
            time.sleep(0.002)  # let requests start on the current version
        swapped.append(engine.swap(checkpoints[name]))
    time.sleep(0.05)
    stop.set()
    for thread in clients:
        thread.join(30)

    assert not errors
    assert len(swapped) == 10
    versions_seen = {r.version.name for r in results}
    assert versions_seen == {"v1", "v2", "v3"}
    assert straddled  # some requests were running across a swap, and finished on their version
    for result in results:  # each request ran start to end on the version it records
        assert result.token_ids == expected[result.version.sha256]
        assert result.finish_reason in ("stop", "length")


def test_corrupted_checkpoint_is_refused_and_the_old_version_keeps_serving(
    engine: Engine,
    checkpoints: dict[str, Path],
    tokenizer: ChatTokenizer,
    tmp_path: Path,
    expected: dict[str, tuple[int, ...]],
) -> None:
    serving = engine.version
    bad = tmp_path / "v-corrupt"
    save_checkpoint(tiny_model(tokenizer, 9), bad, tokenizer_json=tokenizer.to_str())
    weights = bad / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(SwapError, match="sha256"):
        engine.swap(bad)
    with pytest.raises(SwapError, match="no such"):
        engine.swap(tmp_path / "missing")
    assert engine.version == serving
    result = engine.submit(prompt_ids(tokenizer), FIXED).result(timeout=30)
    assert result.version == serving
    assert result.token_ids == expected[serving.sha256]


def test_version_that_fails_smoke_generation_or_tokenizer_check_is_refused(
    engine: Engine, tokenizer: ChatTokenizer, tmp_path: Path
) -> None:
    serving = engine.version
    broken = tiny_model(tokenizer, 10)
    with torch.no_grad():
        broken.blocks[0].fused_in.weight.fill_(float("nan"))  # hashes fine, computes NaN
    save_checkpoint(broken, tmp_path / "v-nan", tokenizer_json=tokenizer.to_str())
    with pytest.raises(SwapError, match="non-finite"):
        engine.swap(tmp_path / "v-nan")

    other_corpus = tmp_path / "other.txt"
    other_corpus.write_text("zzz yyy xxx www " * 50, encoding="utf-8")
    other = train_tokenizer([other_corpus], 280)
    save_checkpoint(tiny_model(other, 11), tmp_path / "v-tok", tokenizer_json=other.to_str())
    with pytest.raises(SwapError, match="tokenizer"):
        engine.swap(tmp_path / "v-tok")
    assert engine.version == serving
    assert engine.submit(prompt_ids(tokenizer), FIXED).result(timeout=30).version == serving


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memory_returns_to_baseline_after_ten_swaps(
    checkpoints: dict[str, Path], tokenizer: ChatTokenizer, dtype: Literal["float32", "bfloat16"]
) -> None:
    """Counted: models (weakrefs), parameters and every live tensor (bf16 serving keeps packed
    copies of weights beside them; those must go with their weights)."""

    def live(kind: type) -> int:
        gc.collect()
        return sum(1 for obj in gc.get_objects() if type(obj) is kind)

    engine = Engine.from_checkpoint(checkpoints["v1"], EngineConfig(dtype=dtype))
    try:
        engine.submit(prompt_ids(tokenizer), FIXED).result(timeout=30)
        baseline = (live(torch.nn.Parameter), live(torch.Tensor))
        models: list[weakref.ref[PaLM]] = [weakref.ref(engine.model)]
        for name in (["v2", "v3", "v1"] * 4)[:10]:
            engine.swap(checkpoints[name])
            models.append(weakref.ref(engine.model))
            engine.submit(prompt_ids(tokenizer), FIXED).result(timeout=30)
        assert wait_until(lambda: len(engine.stats().versions) == 1)
        gc.collect()
        assert [ref() is not None for ref in models] == [False] * 10 + [True]
        assert (live(torch.nn.Parameter), live(torch.Tensor)) == baseline
    finally:
        engine.close()


def test_loading_runs_in_a_thread_that_ends_with_it(
    checkpoints: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loads leave no OpenMP worker pool behind in the caller's thread (passing_thread.py)."""
    from model_runtime.engine import engine as engine_module

    loaders: list[threading.Thread] = []
    load_version = engine_module.load_version

    def recorded(*args: object, **kwargs: object) -> object:
        loaders.append(threading.current_thread())
        return load_version(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(engine_module, "load_version", recorded)
    engine = Engine.from_checkpoint(checkpoints["v1"])
    try:
        engine.swap(checkpoints["v2"])
        with pytest.raises(SwapError):  # a failure still reaches the caller
            engine.swap(checkpoints["v1"] / "missing")
    finally:
        engine.close()
    assert len(loaders) == 3
    assert all(t is not threading.current_thread() and not t.is_alive() for t in loaders)
    assert len({id(t) for t in loaders}) == 3  # a new thread for each load
