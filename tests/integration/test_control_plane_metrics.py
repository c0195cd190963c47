"""The control plane's ``GET /metrics``: a real CP over the session's Redis and a real
in-process data plane; scraped with Prometheus' own text parser."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from control_plane.redis_connection import REDIS_ERRORS, create_redis_client
from control_plane.server import ControlPlane
from data_plane.server import DataPlane, DataPlaneSettings
from ferry_shared.snapshot_format import config_hash_number
from tests.support.backends import refused_port
from tests.support.control_planes import start_control_plane
from tests.support.metrics import Scrape
from tests.support.polling import wait_for


async def scrape_cp(http: aiohttp.ClientSession, cp: ControlPlane) -> Scrape:
    async with http.get(f"http://127.0.0.1:{cp.admin_port}/metrics") as response:
        assert response.status == 200, await response.text()
        return Scrape(await response.text(), response.headers.get("Content-Type", ""))


async def test_connected_data_planes_their_sync_state_and_the_store_are_exported(
    redis_url: str, tmp_path: Path
) -> None:
    cp = await start_control_plane(redis_url, tmp_path / "cp")
    dp = DataPlane(
        DataPlaneSettings(
            control_plane=f"127.0.0.1:{cp.cluster_port}",
            proxy_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            data_dir=tmp_path / "dp",
            hostname="metrics-dp",
            cluster_insecure=True,
        )
    )
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        async with http.post(f"http://127.0.0.1:{cp.admin_port}/upstreams", json={"name": "u"}) as r:
            assert r.status == 201
        async with http.get(f"http://127.0.0.1:{cp.admin_port}/no-such-path") as r:
            assert r.status == 404
        await dp.start()
        await wait_for(lambda: cp.snapshots.current is not None and dp.holder.current is not None
                       and dp.holder.current.version == cp.snapshots.current.version,
                       timeout=15, message="the DP to sync")
        assert cp.snapshots.current is not None
        version, config_hash = cp.snapshots.current.version, cp.snapshots.current.hash

        async def synced() -> Scrape | None:
            s = await scrape_cp(http, cp)
            return s if s.get("ferry_data_planes", sync_status="SYNCED") == 1 else None

        s = await wait_for(synced, timeout=15, message="the DP's row to say SYNCED")
        assert s.content_type.startswith("text/plain")
        [row] = [x for x in s.samples("kong_data_plane_last_seen")]
        node = {"node_id": row.labels["node_id"], "hostname": "metrics-dp", "ip": "127.0.0.1"}
        assert row.labels == node and row.value > 1.7e9
        assert s.value("kong_data_plane_config_hash", **node) == config_hash_number(config_hash)
        assert s.value("kong_data_plane_version_compatible", **node, kong_version=row_version(s)) == 1
        ids = {"node_id": node["node_id"], "hostname": "metrics-dp"}
        assert s.value("ferry_data_plane_sync_status", **ids, sync_status="SYNCED") == 1
        assert s.value("ferry_data_plane_sync_status", **ids, sync_status="NACKED") == 0
        assert s.value("ferry_data_plane_config_version", **ids) == version
        assert s.value("ferry_control_plane_streams") == 1
        assert s.value("ferry_config_version") == version
        assert s.value("kong_datastore_reachable") == 1
        assert s.value("ferry_admin_api_requests_total", code="201") >= 1
        assert s.value("ferry_admin_api_requests_total", code="404") >= 1
        assert s.get("process_resident_memory_bytes") is not None

        await dp.stop(1.0)

        async def closed() -> Scrape | None:
            s = await scrape_cp(http, cp)
            return s if s.value("ferry_control_plane_streams") == 0 else None

        s = await wait_for(closed, timeout=10, message="the stream count to drop")
        # The row stays (Kong's purge delay): the DP is still listed, with its last state.
        assert s.value("kong_data_plane_last_seen", **node) > 0
    finally:
        await http.close()
        await dp.stop(1.0)
        await cp.stop(0.5)


def row_version(s: Scrape) -> str:
    [sample] = s.samples("kong_data_plane_version_compatible")
    return str(sample.labels["kong_version"])


async def test_failed_redis_operations_are_counted_by_kind() -> None:
    before = REDIS_ERRORS["connection"]
    client = create_redis_client(f"redis://127.0.0.1:{refused_port()}/0")
    try:
        with pytest.raises(Exception):  # noqa: B017 - redis-py's ConnectionError or OSError
            await client.ping()
    finally:
        await client.aclose()
    # One per failed attempt: the first try and every retry.
    assert REDIS_ERRORS["connection"] - before >= 2
