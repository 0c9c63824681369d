"""``python -m model_runtime serve`` (registered by the main CLI through :func:`add_serve_parser`)
and ``python -m model_runtime.server`` (this module's :func:`main`): run the OpenAI-compatible
API over one checkpoint with uvicorn.

Keys may come from the environment instead of the command line (where ``ps`` shows them):
``PALMLOOP_API_KEYS`` (comma-separated) and ``PALMLOOP_ADMIN_KEY``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

API_KEYS_ENV = "PALMLOOP_API_KEYS"
ADMIN_KEY_ENV = "PALMLOOP_ADMIN_KEY"


def add_serve_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``serve`` subcommand; its ``func`` runs the server and returns an exit code."""
    parser = subparsers.add_parser(
        "serve", help="serve a checkpoint over an OpenAI-compatible HTTP API"
    )
    add_serve_arguments(parser)
    parser.set_defaults(func=run_serve)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, required=True, metavar="DIR", help="checkpoint")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument(
        "--api-key",
        action="append",
        default=[],
        metavar="KEY",
        help=f"accepted bearer key for /v1 (repeatable; also ${API_KEYS_ENV}); none = open",
    )
    parser.add_argument(
        "--admin-key",
        default=None,
        metavar="KEY",
        help=f"bearer key of /admin/swap (also ${ADMIN_KEY_ENV}); none = admin API off",
    )
    parser.add_argument(
        "--checkpoint-root",
        type=Path,
        default=None,
        metavar="DIR",
        help="swap targets must lie inside it (default: the parent of --model)",
    )
    parser.add_argument("--served-model-name", default="palmloop")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "auto"),
        default=None,
        help="serving dtype (default: as saved); bfloat16 is several times faster on CPUs "
        "with bf16 matmul units, slower where bf16 is emulated; auto: bfloat16 where the "
        "hardware has it, float32 elsewhere",
    )
    parser.add_argument("--max-batch-size", type=int, default=32, metavar="N")
    parser.add_argument("--max-queued", type=int, default=64, metavar="N")
    parser.add_argument("--max-new-tokens", type=int, default=2048, metavar="N")
    parser.add_argument("--request-timeout", type=float, default=300.0, metavar="SECONDS")
    parser.add_argument("--log-level", default="info")


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from model_runtime.engine import Engine, EngineConfig
    from model_runtime.server.app import ServerSettings, create_app

    model_dir: Path = args.model
    if not model_dir.is_dir():
        raise ValueError(f"{model_dir}: no such checkpoint directory")
    api_keys = list(args.api_key)
    api_keys += [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
    admin_key = args.admin_key or os.environ.get(ADMIN_KEY_ENV) or None
    config = EngineConfig(
        max_batch_size=args.max_batch_size,
        max_queued=args.max_queued,
        max_new_tokens=args.max_new_tokens,
        request_timeout_s=args.request_timeout,
        device=args.device,
        dtype=args.dtype,
    )
    settings = ServerSettings(
        api_keys=tuple(api_keys),
        admin_key=admin_key,
        served_model_name=args.served_model_name,
        checkpoint_root=args.checkpoint_root or model_dir.resolve().parent,
    )
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    failed: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_failure(error: BaseException) -> None:
        failed.append(error)
        if server is not None:
            server.should_exit = True

    app = create_app(
        lambda: Engine.from_checkpoint(model_dir, config),
        settings,
        on_load_failure=on_load_failure,
    )
    server = uvicorn.Server(
        uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level)
    )
    server.run()
    if failed:
        print(f"error: the model failed to load: {failed[0]}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m model_runtime.server --model DIR``: the package CLI's ``serve`` command."""
    from model_runtime.cli import main as package_main

    return package_main(["serve", *(sys.argv[1:] if argv is None else argv)])
