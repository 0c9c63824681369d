"""``python -m model_runtime.server`` as a real process: it serves a checkpoint, refuses a
missing one, and the ``serve`` subcommand parser takes the documented options."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from openai import OpenAI
from serving_harness import get_json

from model_runtime.server.cli import add_serve_parser

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_process(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PALMLOOP_API_KEYS"] = "env-key"
    return subprocess.Popen(
        [sys.executable, "-m", "model_runtime.server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=REPO,
    )


def test_server_process_serves_a_checkpoint(checkpoints: dict[str, Path]) -> None:
    port = free_port()
    process = server_process("--model", str(checkpoints["v1"]), "--port", str(port),
                             "--log-level", "warning")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if get_json(f"{url}/healthz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.1)
        client = OpenAI(base_url=f"{url}/v1", api_key="env-key", max_retries=0)
        answer = client.chat.completions.create(
            model="palmloop", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        assert answer.model == "v1"
        assert get_json(f"{url}/v1/models")[0] == 401  # the key from the environment is needed
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output


def test_missing_checkpoint_exits_with_an_error(tmp_path: Path) -> None:
    process = server_process("--model", str(tmp_path / "nope"), "--port", str(free_port()))
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "no such checkpoint directory" in output


def test_serve_subcommand_options() -> None:
    parser = argparse.ArgumentParser(prog="python -m model_runtime")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["serve", "--model", "ckpt", "--port", "9000", "--api-key", "a", "--api-key", "b",
         "--admin-key", "z", "--dtype", "bfloat16"]
    )  # fmt: skip
    assert args.model == Path("ckpt") and args.port == 9000 and args.host == "127.0.0.1"
    assert args.api_key == ["a", "b"] and args.admin_key == "z" and args.dtype == "bfloat16"
    assert callable(args.func)
