"""Checkpoint directories: safetensors weights + JSON, published atomically, verified by hash.

A checkpoint is one directory:

    model.safetensors   the weights, in the model's dtype (safetensors' save_model/load_model,
                        which handle shared tensors such as tied embeddings)
    config.json         PaLMConfig.to_dict(), with its format_version
    tokenizer.json      the tokenizer (when given)
    meta.json           format_version, dtype, parameter count, metrics, and for every file
                        above its byte size and sha256

``save_checkpoint`` writes everything into a staging directory beside the target (same parent,
so the final rename cannot cross file systems), fsyncs the files and the directory, then renames
it into place. An existing target is first renamed aside and deleted only once the new one is
in place, so a reader sees the old checkpoint or the new one, never a mixture; on an error the
old one is put back and the staging directory removed.

``load_checkpoint`` checks every listed file's size and sha256 before parsing anything; a missing,
truncated or altered file raises :class:`CheckpointError` naming the file. No pickle is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from model_runtime.config import PaLMConfig
from model_runtime.palm import PaLM

META_FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.bfloat16, torch.float16)}
_HASH_CHUNK = 1 << 20


class CheckpointError(Exception):
    """A checkpoint directory is missing, incomplete, corrupted or of an unknown format."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """What :func:`load_checkpoint` returns: the model (eval mode) and the files beside it."""

    model: PaLM
    config: PaLMConfig
    tokenizer_json: str | None
    meta: dict[str, Any]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_checkpoint(
    model: PaLM,
    directory: Path,
    *,
    tokenizer_json: str | None,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """Publish ``model`` as the checkpoint directory ``directory``; return the weights' sha256.

    Weights are saved in the model's dtype. A model carrying LoRA sets is refused: merge them
    (``lora.merge_lora``) or save them apart (``lora.save_lora``) first.
    """
    if any(".adapters." in key for key in model.state_dict()):
        raise ValueError(
            "the model carries LoRA adapters: merge_lora() or remove_lora() before saving"
        )
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.staging-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        files: dict[str, dict[str, Any]] = {}
        weights = staging / WEIGHTS_FILE
        save_model(model, str(weights), metadata={"format": "pt"})
        _fsync_file(weights)
        files[WEIGHTS_FILE] = _describe(weights)
        _write_text(staging / CONFIG_FILE, json.dumps(model.config.to_dict(), indent=2))
        files[CONFIG_FILE] = _describe(staging / CONFIG_FILE)
        if tokenizer_json is not None:
            _write_text(staging / TOKENIZER_FILE, tokenizer_json)
            files[TOKENIZER_FILE] = _describe(staging / TOKENIZER_FILE)
        meta = {
            "format_version": META_FORMAT_VERSION,
            "sha256": files[WEIGHTS_FILE]["sha256"],
            "files": files,
            "dtype": str(model.embed.weight.dtype).removeprefix("torch."),
            "num_parameters": model.num_parameters(),
            "metrics": dict(metrics or {}),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        _write_text(staging / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
        _fsync_dir(staging)
        _publish(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    sha: str = files[WEIGHTS_FILE]["sha256"]
    return sha


def load_checkpoint(
    directory: Path,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> LoadedCheckpoint:
    """Verify and load a checkpoint directory; weights land on ``device`` in ``dtype``
    (default: the dtype they were saved in). The model is returned in eval mode."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    meta = _read_meta(directory)
    files = meta["files"]
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        if name not in files:
            raise CheckpointError(f"{directory / META_FILE}: does not list {name}")
    for name, expected in files.items():
        _verify(directory / name, expected)
    try:
        config = PaLMConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text("utf-8")))
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {error}") from error
    saved_dtype = _DTYPES.get(str(meta.get("dtype")))
    if saved_dtype is None:
        raise CheckpointError(f"{directory / META_FILE}: unknown dtype {meta.get('dtype')!r}")
    target_dtype = dtype or saved_dtype
    with torch.device("meta"):  # no time spent initialising weights about to be overwritten
        model = PaLM(config).to(target_dtype)
    model = model.to_empty(device=device)
    weights = directory / WEIGHTS_FILE
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except Exception as error:  # safetensors raises several types for a bad file
        raise CheckpointError(f"{weights}: cannot load weights: {error}") from error
    tokenizer_json = None
    if TOKENIZER_FILE in files:
        tokenizer_json = (directory / TOKENIZER_FILE).read_text("utf-8")
    return LoadedCheckpoint(
        model=model.eval(), config=config, tokenizer_json=tokenizer_json, meta=meta
    )


def _read_meta(directory: Path) -> dict[str, Any]:
    path = directory / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (incomplete or foreign checkpoint directory)")
    try:
        meta = json.loads(path.read_text("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON: {error}") from error
    if not isinstance(meta, dict) or meta.get("format_version") != META_FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise CheckpointError(
            f"{path}: unsupported checkpoint format_version {version!r} "
            f"(this code reads {META_FORMAT_VERSION})"
        )
    if not isinstance(meta.get("files"), dict):
        raise CheckpointError(f"{path}: no 'files' table")
    return meta


def _verify(path: Path, expected: Mapping[str, Any]) -> None:
    """Raise CheckpointError naming ``path`` unless its size and sha256 are as recorded."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    size = path.stat().st_size
    if size != expected.get("bytes"):
        kind = "truncated" if size < int(expected.get("bytes", 0)) else "wrong size"
        raise CheckpointError(f"{path}: {kind}: {size} bytes, expected {expected.get('bytes')}")
    digest = sha256_file(path)
    if digest != expected.get("sha256"):
        raise CheckpointError(
            f"{path}: sha256 mismatch (file corrupted or altered): "
            f"got {digest}, expected {expected.get('sha256')}"
        )


def _describe(path: Path) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _write_text(path: Path, text: str) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    """Persist a directory's entries (creations, renames) on POSIX file systems."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first and
    removed once the swap is done (restored if the swap fails)."""
    parent = target.parent
    if not target.exists():
        os.replace(staging, target)
        _fsync_dir(parent)
        return
    old = parent / f".{target.name}.old-{uuid.uuid4().hex}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)
