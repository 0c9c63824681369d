"""The web app's in-process engine serves in the fastest dtype of the machine (``"auto"``)."""

from __future__ import annotations

from pathlib import Path

from feedback.inference.local import LocalInferenceClient
from model_runtime.engine import engine as engine_module


def test_the_chat_serves_in_the_fastest_dtype_here(tiny_policy_dir: Path) -> None:
    client = LocalInferenceClient.load(tiny_policy_dir)
    try:
        dtypes = {p.dtype for p in client.engine.model.parameters()}
        assert dtypes == {engine_module.fastest_dtype("cpu")}
    finally:
        client.close()
