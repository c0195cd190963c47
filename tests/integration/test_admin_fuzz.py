"""Fuzz the Admin API of a real control plane with schemathesis, from its own OpenAPI document.

A real ``ferry control-plane`` process over the session's real Redis answers
cases generated from ``/openapi.json`` (valid and invalid ones), each operation
a bounded, derandomised number of times. Every answer must be in the document:
no 5xx, a status the operation declares, its declared content type and, for a
JSON answer, a body its schema accepts. Path parameters are half the time the
names of real entities (re-created before each case), so updates, replaces and
deletes reach the store and not only the 404 path.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from control_plane.embedded_redis import EmbeddedRedis
from ferry_shared.listen import free_port
from tests.support.processes import FerryProcess

#: Examples per operation and generation mode; with ~45 operations this keeps the
#: whole test near a minute on two cores. FERRY_FUZZ_EXAMPLES raises it for a soak.
EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "25"))
#: Derandomised (the same cases on every run) unless FERRY_FUZZ_SEED picks other ones.
SEED = os.environ.get("FERRY_FUZZ_SEED")

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]

#: The entities path parameters name half the time (see ``_seed``).
KNOWN = {
    "service": "fuzz-service",
    "route": "fuzz-route",
    "upstream": "fuzz-upstream.internal",
    "target": "10.0.0.1:8080",
    "address": "10.0.0.1:8080",
}


def _request(base: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        base + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _seed(base: str) -> None:
    """(Re)create the entities ``KNOWN`` names: idempotent PUTs by name."""
    for method, path, body in (
        ("PUT", f"/upstreams/{KNOWN['upstream']}", {}),
        ("PUT", f"/upstreams/{KNOWN['upstream']}/targets/{KNOWN['target']}", {}),
        ("PUT", f"/services/{KNOWN['service']}", {"host": KNOWN["upstream"]}),
        ("PUT", f"/routes/{KNOWN['route']}",
         {"paths": ["/fuzz"], "service": {"name": KNOWN["service"]}}),
    ):
        status, text = _request(base, method, path, body)
        # The fuzzer may have left an entity in the way (a route taking the
        # service's name is fine; anything failing here is reported by the cases).
        assert status < 500, (method, path, status, text)


@pytest.fixture
def control_plane(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[str]:
    """A real ``ferry control-plane`` process over the session's Redis (emptied first)."""
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    admin_port = free_port()
    process = FerryProcess(
        [
            "control-plane",
            "--admin-listen", f"127.0.0.1:{admin_port}",
            "--cluster-listen", f"127.0.0.1:{free_port()}",
            "--redis-url", redis_server.url,
            "--data-dir", str(tmp_path / "cp"),
            "--cluster-insecure",
            "--log-level", "warning",
        ],
        tmp_path / "cp.log",
    )
    base = f"http://127.0.0.1:{admin_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                # Ready: Redis answers and the configuration is loaded (a 503 before
                # that would be reported as a server error by the first case).
                if _request(base, "GET", "/status/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert process.returncode is None, process.log()
            assert time.monotonic() < deadline, "control plane did not start:\n" + process.log()
            time.sleep(0.05)
        yield base
    finally:
        process.stop()
        # An unexpected exception is logged with its traceback: none may have happened.
        assert "unexpected error" not in process.log(), process.log()


def test_admin_api_answers_every_generated_request_within_its_document(control_plane: str) -> None:
    schema = schemathesis.openapi.from_url(control_plane + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    session = requests.Session()
    failures: list[str] = []

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                strategy = operation.as_strategy(generation_mode=mode)
            except Exception as exc:  # an operation with nothing to negate
                if mode is GenerationMode.NEGATIVE:
                    continue
                raise AssertionError(f"{operation.label}: {exc}") from exc

            @seed(int(SEED or 0))
            @settings(
                max_examples=EXAMPLES,
                derandomize=SEED is None,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy, known=st.booleans())
            def run(case: Any, known: bool) -> None:
                if known and case.path_parameters:
                    _seed(control_plane)
                    case.path_parameters = {
                        name: KNOWN.get(name, value) for name, value in case.path_parameters.items()
                    }
                case.call_and_validate(base_url=control_plane, session=session, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                # Negative mode on an operation with nothing to make invalid
                # (no body, no constrained parameter): nothing to run.
                if mode is not GenerationMode.NEGATIVE:
                    raise
            except Exception as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    assert not failures, "\n\n".join(failures)
