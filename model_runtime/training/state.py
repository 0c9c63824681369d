"""The files of a training run besides the model: trainer state, ``latest.json``, metrics.

``trainer_state.pt`` holds only tensors and plain Python values (ints, floats, strings, lists,
dicts), so ``torch.load(..., weights_only=True)`` reads it without unpickling arbitrary
objects; ``trainer_state.json`` beside it records its sha256, checked before loading.
Every file is written to a staging name and renamed into place.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model_runtime.checkpoints import sha256_file

STATE_FORMAT_VERSION = 1
STATE_FILE = "trainer_state.pt"
STATE_SUMMARY_FILE = "trainer_state.json"
LATEST_FILE = "latest.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"


class ResumeError(ValueError):
    """A checkpoint that cannot continue this run (corrupted, or another data or model)."""


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(staging_path)`` then rename the staging file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(staging))
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def write_json(path: Path, value: Any) -> None:
    """Atomically write ``value`` as indented JSON."""
    text = json.dumps(value, indent=2) + "\n"
    atomic_write(path, lambda target: target.write_text(text, encoding="utf-8"))


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return output_dir / CHECKPOINTS_DIR / f"step_{step:07d}"


def write_trainer_state(directory: Path, state: dict[str, Any], summary: dict[str, Any]) -> None:
    """Write ``trainer_state.pt`` and ``trainer_state.json`` (``summary`` + the sha256)."""
    path = directory / STATE_FILE
    atomic_write(path, lambda target: torch.save(state, target))
    write_json(
        directory / STATE_SUMMARY_FILE,
        {"format_version": STATE_FORMAT_VERSION, **summary, "sha256": sha256_file(path)},
    )


def read_trainer_state(directory: Path) -> dict[str, Any]:
    """Verify ``trainer_state.pt`` against its recorded sha256 and load it (weights only)."""
    summary_path = directory / STATE_SUMMARY_FILE
    path = directory / STATE_FILE
    if not summary_path.is_file() or not path.is_file():
        raise ResumeError(f"{directory}: no {STATE_FILE} / {STATE_SUMMARY_FILE}")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    if sha256_file(path) != summary.get("sha256"):
        raise ResumeError(f"{path}: sha256 mismatch (file corrupted or altered)")
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("format_version") != STATE_FORMAT_VERSION:
        raise ResumeError(f"{path}: unknown format_version {state.get('format_version')!r}")
    return state


def publish_latest(output_dir: Path, directory: Path, step: int) -> None:
    """Point ``latest.json`` at ``directory`` (the commit point of a checkpoint)."""
    relative = directory.relative_to(output_dir)
    write_json(output_dir / LATEST_FILE, {"directory": str(relative), "step": step})


def read_latest(output_dir: Path) -> Path | None:
    """The checkpoint directory ``latest.json`` names, or None when there is none."""
    path = output_dir / LATEST_FILE
    if not path.is_file():
        return None
    latest = json.loads(path.read_text(encoding="utf-8"))
    return output_dir / str(latest["directory"])


def prune_checkpoints(output_dir: Path, *, keep_last: int, protect: Path) -> None:
    """Delete all but the ``keep_last`` newest ``checkpoints/step_*`` (never ``protect``)."""
    root = output_dir / CHECKPOINTS_DIR
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))
    for old in found[: max(0, len(found) - keep_last)]:
        if old.resolve() != protect.resolve():
            shutil.rmtree(old, ignore_errors=True)


def append_metrics(output_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (with a UTC time stamp) to ``metrics.jsonl``."""
    line = {**record, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with (output_dir / METRICS_FILE).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(line) + "\n")


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` (empty when there is none)."""
    path = output_dir / METRICS_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def truncate_metrics(output_dir: Path, *, last_step: int) -> None:
    """Drop the records of steps after ``last_step`` (written by a run killed after its last
    checkpoint), so the file tells the history of the weights that were kept."""
    records = read_metrics(output_dir)
    kept = [record for record in records if int(record["step"]) <= last_step]
    if len(kept) != len(records):
        text = "".join(json.dumps(record) + "\n" for record in kept)
        atomic_write(output_dir / METRICS_FILE, lambda t: t.write_text(text, encoding="utf-8"))


def rng_state() -> dict[str, Any]:
    """Torch (CPU and CUDA), Python and NumPy RNG states as tensors and plain values."""
    version, python_state, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    assert isinstance(numpy_state, tuple)
    name, keys, position, has_gauss, cached = numpy_state
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {
            "version": version,
            "state": torch.tensor(python_state, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    python = state["python"]
    python_state = tuple(int(x) for x in python["state"].tolist())
    random.setstate((int(python["version"]), python_state, python["gauss"]))
    saved = state["numpy"]
    np.random.set_state(
        (
            str(saved["name"]),
            saved["keys"].numpy().astype(np.uint32),
            int(saved["position"]),
            int(saved["has_gauss"]),
            float(saved["cached_gaussian"]),
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
