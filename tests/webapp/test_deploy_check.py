"""`manage.py check --deploy` is clean with production settings."""

import secrets
import subprocess
from pathlib import Path

from servicekit import PYTHON, ROOT, clean_env


def test_check_deploy_is_clean(tmp_path: Path) -> None:
    env = clean_env(
        VAR_DIR=str(tmp_path / "var"),
        DEBUG="0",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="palmloop.example.org",
        CSRF_TRUSTED_ORIGINS="https://palmloop.example.org",
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/test",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    out = subprocess.run(
        [PYTHON, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "no issues" in out.stdout
