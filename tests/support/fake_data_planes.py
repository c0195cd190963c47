"""Data planes played by hand on ``Cluster.Connect``: real gRPC clients that send what a
test says (Hello, ACK, HealthReport, Ping), so a test controls exactly what every data
plane reports and sees exactly what the control plane sends it.

The ``dps`` fixture (registered by ``tests/integration/conftest.py``) opens them:
``await dps(cp, hostname, *args)`` is a connected ``data_plane_kind(cp, hostname, *args)``,
closed at teardown; ``data_plane_kind`` is :class:`FakeDataPlane` unless a module
overrides that fixture with a subclass.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from control_plane.server import ControlPlane
from proto import cluster_pb2, cluster_pb2_grpc

#: Active checks on, at an interval no test waits for (reports come from the test).
CHECKED = {"healthchecks": {"active": {"healthy": {"interval": 5}, "unhealthy": {"interval": 5}}}}


class FakeDataPlane:
    """A real gRPC client on ``Cluster.Connect`` that sends what the test says."""

    def __init__(self, cp: ControlPlane, hostname: str) -> None:
        self.node_id = str(uuid.uuid4())
        self.hostname = hostname
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{cp.cluster_port}")
        self._call = cluster_pb2_grpc.ClusterStub(self._channel).Connect()
        self.inbox: asyncio.Queue[cluster_pb2.ControlPlaneMessage] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> cluster_pb2.Snapshot:
        """Hello, wait for the snapshot, ACK it."""
        hello = cluster_pb2.Hello(node_id=self.node_id, hostname=self.hostname, version="0.1.0")
        await self._call.write(cluster_pb2.DataPlaneMessage(hello=hello))
        self._reader = asyncio.create_task(self._read())
        first = await self.next_message()
        assert first.WhichOneof("message") == "snapshot", first
        ack = cluster_pb2.Ack(version=first.snapshot.version, hash=first.snapshot.hash)
        await self._call.write(cluster_pb2.DataPlaneMessage(ack=ack))
        return first.snapshot

    async def _read(self) -> None:
        while True:
            message = await self._call.read()
            if message is grpc.aio.EOF:
                return
            await self.inbox.put(message)

    async def next_message(self, timeout: float = 10.0) -> cluster_pb2.ControlPlaneMessage:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def next_override(self) -> cluster_pb2.HealthOverride:
        """The next ``HealthOverride``, skipping snapshots and pongs."""
        while True:
            message = await self.next_message()
            if message.WhichOneof("message") == "health_override":
                return message.health_override

    async def report(
        self, full: bool, *addresses: cluster_pb2.AddressHealth, panic: tuple[str, ...] = ()
    ) -> None:
        """Send a ``HealthReport``; ``panic``: its ``panic_upstreams``."""
        report = cluster_pb2.HealthReport(
            full=full, addresses=list(addresses), panic_upstreams=list(panic)
        )
        await self._call.write(cluster_pb2.DataPlaneMessage(health=report))

    async def ping(self) -> None:
        await self._call.write(cluster_pb2.DataPlaneMessage(ping=cluster_pb2.Ping()))

    async def close(self) -> None:
        self._call.cancel()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._channel.close()


def health(
    target: dict[str, Any], state: str, *, address: str | None = None, reason: str = ""
) -> cluster_pb2.AddressHealth:
    """One ``AddressHealth`` for ``target`` (its own address unless one is given)."""
    return cluster_pb2.AddressHealth(
        upstream_id=target["upstream"]["id"],
        target_id=target["id"],
        target=target["target"],
        address=target["target"] if address is None else address,
        state=state,
        reason=reason or state.lower(),
        time=time.time(),
        weight=target["weight"],
    )


@pytest.fixture
def data_plane_kind() -> type[FakeDataPlane]:
    """The class ``dps`` opens; a module overrides this fixture to open a subclass."""
    return FakeDataPlane


@pytest.fixture
async def dps(data_plane_kind: type[FakeDataPlane]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await dps(cp, hostname, *args)``: a connected ``data_plane_kind(cp, hostname,
    *args)``; every one opened is closed at teardown."""
    opened: list[FakeDataPlane] = []

    async def open_dp(cp: ControlPlane, hostname: str, *args: Any) -> FakeDataPlane:
        dp = data_plane_kind(cp, hostname, *args)
        opened.append(dp)
        await dp.connect()
        return dp

    try:
        yield open_dp
    finally:
        for dp in opened:
            await dp.close()
