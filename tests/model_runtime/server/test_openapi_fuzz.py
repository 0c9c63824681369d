"""Schemathesis fuzzes every operation of the server's own OpenAPI document with valid and
invalid inputs: whatever it sends, the server never answers with a 5xx."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from serving_harness import ADMIN_KEY, API_KEY, RunningServer

EXAMPLES = 10  # per operation and mode: the whole file runs in well under a minute


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_the_server_fail(api_server: RunningServer, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{api_server.base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {operation.path for operation in operations}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/admin/swap"} <= paths
    failures: list[str] = []
    fuzzed: set[str] = set()
    for operation in operations:
        key = ADMIN_KEY if operation.path.startswith("/admin") else API_KEY
        strategy = operation.as_strategy(mode, headers={"Authorization": f"Bearer {key}"})

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def call(case: Any) -> None:
            response = case.call(base_url=api_server.base_url, timeout=60)
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.path} -> {response.status_code}: "
                    f"{response.text[:300]} for {case.body!r:.300}"
                )

        try:
            call()
        except Unsatisfiable:  # nothing to make invalid (e.g. GET /healthz has no inputs)
            assert mode == GenerationMode.NEGATIVE
            continue
        fuzzed.add(operation.path)
    assert not failures, "\n".join(failures)
    assert {"/v1/completions", "/v1/chat/completions", "/admin/swap"} <= fuzzed
