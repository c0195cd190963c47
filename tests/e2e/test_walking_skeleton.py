"""End to end with real processes: Admin API → Redis → gRPC → data plane → backends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from control_plane.store import EntityStore
from ferry_shared.listen import free_port
from tests.support.admin import admin
from tests.support.ferry_cluster import Cluster, backend_of, dp_status, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess, processes_mentioning


async def create_shop(http: aiohttp.ClientSession, cluster: Cluster, ports: list[int]) -> None:
    await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop"})
    for port in ports:
        await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": f"127.0.0.1:{port}"})
    await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})


async def test_requests_alternate_between_two_backends_and_a_new_target_gets_traffic_without_restart(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Any
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    port_a, port_b, port_c = await backends("a"), await backends("b"), await backends("c")
    await create_shop(http, cluster, [port_a, port_b])

    dp = cluster.start_data_plane()
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    seen = [await backend_of(http, f"{dp.proxy}/shop/items") for _ in range(6)]
    assert set(seen) == {"a", "b"}
    assert all(x != y for x, y in zip(seen, seen[1:], strict=False)), f"round-robin alternates: {seen}"

    async with http.get(f"{dp.proxy}/shop/items?q=1") as response:
        echoed = await response.json()
    assert echoed["path"] == "/items", "strip_path removes the matched /shop prefix"
    assert echoed["query"] == "q=1"
    assert echoed["headers"]["X-Forwarded-For"] == "127.0.0.1"
    assert echoed["headers"]["X-Forwarded-Proto"] == "http"

    await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": f"127.0.0.1:{port_c}"})
    await wait_dp_synced(http, cluster, dp.status)
    seen = [await backend_of(http, f"{dp.proxy}/shop/items") for _ in range(6)]
    assert set(seen) == {"a", "b", "c"}, seen

    status = await dp_status(http, dp.status)

    async def acknowledged() -> list[dict[str, Any]] | None:
        # The DP shows a version before its ACK has reached the CP: poll the CP's row.
        rows = (await admin(http, "GET", f"{cluster.admin}/clustering/data-planes"))["data"]
        return rows if rows and rows[0]["sync_status"] == "SYNCED" else None

    rows = await wait_for(acknowledged, message="the CP records the data plane's ACK")
    assert len(rows) == 1
    row = rows[0]
    assert row["hostname"] == "dp1"
    assert row["ip"] == "127.0.0.1"
    assert row["sync_status"] == "SYNCED"
    assert row["config_hash"] == status["configuration_hash"]
    assert row["config_version"] == status["configuration_version"]
    assert row["id"] == status["node_id"]


async def test_unmatched_path_gets_kongs_404_and_missing_targets_a_503(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    await create_shop(http, cluster, [])
    dp = cluster.start_data_plane()
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    async with http.get(f"{dp.proxy}/nowhere") as response:
        assert response.status == 404
        assert await response.json() == {"message": "no Route matched with those values"}
    async with http.get(f"{dp.proxy}/shop") as response:
        assert response.status == 503
        assert await response.json() == {"message": "failure to get a peer from the ring-balancer"}


async def test_data_plane_nacks_config_it_cannot_apply_and_keeps_serving_the_old_one(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Any
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    await create_shop(http, cluster, [await backends("a")])
    dp = cluster.start_data_plane()
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    applied = await wait_dp_synced(http, cluster, dp.status)

    # An entity this data plane cannot apply (a route regex Python cannot compile),
    # written straight to the store as a newer control plane, or a bug, could: the
    # Admin API would refuse it, so it is written under it.
    client = aioredis.Redis.from_url(cluster.redis_url or "", decode_responses=True)
    try:
        service = (await admin(http, "GET", f"{cluster.admin}/services/shop"))
        await EntityStore(client).insert(
            "routes",
            {
                "id": str(uuid.uuid4()),
                "name": "broken",
                "paths": ["~/(unclosed"],
                "service": {"id": service["id"]},
                "protocols": ["http", "https"],
                "strip_path": True,
            },
        )
    finally:
        await client.aclose()

    async def nacked() -> dict[str, Any] | None:
        rows = (await admin(http, "GET", f"{cluster.admin}/clustering/data-planes"))["data"]
        return rows[0] if rows and rows[0]["sync_status"] == "NACKED" else None

    row = await wait_for(nacked, timeout=15, message="the DP to NACK")
    assert row is not None and "broken" in (row["sync_error"] or "")
    status = await dp_status(http, dp.status)
    assert status["configuration_version"] == applied["configuration_version"]
    assert await backend_of(http, f"{dp.proxy}/shop/") == "a"


async def test_data_plane_serves_its_cached_config_when_no_control_plane_answers(
    cluster: Cluster, http: aiohttp.ClientSession, backends: Any
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    await create_shop(http, cluster, [await backends("a")])
    dp = cluster.start_data_plane("dp1")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    applied = await wait_dp_synced(http, cluster, dp.status)
    dp.process.stop()
    cp.stop()

    again = cluster.start_data_plane("dp1")  # same data dir, CP gone
    await wait_http_ok(http, f"{again.status}/status/ready", again.process)
    status = await dp_status(http, again.status)
    assert status["configuration_hash"] == applied["configuration_hash"]
    assert status["cluster"]["connected"] is False
    assert await backend_of(http, f"{again.proxy}/shop/") == "a"


@pytest.mark.parametrize(
    "command",
    [
        ["control-plane", "--admin-listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"],
        ["data-plane", "--proxy-listen", "127.0.0.1:0", "--status-listen", "127.0.0.1:0"],
    ],
    ids=["control-plane", "data-plane"],
)
def test_planes_refuse_to_start_on_an_unsecured_cluster_link_with_a_clear_message(
    tmp_path: Path, command: list[str]
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ferry", *command, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("FERRY_")},
    )
    assert result.returncode == 2
    assert "--cluster-insecure" in result.stderr
    assert "Traceback" not in result.stderr
    assert not any(tmp_path.iterdir()), "nothing was started or written"


async def test_embedded_redis_keeps_the_config_across_a_control_plane_restart_and_stops_with_it(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = Cluster(tmp_path, redis_url=None)
    try:
        cp = cluster.start_control_plane(name="cp-embedded")
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        created = await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "kept"})
        assert processes_mentioning(str(tmp_path / "cp-embedded")), "redis-server runs under the data dir"
        assert cp.stop() == 0
        await wait_for(lambda: not processes_mentioning(str(tmp_path / "cp-embedded")),
                       timeout=10, message="the embedded redis-server to exit")

        cp = cluster.start_control_plane(name="cp-embedded")
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        again = await admin(http, "GET", f"{cluster.admin}/upstreams/kept")
        assert again["id"] == created["id"]
    finally:
        cluster.stop_all()


async def test_ferry_up_serves_the_demo_and_ctrl_c_leaves_no_process(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    data_dir = tmp_path / "up"
    admin_port, proxy_port, status_port, tls_port = free_port(), free_port(), free_port(), free_port()
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ferry", "up", "--data-dir", str(data_dir),
             "--admin-listen", f"127.0.0.1:{admin_port}", "--cluster-listen", f"127.0.0.1:{free_port()}",
             "--proxy-listen", f"127.0.0.1:{proxy_port}, 127.0.0.1:{tls_port} ssl",
             "--status-listen", f"127.0.0.1:{status_port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        async def demo_answers() -> bool:
            assert process.poll() is None, log_path.read_text()
            try:
                async with http.get(f"http://127.0.0.1:{proxy_port}/demo/hello",
                                    timeout=aiohttp.ClientTimeout(total=2)) as response:
                    return response.status == 200
            except (aiohttp.ClientError, OSError, TimeoutError):
                return False

        await wait_for(demo_answers, timeout=30, message="ferry up to proxy /demo")
        seen = {await backend_of(http, f"http://127.0.0.1:{proxy_port}/demo/hello") for _ in range(4)}
        assert seen == {"backend-a", "backend-b"}
        await wait_for(lambda: "Press Ctrl-C" in log_path.read_text(), timeout=10,
                       message="ferry up to print what to curl")
        assert f"curl -s http://127.0.0.1:{proxy_port}/demo/hello" in log_path.read_text()
        # The TLS listener, with the data plane's default certificate, as printed.
        assert f"curl -sk https://127.0.0.1:{tls_port}/demo/hello" in log_path.read_text()
        async with http.get(f"https://127.0.0.1:{tls_port}/demo/hello", ssl=False) as response:
            assert response.status == 200
            assert (await response.json())["backend"] in {"backend-a", "backend-b"}
        # The planes talk mTLS with a cluster certificate ferry up generated under its data dir.
        assert "(mTLS shared, cluster certificate" in log_path.read_text()
        assert (data_dir / "cluster" / "cluster.key").stat().st_mode & 0o777 == 0o600

        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert process.wait(30) == 0, log_path.read_text()
        await wait_for(lambda: not processes_mentioning(str(data_dir)), timeout=10,
                       message="every ferry up child to exit")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in processes_mentioning(str(data_dir)):
            os.kill(pid, signal.SIGKILL)


def test_ferry_help_documents_every_flag_with_its_environment_variable() -> None:
    for command in ("control-plane", "data-plane", "up"):
        result = subprocess.run([sys.executable, "-m", "ferry", command, "--help"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0
        for line in result.stdout.splitlines():
            stripped = line.strip()
            if stripped.startswith("--") and not stripped.startswith("--help"):
                flag = stripped.split()[0].rstrip(",")
                env = "FERRY_" + flag[2:].replace("-", "_").upper()
                assert env in result.stdout.replace("\n", " "), f"{command} {flag} names {env}"


__all__ = ["FerryProcess"]
