"""``export``: a trained checkpoint as a servable model directory.

A trainer checkpoint holds fp32 weights (and, for step checkpoints, optimizer state beside
them). Serving needs only the weights, the config and the tokenizer; bf16 halves the size and
is the dtype the engine runs on CPU. The exported directory is an ordinary checkpoint
(:mod:`model_runtime.checkpoints`): verified on load, written to a staging directory and renamed
into place, its ``meta.json`` carrying the source's metrics plus what the caller adds.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from model_runtime.checkpoints import load_checkpoint, save_checkpoint

EXPORT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def export_checkpoint(
    source: Path,
    target: Path,
    *,
    dtype: str = "bfloat16",
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """Write ``source``'s model in ``dtype`` to ``target``; return the weights' sha256.
    ``ValueError`` for an unknown dtype or a source without a tokenizer."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(EXPORT_DTYPES)}, got {dtype!r}")
    loaded = load_checkpoint(source, dtype=EXPORT_DTYPES[dtype])
    if loaded.tokenizer_json is None:
        raise ValueError(f"{source} holds no tokenizer.json: a served model needs one")
    merged = {**loaded.meta.get("metrics", {}), **(metrics or {})}
    merged["exported_from"] = {"sha256": loaded.meta["sha256"], "dtype": loaded.meta["dtype"]}
    return save_checkpoint(
        loaded.model, Path(target), tokenizer_json=loaded.tokenizer_json, metrics=merged
    )
