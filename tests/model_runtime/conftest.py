"""Tiny PaLM configs and models shared by the model_runtime tests (as factory fixtures, so test
files import nothing from here)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch

from model_runtime.config import PaLMConfig
from model_runtime.palm import PaLM

TINY_FIELDS: dict[str, Any] = {
    "vocab_size": 64,
    "dim": 32,
    "depth": 2,
    "heads": 4,
    "dim_head": 8,
    "ff_mult": 4,
    "max_seq_len": 64,
    "xpos_scale_base": 64,
}


def _tiny_config(**overrides: Any) -> PaLMConfig:
    """dim 32, depth 2, 4 heads of 8, vocab 64: ~32k parameters."""
    return PaLMConfig(**{**TINY_FIELDS, **overrides})


def _tiny_model(seed: int = 0, **overrides: Any) -> PaLM:
    torch.manual_seed(seed)
    return PaLM(_tiny_config(**overrides)).eval()


@pytest.fixture
def make_config() -> Callable[..., PaLMConfig]:
    return _tiny_config


@pytest.fixture
def make_model() -> Callable[..., PaLM]:
    return _tiny_model


@pytest.fixture
def tiny_config() -> PaLMConfig:
    return _tiny_config()


@pytest.fixture
def tiny_model() -> PaLM:
    return _tiny_model()


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Run model tests on one thread: tiny models gain nothing from more, and on a busy shared
    CPU two threads waiting on each other made the overfit test 20 s instead of 0.7 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
