"""Deltas, resyncs and keep-alives on the cluster stream, with real CPs and Redis.

A hand-written data plane (:class:`RawDataPlane`) speaks the protocol message by
message, so the tests can count exactly what the control plane sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
import redis.asyncio as aioredis

from control_plane.server import ControlPlane
from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import ConfigCache
from data_plane.config_installer import apply_snapshot
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigHolder
from proto import cluster_pb2, cluster_pb2_grpc
from tests.support.admin import AdminClient
from tests.support.control_planes import ControlPlanes
from tests.support.polling import wait_for

NODE = "00000000-0000-4000-8000-0000000000d1"


class RawDataPlane:
    """One ``Cluster.Connect`` stream driven by hand."""

    def __init__(self, cp: ControlPlane) -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.cluster_port}")
        self.call = cluster_pb2_grpc.ClusterStub(self.channel).Connect()
        self._write_lock = asyncio.Lock()  # gRPC allows one write at a time
        self._pinger: asyncio.Task[None] | None = None

    async def hello(
        self, version: int = 0, digest: str = "", ping_interval: float = 30.0, *,
        keep_alive: bool = False,
    ) -> None:
        """Say Hello; with ``keep_alive``, ping every ``ping_interval`` s as a real DP does."""
        await self.send(
            hello=cluster_pb2.Hello(
                node_id=NODE, hostname="raw", version="0.1.0",
                config_version=version, config_hash=digest, ping_interval=ping_interval,
            )
        )
        if keep_alive:
            self._pinger = asyncio.create_task(self._ping(ping_interval))

    async def _ping(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.send(ping=cluster_pb2.Ping())

    async def send(self, **message: Any) -> None:
        async with self._write_lock:
            await self.call.write(cluster_pb2.DataPlaneMessage(**message))

    async def read(self, timeout: float = 10.0) -> cluster_pb2.ControlPlaneMessage:
        async with asyncio.timeout(timeout):
            message = await self.call.read()
        assert message is not grpc.aio.EOF, "the control plane ended the stream"
        return message

    async def read_config(self, timeout: float = 10.0) -> cluster_pb2.ControlPlaneMessage:
        """The next snapshot or delta, skipping keep-alives."""
        while True:
            message = await self.read(timeout)
            if message.WhichOneof("message") in ("snapshot", "delta"):
                return message

    async def until_ping(self) -> list[str]:
        """The kinds of every message (but answers to our pings) before the CP's next ping."""
        kinds = []
        while (kind := (await self.read()).WhichOneof("message")) != "ping":
            if kind != "pong":
                kinds.append(kind)
        return kinds

    async def close(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            await asyncio.gather(self._pinger, return_exceptions=True)
        self.call.cancel()
        await self.channel.close()


async def shop(admin: AdminClient) -> dict[str, Any]:
    """Three upstreams with a target each; returns them by name."""
    upstreams = {}
    for name in ("keep", "change", "drop"):
        upstreams[name] = await admin.ok("POST", "/upstreams", {"name": name})
        await admin.ok("POST", f"/upstreams/{name}/targets", {"target": "127.0.0.1:9"})
    return upstreams


async def first_sync(cp: ControlPlane) -> tuple[int, str]:
    """A new DP's first message once ``shop`` is loaded: the full snapshot's version and hash."""
    await settled(cp, 6)
    raw = RawDataPlane(cp)
    try:
        await raw.hello()
        message = await raw.read()
        assert message.WhichOneof("message") == "snapshot"
        return message.snapshot.version, message.snapshot.hash
    finally:
        await raw.close()


async def changes_since(admin: AdminClient, upstreams: dict[str, Any]) -> tuple[set[str], set[str]]:
    """Change one upstream, delete one (with its target), add one: (upserted, removed) ids."""
    await admin.ok("PATCH", "/upstreams/change", {"slots": 100})
    drop_targets = (await admin.ok("GET", "/upstreams/drop/targets"))["data"]
    await admin.ok("DELETE", "/upstreams/drop")
    added = await admin.ok("POST", "/upstreams", {"name": "added"})
    return (
        {upstreams["change"]["id"], added["id"]},
        {upstreams["drop"]["id"], *(t["id"] for t in drop_targets)},
    )


async def settled(cp: ControlPlane, version: int) -> None:
    await wait_for(
        lambda: cp.snapshots.current is not None and cp.snapshots.current.version >= version,
        message=f"the CP to load version {version}",
    )


async def test_a_data_plane_reconnecting_with_version_v_receives_only_a_delta(
    control_planes: ControlPlanes, http: aiohttp.ClientSession
) -> None:
    cp = await control_planes.start()
    admin = AdminClient(http, cp)
    upstreams = await shop(admin)
    held_version, held_hash = await first_sync(cp)
    upserted, removed = await changes_since(admin, upstreams)
    await settled(cp, held_version + 3)
    current = cp.snapshots.current
    assert current is not None

    raw = RawDataPlane(cp)
    try:
        await raw.hello(held_version, held_hash, ping_interval=0.2, keep_alive=True)
        first = await raw.read()
        assert first.WhichOneof("message") == "delta", first
        delta = first.delta
        assert (delta.from_version, delta.from_hash) == (held_version, held_hash)
        assert (delta.version, delta.hash) == (current.version, current.hash)
        assert {r.id for r in delta.upserts} == upserted
        assert {k.id for k in delta.removals} == removed
        await raw.send(ack=cluster_pb2.Ack(version=delta.version, hash=delta.hash))
        # Nothing else config-like follows: the next message is the CP's keep-alive.
        assert await raw.until_ping() == []
    finally:
        await raw.close()
    full = cluster_pb2.ControlPlaneMessage(
        snapshot=cluster_pb2.Snapshot(
            version=current.version,
            hash=current.hash,
            resources=[cluster_pb2.Resource(kind=r.kind, id=r.id, body=r.body)
                       for r in current.resources],
        )
    )
    assert first.ByteSize() < full.ByteSize()


@pytest.mark.parametrize(
    "trimmed",
    [
        pytest.param(False, id="a_restarted_control_plane_sends_deltas_from_the_change_stream"),
        pytest.param(True, id="a_trimmed_change_stream_means_a_full_snapshot"),
    ],
)
async def test_a_restarted_control_plane_answers_a_held_version_from_the_change_stream(
    control_planes: ControlPlanes, http: aiohttp.ClientSession, trimmed: bool
) -> None:
    """A DP holding an older version gets a delta from a restarted CP while the change
    stream still reaches back to that version, and the full snapshot once it is trimmed."""
    first = await control_planes.start()
    upstreams = await shop(AdminClient(http, first))
    held_version, held_hash = await first_sync(first)
    upserted, removed = await changes_since(AdminClient(http, first), upstreams)
    await control_planes.stop(first)
    if trimmed:
        client = aioredis.Redis.from_url(control_planes.redis_url)
        try:
            await client.xtrim("ferry:changes", maxlen=0)
        finally:
            await client.aclose()

    restarted = await control_planes.start()
    raw = RawDataPlane(restarted)
    try:
        await raw.hello(held_version, held_hash)
        message = await raw.read()
        if trimmed:
            assert message.WhichOneof("message") == "snapshot"
            current = restarted.snapshots.current
            assert current is not None and message.snapshot.hash == current.hash
        else:
            assert message.WhichOneof("message") == "delta"
            assert {r.id for r in message.delta.upserts} == upserted
            assert {k.id for k in message.delta.removals} == removed
    finally:
        await raw.close()


async def test_a_data_plane_that_cannot_apply_a_delta_gets_the_full_snapshot(
    control_planes: ControlPlanes, http: aiohttp.ClientSession
) -> None:
    cp = await control_planes.start()
    admin = AdminClient(http, cp)
    upstreams = await shop(admin)
    held_version, held_hash = await first_sync(cp)
    await changes_since(admin, upstreams)
    await settled(cp, held_version + 3)
    raw = RawDataPlane(cp)
    try:
        await raw.hello(held_version, held_hash)
        delta = (await raw.read()).delta
        await raw.send(nack=cluster_pb2.Nack(version=delta.version, hash=delta.hash,
                                             error_detail="base differs", resync=True))
        message = await raw.read_config()
        assert message.WhichOneof("message") == "snapshot"
        assert (message.snapshot.version, message.snapshot.hash) == (delta.version, delta.hash)
    finally:
        await raw.close()


async def test_after_a_nack_nothing_is_resent_and_the_next_delta_starts_from_the_acked_version(
    control_planes: ControlPlanes, http: aiohttp.ClientSession
) -> None:
    cp = await control_planes.start()
    admin = AdminClient(http, cp)
    upstreams = await shop(admin)
    raw = RawDataPlane(cp)
    try:
        await settled(cp, 6)
        await raw.hello(ping_interval=0.2, keep_alive=True)
        snapshot = (await raw.read()).snapshot
        await raw.send(ack=cluster_pb2.Ack(version=snapshot.version, hash=snapshot.hash))
        await admin.ok("PATCH", "/upstreams/change", {"slots": 100})
        rejected = (await raw.read_config()).delta
        assert rejected.from_version == snapshot.version
        await raw.send(nack=cluster_pb2.Nack(version=rejected.version, hash=rejected.hash,
                                             error_detail="cannot compile"))

        async def nacked() -> bool:
            rows = (await admin.ok("GET", "/clustering/data-planes"))["data"]
            return bool(rows) and rows[0]["sync_status"] == "NACKED"

        await wait_for(nacked, message="the NACK to be recorded")
        # Keep-alives only: the rejected version is not sent again.
        assert await raw.until_ping() == []
        assert await raw.until_ping() == []

        await admin.ok("DELETE", f"/upstreams/{upstreams['drop']['id']}")
        delta = (await raw.read_config()).delta
        assert delta.from_version == snapshot.version, "based on what the DP acknowledged"
        assert {r.id for r in delta.upserts} == {upstreams["change"]["id"]}
    finally:
        await raw.close()


async def test_changes_within_the_merge_window_go_out_as_one_update(
    control_planes: ControlPlanes, http: aiohttp.ClientSession
) -> None:
    cp = await control_planes.start(merge_window=1.0)
    admin = AdminClient(http, cp)
    await shop(admin)
    raw = RawDataPlane(cp)
    try:
        await settled(cp, 6)
        await raw.hello(ping_interval=0.3, keep_alive=True)
        snapshot = (await raw.read()).snapshot
        await raw.send(ack=cluster_pb2.Ack(version=snapshot.version, hash=snapshot.hash))
        # One change: it goes out alone (at once when the window since the last
        # update has passed, else at its end).
        await admin.ok("POST", "/upstreams", {"name": "first"})
        first = (await raw.read_config()).delta
        assert (first.from_version, first.version) == (snapshot.version, snapshot.version + 1)
        await raw.send(ack=cluster_pb2.Ack(version=first.version, hash=first.hash))
        # A burst within the window of that update: one update at the window's end.
        await asyncio.gather(
            *(admin.ok("POST", "/upstreams", {"name": f"burst-{n}"}) for n in range(3))
        )
        delta = (await raw.read_config()).delta
        assert (delta.from_version, delta.version) == (first.version, first.version + 3)
        assert len(delta.upserts) == 3
        assert await raw.until_ping() == []
    finally:
        await raw.close()


async def test_a_real_data_plane_applies_deltas_and_caches_the_whole_config(
    control_planes: ControlPlanes, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cp = await control_planes.start()
    admin = AdminClient(http, cp)
    upstreams = await shop(admin)
    cache = ConfigCache(tmp_path / "dp")
    node = NodeIdentity(node_id=NODE, hostname="dp", version="0.1.0")

    async def run_until(version: int) -> ConfigHolder:
        holder = ConfigHolder()
        client = ClusterClient(f"127.0.0.1:{cp.cluster_port}", holder, cache, node,
                               insecure=True, backoff_base=0.05, backoff_max=0.5)
        await client.load_cache()
        task = asyncio.create_task(client.run())
        try:
            await wait_for(lambda: holder.current is not None and holder.current.version >= version,
                           message=f"the DP to apply version {version}")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.flush()  # the disk cache follows the install
        return holder

    await settled(cp, 6)
    await run_until(6)
    await changes_since(admin, upstreams)
    await settled(cp, 9)
    holder = await run_until(9)
    current = cp.snapshots.current
    assert current is not None and holder.current is not None
    assert holder.current.hash == current.hash
    cached = cache.load()
    assert cached is not None
    assert apply_snapshot(cached, None).hash == current.hash, "the cache holds the merged config"


async def test_the_control_plane_keeps_a_pinging_data_plane_and_drops_a_silent_one(
    control_planes: ControlPlanes
) -> None:
    cp = await control_planes.start()
    raw = RawDataPlane(cp)
    try:
        await raw.hello(ping_interval=0.1)
        await raw.read()  # the snapshot
        for _ in range(10):  # ~1 s, well past 1.5 intervals, answering each ping
            await raw.until_ping()
            await raw.send(ping=cluster_pb2.Ping())
        # Silent from now on: the CP ends the stream.
        async with asyncio.timeout(10):
            while (await raw.call.read()) is not grpc.aio.EOF:
                pass
    finally:
        await raw.close()


class SilentControlPlane(cluster_pb2_grpc.ClusterServicer):
    """Answers a Hello with a Pong, then says nothing more and reads nothing."""

    def __init__(self) -> None:
        self.streams = 0

    async def Connect(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:  # noqa: N802
        await anext(aiter(request_iterator))
        self.streams += 1
        yield cluster_pb2.ControlPlaneMessage(pong=cluster_pb2.Pong())
        await asyncio.Event().wait()


async def test_a_data_plane_drops_a_silent_control_plane_and_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    silent = SilentControlPlane()
    server = grpc.aio.server()
    cluster_pb2_grpc.add_ClusterServicer_to_server(silent, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = ClusterClient(
        f"127.0.0.1:{port}", ConfigHolder(), ConfigCache(tmp_path),
        NodeIdentity(node_id=NODE, hostname="dp", version="0.1.0"),
        insecure=True, ping_interval=0.1, backoff_base=0.05, backoff_max=0.2,
    )
    task = asyncio.create_task(client.run())
    try:
        await wait_for(lambda: silent.streams >= 3, message="the DP to reconnect twice")
        assert "silent for 0.2s; dropping the stream" in caplog.text
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.stop(0)


async def test_a_hello_with_an_unusable_ping_interval_is_refused_with_the_reason(
    control_planes: ControlPlanes
) -> None:
    cp = await control_planes.start()
    raw = RawDataPlane(cp)
    try:
        await raw.hello(ping_interval=-1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await raw.call.read()
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ping_interval" in (refused.value.details() or "")
    finally:
        await raw.close()
