"""/healthz reports the database and the broker: 200 when both answer, 503 when one is down."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from django.test import Client
from servicekit import PYTHON, ROOT, clean_env


@pytest.mark.django_db
def test_healthy(client: Client, redis_url: str) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"]["ok"] is True
    assert body["broker"]["ok"] is True
    assert response["Cache-Control"].startswith("max-age=0")


# A child process with its own settings, so the outage is real rather than simulated.
PROBE = """
import json, django
django.setup()
from django.test import Client
r = Client(SERVER_NAME="localhost").get("/healthz")
print(json.dumps({"code": r.status_code, "body": r.json()}))
"""


def probe(tmp_path: Path, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [PYTHON, "-c", PROBE],
        cwd=ROOT,
        env=clean_env(VAR_DIR=str(tmp_path / "var"), **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_broker_down_is_503(tmp_path: Path) -> None:
    result = probe(tmp_path, REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens on port 1
    assert result["code"] == 503
    body = result["body"]
    assert isinstance(body, dict)
    assert body["status"] == "unavailable"
    assert body["broker"]["ok"] is False and body["database"]["ok"] is True


def test_database_down_is_503(tmp_path: Path) -> None:
    result = probe(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:1/test")
    assert result["code"] == 503
    body = result["body"]
    assert isinstance(body, dict)
    assert body["database"]["ok"] is False
    assert "OperationalError" in body["database"]["detail"]


def test_zero_setup_defaults_are_healthy(tmp_path: Path) -> None:
    result = probe(tmp_path)
    assert result["code"] == 200
