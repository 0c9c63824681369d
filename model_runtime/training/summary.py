"""The figures of finished training runs, for a model card and an exported model's meta.json.

``python -m model_runtime.training.summary RUN_DIR [RUN_DIR ...]`` prints one JSON object keyed
by each run's stage (``sft-2`` for a second ``sft`` run): its final step, held-out loss and
perplexity (from ``final/meta.json``), the tokens it trained on and its training time (from
``metrics.jsonl``; pauses between an interruption and the resume are not counted), the config it
ran and the sha256 of every file it read. With those in an exported model's ``meta.json``, a
rebuild can be checked against what was shipped input by input, and a recipe changed without a
rebuild is seen.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from model_runtime.checkpoints import TOKENIZER_FILE, WEIGHTS_FILE, sha256_file
from model_runtime.tokenizer import tokenizer_file
from model_runtime.training.config import TrainConfig
from model_runtime.training.data import expand_files
from model_runtime.training.trainer import CONFIG_COPY_FILE

_MAX_GAP_S = 600.0  # a longer silence between two log lines is an interruption, not training


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Figures of one run directory (``ValueError`` when it has no ``final`` checkpoint)."""
    meta_path = run_dir / "final" / "meta.json"
    if not meta_path.is_file():
        raise ValueError(f"{run_dir}: no final checkpoint (is the run finished?)")
    metrics = json.loads(meta_path.read_text(encoding="utf-8"))["metrics"]
    rows = [
        json.loads(line)
        for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    train_rows = [row for row in rows if row.get("kind") == "train"]
    times = [datetime.fromisoformat(row["time"]) for row in rows if "time" in row]
    seconds = sum(
        gap
        for gap in ((b - a).total_seconds() for a, b in itertools.pairwise(times))
        if 0 < gap <= _MAX_GAP_S
    )
    return {
        "stage": metrics.get("stage"),
        "steps": metrics.get("step"),
        "held_out_loss": metrics.get("eval_loss"),
        "held_out_perplexity": metrics.get("eval_perplexity"),
        "held_out_tokens": metrics.get("eval_tokens"),
        "tokens_trained": train_rows[-1]["tokens_seen"] if train_rows else 0,
        "training_hours": round(seconds / 3600, 2),
        **run_provenance(run_dir),
    }


def run_provenance(run_dir: Path) -> dict[str, Any]:
    """``config``: the run's config as the trainer saved it; ``inputs``: {path as the config
    names it: sha256} of its training and held-out files, its tokenizer and the weights it
    started from (``init_from``'s ``model.safetensors``)."""
    saved = json.loads((run_dir / CONFIG_COPY_FILE).read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(saved, source=str(run_dir / CONFIG_COPY_FILE))
    files = expand_files(config.train_files) + expand_files(config.eval_files)
    if config.tokenizer is not None:
        files.append(tokenizer_file(config.tokenizer))
    elif config.init_from is None:
        files.append(run_dir / TOKENIZER_FILE)  # trained by the run itself
    if config.init_from is not None:
        start = Path(config.init_from)
        files += [path for path in (start / WEIGHTS_FILE, start / TOKENIZER_FILE) if path.is_file()]
    return {"config": saved, "inputs": {str(path): sha256_file(path) for path in files}}


def main(argv: Sequence[str] | None = None) -> int:
    runs = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not runs:
        print(
            "usage: python -m model_runtime.training.summary RUN_DIR [RUN_DIR ...]", file=sys.stderr
        )
        return 2
    try:
        summaries = [run_summary(run) for run in runs]
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(keyed_by_stage(summaries), indent=2))
    return 0


def keyed_by_stage(summaries: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Runs keyed by their stage, in order; a stage's second run is ``STAGE-2``, and so on
    (the base policy is instruction-tuned twice: ``sft`` then ``sft-2``)."""
    keyed: dict[str, dict[str, Any]] = {}
    for summary in summaries:
        stage = str(summary["stage"])
        key, count = stage, 1
        while key in keyed:
            count += 1
            key = f"{stage}-{count}"
        keyed[key] = summary
    return keyed


if __name__ == "__main__":
    raise SystemExit(main())
