"""Settings resolve from the environment: zero-setup defaults, or the real services by URL."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from servicekit import PYTHON, ROOT, clean_env

PROBE = """
import json, django
from django.conf import settings
django.setup()
db = settings.DATABASES["default"]
print(json.dumps({
    "engine": db["ENGINE"], "name": str(db["NAME"]), "host": db.get("HOST", ""),
    "health_checks": db.get("CONN_HEALTH_CHECKS", False), "max_age": db.get("CONN_MAX_AGE"),
    "pool": db.get("OPTIONS", {}).get("pool"),
    "cache_options": settings.CACHES["default"].get("OPTIONS", {}),
    "broker": settings.CELERY_BROKER_URL, "backend": settings.CELERY_RESULT_BACKEND,
    "transport_options": settings.CELERY_BROKER_TRANSPORT_OPTIONS,
    "cache": settings.CACHES["default"]["BACKEND"], "debug": settings.DEBUG,
    "model_dir": str(settings.MODEL_DIR), "device": settings.TORCH_DEVICE,
    "hosts": settings.ALLOWED_HOSTS, "key_len": len(settings.SECRET_KEY),
}))
"""


def resolve(tmp_path: Path, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [PYTHON, "-c", PROBE],
        cwd=ROOT,
        env=clean_env(VAR_DIR=str(tmp_path / "var"), **env),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_defaults_need_no_server(tmp_path: Path) -> None:
    s = resolve(tmp_path)
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["name"] == str(tmp_path / "var" / "palmloop.sqlite3")
    assert s["broker"] == "filesystem://"
    assert str(s["backend"]).startswith("file://")
    opts = s["transport_options"]
    assert isinstance(opts, dict)
    assert opts["data_folder_in"] == opts["data_folder_out"]
    assert Path(opts["data_folder_in"]).is_dir()
    assert s["debug"] is True
    # A development key is generated once and reused.
    key_file = tmp_path / "var" / "dev-secret-key"
    assert key_file.exists() and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert resolve(tmp_path)["key_len"] == s["key_len"]


def test_urls_switch_to_postgres_and_redis(tmp_path: Path) -> None:
    s = resolve(
        tmp_path,
        DATABASE_URL="postgres://palm:pw@db.internal:5433/palmloop",
        REDIS_URL="redis://cache.internal:6380/2",
        MODEL_DIR="/srv/models",
        TORCH_DEVICE="cuda:1",
    )
    assert s["engine"] == "django.db.backends.postgresql"
    assert s["name"] == "palmloop" and s["host"] == "db.internal"
    assert s["health_checks"] is True
    # One pool of connections per process (a thread's persistent connection is never reused
    # under ASGI, where each request runs on a thread of its own); Django refuses both at once.
    assert s["max_age"] == 0
    assert s["pool"] == {"min_size": 2, "max_size": 40, "timeout": 10.0, "max_idle": 60.0}
    assert s["cache_options"] == {
        "pool_class": "webapp.redis_pool.SharedConnectionPool",
        # a Redis that does not answer fails the operation, and the chat goes on without it
        "socket_connect_timeout": 2,
        "socket_timeout": 2,
    }
    assert s["broker"] == "redis://cache.internal:6380/2"
    assert s["backend"] == "redis://cache.internal:6380/2"
    assert s["cache"] == "webapp.redis_pool.SharedClientRedisCache"
    assert s["model_dir"] == "/srv/models" and s["device"] == "cuda:1"


def test_production_requires_a_secret_key(tmp_path: Path) -> None:
    out = subprocess.run(
        [PYTHON, "-c", PROBE],
        cwd=ROOT,
        env=clean_env(VAR_DIR=str(tmp_path / "var"), DEBUG="0", ALLOWED_HOSTS="example.org"),
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "SECRET_KEY" in out.stderr
    s = resolve(
        tmp_path, DEBUG="0", SECRET_KEY="k" * 60, ALLOWED_HOSTS="example.org,www.example.org"
    )
    assert s["debug"] is False
    assert s["hosts"] == ["example.org", "www.example.org"]
