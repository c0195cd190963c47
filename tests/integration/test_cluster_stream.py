"""The cluster link with real parts in one process: Redis, two CPs, gRPC, a DP client."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_plane.server import ControlPlane
from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import ConfigCache
from data_plane.config_installer import apply_snapshot
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigError, ConfigHolder
from proto import cluster_pb2
from tests.support.control_planes import ControlPlanes
from tests.support.polling import wait_for


@pytest.fixture
async def planes(control_planes: ControlPlanes) -> list[ControlPlane]:
    """Two control planes over the test's Redis (data in ``tmp_path``), stopped at teardown."""
    return [await control_planes.start(stop_grace=0.5), await control_planes.start(stop_grace=0.5)]


class RunningClient:
    def __init__(self, cp: ControlPlane, tmp_path: Path, name: str, version: str = "0.1.0") -> None:
        self.holder = ConfigHolder()
        self.cache = ConfigCache(tmp_path / name)
        self.node = NodeIdentity(node_id=f"00000000-0000-4000-8000-00000000000{len(name)}",
                                 hostname=name, version=version)
        self.client = ClusterClient(f"127.0.0.1:{cp.cluster_port}", self.holder, self.cache, self.node,
                                    insecure=True, backoff_base=0.05, backoff_max=0.5)
        self.task = asyncio.create_task(self.client.run())

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def post(session: aiohttp.ClientSession, cp: ControlPlane, path: str, body: dict[str, Any]) -> Any:
    async with session.post(f"http://127.0.0.1:{cp.admin_port}{path}", json=body) as response:
        assert response.status == 201, await response.text()
        return await response.json()


async def test_a_write_through_one_control_plane_reaches_a_data_plane_of_the_other(
    planes: list[ControlPlane], tmp_path: Path
) -> None:
    writer, streamer = planes
    dp = RunningClient(streamer, tmp_path, "dp")
    try:
        async with aiohttp.ClientSession() as session:
            await post(session, writer, "/upstreams", {"name": "shop"})
            await post(session, writer, "/upstreams/shop/targets", {"target": "127.0.0.1:9001"})

            def applied() -> bool:
                snap = streamer.snapshots.current
                return bool(dp.holder.current and snap and dp.holder.current.hash == snap.hash
                            and snap.version >= 2)

            await wait_for(applied, message="the DP to apply the writer's change via the other CP")
            await dp.client.flush()  # the cache follows the ACK
            assert dp.cache.load() is not None, "the applied snapshot is cached on disk"
            assert dp.cache.load().hash == dp.holder.current.hash  # type: ignore[union-attr]

            async def synced_row() -> dict[str, Any] | None:
                async with session.get(f"http://127.0.0.1:{writer.admin_port}/clustering/data-planes") as r:
                    rows = (await r.json())["data"]
                ok = rows and rows[0]["sync_status"] == "SYNCED" and rows[0]["config_hash"] == dp.holder.current.hash  # type: ignore[union-attr]
                return rows[0] if ok else None

            row = await wait_for(synced_row, message="the DP row to be SYNCED on every CP")
            assert row is not None
            assert row["control_plane"] == streamer.node_id
            assert row["hostname"] == "dp"
    finally:
        await dp.close()


async def test_a_data_plane_that_already_holds_the_current_config_is_synced_without_a_resend(
    planes: list[ControlPlane], tmp_path: Path
) -> None:
    cp = planes[0]
    first = RunningClient(cp, tmp_path, "dp")
    try:
        await wait_for(lambda: first.holder.current is not None, message="first config")
    finally:
        await first.close()
    held = first.holder.current
    assert held is not None

    # Same node and cache, fresh process: it says in Hello what it holds.
    again = RunningClient(cp, tmp_path, "dp")
    again.holder.current = held
    try:
        # The CP's first message on a stream is the snapshot when one is due, so
        # once connected (first message seen) no snapshot has come: it was a Pong.
        await wait_for(lambda: again.client.state.connected, message="reconnect")
        assert again.client.state.last_config_at is None, "nothing was resent"
    finally:
        await again.close()


def _snapshot(version: int, resources: list[tuple[str, str, bytes]], digest: str | None = None) -> cluster_pb2.Snapshot:
    from ferry_shared.snapshot_format import config_hash

    return cluster_pb2.Snapshot(
        version=version,
        hash=digest if digest is not None else config_hash(resources),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in resources],
    )


def test_a_snapshot_whose_hash_does_not_match_its_content_is_rejected() -> None:
    snap = _snapshot(3, [("upstreams", "u1", b'{"id":"u1"}')], digest="0" * 64)
    with pytest.raises(ConfigError, match="hash mismatch"):
        apply_snapshot(snap, None)


def test_a_snapshot_with_an_unknown_entity_kind_is_rejected() -> None:
    snap = _snapshot(3, [("plugins", "p1", b"{}")])
    with pytest.raises(ConfigError, match="unknown entity kind"):
        apply_snapshot(snap, None)


def test_a_snapshot_with_a_body_that_is_not_json_is_rejected() -> None:
    snap = _snapshot(3, [("upstreams", "u1", b"{nope")])
    with pytest.raises(ConfigError, match="not JSON"):
        apply_snapshot(snap, None)


def test_an_empty_snapshot_applies() -> None:
    config = apply_snapshot(_snapshot(1, []), None)
    assert config.version == 1


@pytest.mark.parametrize(
    ("dp_version", "served"),
    [("0.1.7", True), ("0.0.9", True), ("0.2.0", False), ("1.1.0", False)],
)
async def test_a_data_plane_of_another_major_or_a_newer_minor_version_is_refused(
    planes: list[ControlPlane], tmp_path: Path, dp_version: str, served: bool
) -> None:
    cp = planes[0]  # Ferry 0.1.x
    dp = RunningClient(cp, tmp_path, "dp", version=dp_version)
    try:
        async with aiohttp.ClientSession() as session:

            async def row() -> dict[str, Any] | None:
                async with session.get(f"http://127.0.0.1:{cp.admin_port}/clustering/data-planes") as r:
                    rows = (await r.json())["data"]
                wanted = "SYNCED" if served else "VERSION_INCOMPATIBLE"
                return rows[0] if rows and rows[0]["sync_status"] == wanted else None

            found = await wait_for(row, message=f"the DP row of version {dp_version}")
            assert found is not None and found["version"] == dp_version
            if served:
                assert dp.holder.current is not None and dp.client.state.connected
            else:
                assert dp.holder.current is None and not dp.client.state.connected
                assert "upgrade the control planes first" in found["sync_error"] or (
                    "different major version" in found["sync_error"]
                )
                await wait_for(lambda: dp.client.state.last_error == found["sync_error"],
                               message="the DP to know why it was refused")
    finally:
        await dp.close()


async def test_the_control_plane_serves_the_standard_grpc_health_service(
    planes: list[ControlPlane],
) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{planes[0].cluster_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "ferry.cluster.v1.Cluster"):
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
