"""docker-compose.yml runs the whole stack; no engine here, so its structure is checked."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from servicekit import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def command_of(service: dict[str, Any]) -> str:
    cmd = service.get("command", "")
    return " ".join(cmd) if isinstance(cmd, list) else str(cmd)


def test_services_present(compose: dict[str, Any]) -> None:
    assert {"postgres", "redis", "web", "worker", "beat"} <= set(compose["services"])


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        check = service.get("healthcheck")
        assert check and check.get("test"), f"{name} has no healthcheck"


def test_commands(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert "uvicorn webapp.asgi:application" in command_of(s["web"])
    worker = command_of(s["worker"])
    assert "celery -A webapp worker" in worker and "training" in worker
    assert "--pool solo" in worker
    beat = command_of(s["beat"])
    assert "celery -A webapp beat" in beat and "DatabaseScheduler" in beat


def test_app_services_wired_to_postgres_and_redis(compose: dict[str, Any]) -> None:
    s = compose["services"]
    for name in ("web", "worker", "beat"):
        env = s[name]["environment"]
        assert (
            env["DATABASE_URL"].startswith("postgres://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert env["DEBUG"] in ("0", "false", 0, False)
        assert "SECRET_KEY" in env and "MODEL_DIR" in env
        deps = s[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"


def test_the_web_server_believes_only_the_configured_proxy(compose: dict[str, Any]) -> None:
    """uvicorn takes the client's address from X-Forwarded-For only from FORWARDED_ALLOW_IPS,
    which the operator sets to their proxy (the lock-out and rate limits count that address)."""
    web = compose["services"]["web"]
    assert "--proxy-headers" in command_of(web)
    assert web["environment"]["FORWARDED_ALLOW_IPS"] == "${FORWARDED_ALLOW_IPS:-127.0.0.1}"


def test_checkpoint_volume_shared_by_web_and_worker(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert "models" in compose["volumes"]

    def mounts(name: str) -> set[str]:
        return {str(v).split(":")[0] for v in s[name].get("volumes", [])}

    assert "models" in mounts("web") and "models" in mounts("worker")
    assert "pgdata" in mounts("postgres")


def test_web_healthcheck_hits_healthz(compose: dict[str, Any]) -> None:
    test = compose["services"]["web"]["healthcheck"]["test"]
    assert "/healthz" in " ".join(test if isinstance(test, list) else [test])
