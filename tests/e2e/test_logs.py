"""Logs of real ``ferry`` processes: one JSON object a line, the access log (from the
workers of a ``--workers 2`` node too), and no secret in any line."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from ferry_shared.listen import free_port
from tests.support.admin import admin
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.http import fresh_get, wait_http_ok
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess


def json_lines(process: FerryProcess) -> list[dict[str, Any]]:
    """Every line of the process's output, each of which must be one JSON object."""
    entries = []
    for line in process.log().splitlines():
        if line.strip():
            entry = json.loads(line)  # fails the test on any non-JSON line
            assert isinstance(entry, dict), line
            entries.append(entry)
    return entries


def access_records(process: FerryProcess) -> list[dict[str, Any]]:
    return [e for e in json_lines(process) if e["logger"] == "ferry.access"]


async def test_json_logs_and_the_access_log_of_a_node_with_two_workers(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Callable[[str], Any]
) -> None:
    cp = cluster.start_control_plane("--log-format", "json")
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    port = await backends("a")  # type: ignore[misc]
    await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop"})
    await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": f"127.0.0.1:{port}"})
    await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop-route", "paths": ["/shop"]})
    dp = cluster.start_data_plane("node", "--workers", "2", "--log-format", "json", "--access-log")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    for i in range(8):  # fresh connections: the kernel spreads them over both workers
        status, _ = await fresh_get(f"{dp.proxy}/shop/item?id={i}")
        assert status == 200
    status, _ = await fresh_get(f"{dp.proxy}/nowhere")
    assert status == 404

    def logged() -> list[dict[str, Any]] | None:
        records = access_records(dp.process)
        return records if len(records) >= 9 else None

    records = await wait_for(logged, timeout=10, message="nine access records")
    proxied = [r for r in records if r["uri"].startswith("/shop/item")]
    assert sorted(r["uri"] for r in proxied) == [f"/shop/item?id={i}" for i in range(8)]
    for r in proxied:
        assert (r["method"], r["status"], r["source"]) == ("GET", 200, "upstream")
        assert (r["service"], r["route"], r["upstream"]) == ("shop", "shop-route", f"127.0.0.1:{port}")
        assert r["tries"] == 1 and r["request_ms"] >= 0 and r["upstream_ms"] >= 0
        assert r["client_ip"] == "127.0.0.1" and r["level"] == "info"
    [miss] = [r for r in records if r["uri"] == "/nowhere"]
    assert (miss["status"], miss["source"], miss["upstream"], miss["route"]) == (404, "ferry", None, None)
    # Both workers logged (their component names differ), and so did the node itself.
    components = {e["component"] for e in json_lines(dp.process)}
    assert {"data-plane", "data-plane-worker-0", "data-plane-worker-1"} <= components, components
    assert {r["component"] for r in records} <= {"data-plane-worker-0", "data-plane-worker-1"}
    assert any(e["component"] == "control-plane" for e in json_lines(cp))


async def test_no_log_line_shows_a_redis_password_or_an_admin_token(
    cluster: Cluster, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    tokens = tmp_path / "tokens.yaml"
    from control_plane.admin_tokens import add_token

    token = add_token(tokens, "ops", "admin")
    # A Redis that refuses connections: the CP logs its failures, with the URL's host.
    secret = "pa55w0rd-not-for-logs"
    admin_port = free_port()
    process = FerryProcess(
        [
            "control-plane",
            "--admin-listen", f"127.0.0.1:{admin_port}",
            "--cluster-listen", f"127.0.0.1:{free_port()}",
            "--data-dir", str(tmp_path / "cp"),
            "--cluster-insecure",
            "--redis-url", f"redis://:{secret}@127.0.0.1:{free_port()}/0",
            "--admin-tokens", str(tokens),
            "--log-level", "debug",
            "--log-format", "json",
        ],
        tmp_path / "cp.log",
    )
    cluster.processes.append(process)

    def failed_on_redis() -> bool:
        return "127.0.0.1" in process.log() and (
            process.returncode is not None or "redis" in process.log().lower()
        )

    await wait_for(failed_on_redis, timeout=20, message="the CP to log its Redis failure")
    # A request with a token, in case anything logged request headers.
    try:
        async with http.get(f"http://127.0.0.1:{admin_port}/status",
                            headers={"Ferry-Admin-Token": token}):
            pass
    except aiohttp.ClientError:
        pass  # the CP may have given up on Redis and exited: its log is what matters
    process.stop()
    text = process.log()
    assert secret not in text and token not in text
    json_lines(process)
