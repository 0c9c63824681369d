"""With no REDIS_URL, tasks still run in a separate worker process, over the filesystem broker."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from servicekit import PYTHON, ROOT, clean_env

pytestmark = pytest.mark.integration

CLIENT = """
import json, os, django
django.setup()
from feedback.tasks import ping
from webapp.celery import app
assert app.conf.broker_url == "filesystem://", app.conf.broker_url
result = ping.delay("through-files")
print(json.dumps({"reply": result.get(timeout=60), "client_pid": os.getpid()}))
"""


def test_task_runs_in_a_separate_worker_process(
    tmp_path: Path, start_worker: Callable[[dict[str, str]], subprocess.Popen[str]]
) -> None:
    env = clean_env(VAR_DIR=str(tmp_path / "var"))
    worker = start_worker(env)
    out = subprocess.run(
        [PYTHON, "-c", CLIENT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout.strip().splitlines()[-1])
    assert reply["reply"]["pong"] == "through-files"
    assert reply["reply"]["worker_pid"] == worker.pid
    assert reply["client_pid"] != worker.pid != os.getpid()
    # The message went through files under var/celery, not through any server.
    assert (tmp_path / "var" / "celery" / "results").is_dir()
    assert any((tmp_path / "var" / "celery" / "results").iterdir())
