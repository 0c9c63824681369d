"""Command line of the trainer.

``add_train_parser(subparsers)`` adds ``train`` to ``python -m model_runtime``;
``python -m model_runtime.training --config FILE.json`` runs the same thing on its own. Under
``torchrun --nproc_per_node=N`` either form trains with DDP over N processes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path


def add_train_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``train --config FILE.json [--set KEY=JSON ...]``."""
    parser = subparsers.add_parser(
        "train",
        help="pretrain or SFT a PaLM policy from a JSON config (resumable; torchrun for DDP)",
    )
    _add_arguments(parser)
    parser.set_defaults(func=run_train)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, required=True, metavar="FILE.json")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="override a config key, e.g. --set max_steps=100 --set output_dir='\"var/x\"' "
        "(the value is JSON; a bare word is taken as a string)",
    )


def overridden(config_data: dict[str, object], assignments: Sequence[str]) -> dict[str, object]:
    """``config_data`` with each ``KEY=VALUE`` applied (VALUE parsed as JSON, else a string)."""
    out = dict(config_data)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out


def run_train(args: argparse.Namespace) -> int:
    """Load the config, train to the end, print the final figures. Exit code 0."""
    from model_runtime.training.config import TrainConfig
    from model_runtime.training.trainer import run_training

    path: Path = args.config
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a JSON object")
    config = TrainConfig.from_dict(overridden(data, args.set), source=str(path))
    result = run_training(config)
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 alone reports
    summary: dict[str, object] = {"step": result.step, "finished": result.finished}
    if result.losses:
        summary["last_loss"] = result.losses[-1]
    if result.eval is not None:
        summary["eval_loss"] = result.eval.loss
        summary["eval_perplexity"] = result.eval.perplexity
    if result.checkpoint is not None:
        summary["checkpoint"] = str(result.checkpoint)
    print(json.dumps(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model_runtime.training ...``: the package CLI's ``train`` command."""
    from model_runtime.cli import main as package_main

    return package_main(["train", *(sys.argv[1:] if argv is None else argv)])
