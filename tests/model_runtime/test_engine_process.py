"""EngineProcess: the engine in a child process serves what the in-process one does, cancels,
refuses through the handle, and fails cleanly when the child dies or the checkpoint is bad."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from model_runtime.engine import (
    Engine,
    EngineClosedError,
    EngineConfig,
    PromptTooLongError,
    QueueFullError,
    SwapError,
)
from model_runtime.engine.process import EngineProcess
from model_runtime.sampling import SamplingParams
from model_runtime.tokenizer import ChatMessage

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def served(tiny_policy_dir: Path) -> Iterator[EngineProcess]:
    engine = EngineProcess(tiny_policy_dir, EngineConfig(max_batch_size=2, max_queued=1))
    yield engine
    engine.close()


def _prompt(engine: Engine | EngineProcess, text: str = "Tell me about rivers.") -> list[int]:
    return engine.tokenizer.encode_chat([ChatMessage("user", text)], add_generation_prompt=True).ids


def test_it_writes_what_the_in_process_engine_writes(
    served: EngineProcess, tiny_policy_dir: Path
) -> None:
    handle = served.submit(_prompt(served), GREEDY)
    pieces = list(handle.stream())
    result = handle.result()
    assert "".join(pieces) == result.text
    assert result.completion_tokens == len(result.token_ids) > 0
    local = Engine.from_checkpoint(tiny_policy_dir, EngineConfig())
    try:
        expected = local.submit(_prompt(local), GREEDY).result()
    finally:
        local.close()
    assert (result.text, result.token_ids, result.finish_reason) == (
        expected.text,
        expected.token_ids,
        expected.finish_reason,
    )
    assert result.version == expected.version
    assert result.prompt_tokens == expected.prompt_tokens


def test_streams_are_read_from_an_event_loop(served: EngineProcess) -> None:
    async def both() -> list[tuple[str, str]]:
        handles = [served.submit(_prompt(served, t), GREEDY) for t in ("Hello.", "Rivers?")]
        out = []
        for handle in handles:
            text = "".join([piece async for piece in handle.astream()])
            out.append((text, (await handle.aresult()).text))
        return out

    for streamed, final in asyncio.run(both()):
        assert streamed == final


def test_a_cancel_reaches_the_child(served: EngineProcess) -> None:
    handle = served.submit(_prompt(served), SamplingParams(temperature=0.0, max_new_tokens=400))
    stream = iter(handle.stream())
    next(stream)
    stream.close()  # a reader that stops early cancels its request
    result = handle.result(timeout=30)
    assert result.finish_reason == "cancelled"
    assert result.completion_tokens < 400


def test_ctrl_c_in_the_terminal_leaves_it_to_the_host(served: EngineProcess) -> None:
    assert served.pid is not None
    os.kill(served.pid, signal.SIGINT)  # what Ctrl-C sends the whole process group
    assert served.submit(_prompt(served), GREEDY).result(timeout=30).completion_tokens > 0


def test_refusals_arrive_through_the_handle(served: EngineProcess) -> None:
    too_long = served.submit([5] * (served.max_seq_len + 3), GREEDY)
    with pytest.raises(PromptTooLongError) as refused:
        too_long.result(timeout=30)
    assert (refused.value.prompt_tokens, refused.value.max_seq_len) == (
        served.max_seq_len + 3,
        served.max_seq_len,
    )
    # room for 2 running and 1 waiting: a burst of 6 long requests has some refused at once
    long = SamplingParams(temperature=0.0, max_new_tokens=200)
    handles = [served.submit(_prompt(served), long) for _ in range(6)]
    outcomes = []
    for handle in handles:
        try:
            outcomes.append(handle.result(timeout=60).finish_reason)
        except QueueFullError:
            outcomes.append("refused")
    assert outcomes.count("refused") >= 3
    assert set(outcomes) <= {"refused", "length", "stop"}


def test_a_dead_child_fails_open_requests_and_refuses_new_ones(tiny_policy_dir: Path) -> None:
    engine = EngineProcess(tiny_policy_dir, EngineConfig())
    try:
        running = engine.submit(_prompt(engine), SamplingParams(max_new_tokens=2000))
        next(iter(running.stream()))
        engine._process.kill()
        with pytest.raises(EngineClosedError, match="stopped"):
            running.result(timeout=30)
        with pytest.raises(EngineClosedError):
            engine.submit(_prompt(engine), GREEDY)
    finally:
        engine.close()


def test_close_ends_the_child(tiny_policy_dir: Path) -> None:
    engine = EngineProcess(tiny_policy_dir, EngineConfig())
    assert engine.submit(_prompt(engine), GREEDY).result(timeout=30).completion_tokens > 0
    engine.close()
    assert not engine._process.is_alive()
    with pytest.raises(EngineClosedError, match="shut down"):
        engine.submit(_prompt(engine), GREEDY)


def test_a_checkpoint_that_does_not_load_is_a_swap_error(
    tiny_policy_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_policy_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SwapError):  # refused in the child
        EngineProcess(broken, EngineConfig())
    (broken / "tokenizer.json").write_text("{")
    with pytest.raises(SwapError, match="tokenizer"):  # refused before a child starts
        EngineProcess(broken, EngineConfig())
