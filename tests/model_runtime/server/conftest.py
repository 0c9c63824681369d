"""Fixtures of the HTTP tests: a tokenizer, two tiny checkpoints (v1, v2), a module-wide server
with keys on, and ``serve(load, settings)`` for servers of one test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from serving_harness import (
    ADMIN_KEY,
    API_KEY,
    CORPUS,
    RunningServer,
    start_server,
    tiny_model,
)

from model_runtime.checkpoints import save_checkpoint
from model_runtime.engine import Engine, EngineConfig
from model_runtime.server.app import ServerSettings, create_app
from model_runtime.tokenizer import ChatTokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> ChatTokenizer:
    corpus = tmp_path_factory.mktemp("server-corpus") / "corpus.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    return train_tokenizer([Path(corpus)], 320)


@pytest.fixture(scope="module")
def checkpoints(
    tmp_path_factory: pytest.TempPathFactory, tokenizer: ChatTokenizer
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server-checkpoints")
    dirs = {}
    for seed, name in enumerate(("v1", "v2"), start=1):
        dirs[name] = root / name
        save_checkpoint(tiny_model(tokenizer, seed), dirs[name], tokenizer_json=tokenizer.to_str())
    return dirs


@pytest.fixture
def serve() -> Iterator[Callable[..., RunningServer]]:
    """Start servers for one test: ``serve(load, settings, wait_ready=True)``."""
    servers: list[RunningServer] = []

    def start(
        load: Callable[[], Engine],
        settings: ServerSettings | None = None,
        *,
        wait_ready: bool = True,
    ) -> RunningServer:
        running = start_server(create_app(load, settings), wait_ready=wait_ready)
        servers.append(running)
        return running

    yield start
    for running in servers:
        running.stop()


@pytest.fixture(scope="module")
def api_server(checkpoints: dict[str, Path]) -> Iterator[RunningServer]:
    """One server for a module: API key and admin key on, serving v1."""
    settings = ServerSettings(
        api_keys=(API_KEY,), admin_key=ADMIN_KEY, checkpoint_root=checkpoints["v1"].parent
    )
    config = EngineConfig(max_batch_size=16, max_queued=32)
    running = start_server(
        create_app(lambda: Engine.from_checkpoint(checkpoints["v1"], config), settings)
    )
    yield running
    running.stop()
