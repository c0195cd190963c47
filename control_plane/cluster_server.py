"""The gRPC side of the cluster link: a thin adapter over the SnapshotStore.

Like go-control-plane's ``pkg/server``, the servicer knows nothing of Redis: it
reads snapshots from a :class:`~control_plane.snapshot.SnapshotStore`, records
each DP's sync state through a :class:`SyncRecorder`, hands health reports
to a :class:`HealthSink`, writes the manual overrides an :class:`OverrideFeed`
hands it and, with health-check sharding on, the probe assignments and shared
verdicts a :class:`ProbeFeed` hands it. Only the conversion between wire
messages and those values lives here.

Per stream: the DP says ``Hello`` (what it already holds); the CP sends nothing
but a ``Pong`` when the DP holds exactly the current snapshot, a ``Delta`` from
the DP's version when the store can compute one, the full snapshot otherwise;
then one delta (or snapshot) per new version. ACKs mark the DP ``SYNCED``; a
sent-but-unacknowledged version shows ``STALE``; a NACK shows ``NACKED`` with the
DP's error. A NACK asking for a resync (the DP could not apply a delta to what it
holds) is answered with the full snapshot; after any other NACK, the next delta
starts from the version the DP last acknowledged. Keep-alive: the CP pings at
the interval the DP announced in its ``Hello`` and ends a stream on which
nothing arrived for 1.5 intervals. ``HealthReport`` s go to
the DP's health session; each ``Ping`` (and the ``Hello``) keeps its reported
health alive. ``HealthOverride`` s are sent only after the stream's first message
(the snapshot or the ``Pong``), in the order the feed hands them over; so are
``ProbeAssignment`` s and ``HealthVerdicts`` (sharding: the ``Hello``, each ``Ping``
and each report also keep the DP in the live set, and each report, once stored,
goes to the probe feed, which shares the DP's own probe verdicts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import grpc

import ferry_shared
from control_plane.cluster_messages import (
    address_reports,
    delta_bytes,
    override_message,
    probe_message,
    serialize_response,
    snapshot_bytes,
)
from control_plane.compatibility import incompatibility
from control_plane.health_types import AddressReport, ManualOverride, ProbeUpdate
from control_plane.snapshot import Snapshot, SnapshotStore
from control_plane.sync_state import DataPlaneRow
from ferry_shared.cluster_link import DEFAULT_PING_INTERVAL, SILENCE_FACTOR
from proto import cluster_pb2, cluster_pb2_grpc

log = logging.getLogger("ferry.control_plane.cluster")

#: Full snapshots being sent at once, across streams (see :class:`SendSlots`).
SNAPSHOT_SEND_SLOTS = 16
#: Seconds one send may hold its slot; a slower one goes on without it.
SNAPSHOT_SLOT_HOLD = 10.0


class SendSlots:
    """Bounds how many full snapshots are being sent at once.

    gRPC holds its own copy of each message until it is on the wire; a thousand
    data planes connecting together (a control-plane restart) would otherwise
    hold a thousand copies of a config of several megabytes at once (measured:
    1.5 GB peak for 1000 streams of a 3.8 MB snapshot, 0.2 GB with 16 slots, and
    all were served sooner). A slot is held until gRPC has sent the message, or
    for ``hold`` seconds at most, so a data plane that does not read cannot
    stall the others.
    """

    def __init__(self, slots: int = SNAPSHOT_SEND_SLOTS, hold: float = SNAPSHOT_SLOT_HOLD) -> None:
        self._semaphore = asyncio.Semaphore(slots)
        self._hold = hold

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self._semaphore.acquire()
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._semaphore.release()

        timer = asyncio.get_running_loop().call_later(self._hold, release)
        try:
            yield
        finally:
            timer.cancel()
            release()


@dataclass(frozen=True, slots=True)
class _FullSnapshot:
    """A serialised full snapshot in a stream's outbox: sent within a :class:`SendSlots` slot."""

    data: bytes


#: What a stream sends: messages, shared serialised deltas, full snapshots.
_Outbox = asyncio.Queue["cluster_pb2.ControlPlaneMessage | bytes | _FullSnapshot"]


@dataclass(slots=True)
class _StreamState:
    """What one stream's DP holds, or will once it has read what was sent.

    Shared by the stream's reader and watcher tasks (one event loop).
    """

    #: The config the DP will hold once it has applied what was sent: the base of
    #: the next delta. After a NACK, what it last acknowledged.
    held_version: int
    held_hash: str
    #: The last version sent (or held at Hello): the next one goes out when the
    #: store's differs, so a NACKed version is not sent again.
    sent_version: int
    sent_hash: str
    #: The reader asks the watcher for a full snapshot (a NACK with resync).
    resync: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class SyncRecorder(Protocol):
    """Keeps each DP's sync row (a ``data_planes.DataPlaneRegistry``)."""

    async def save_quietly(self, row: DataPlaneRow) -> bool:
        """Store ``row``; False (logged, never raised) when storage failed."""
        ...

    def save_soon(self, row: DataPlaneRow) -> None:
        """Store ``row`` shortly, without waiting (a failure is not reported)."""
        ...


class HealthSession(Protocol):
    """Where one DP stream's health goes; implementations never raise on storage errors."""

    async def report(
        self, full: bool, entries: Sequence[AddressReport], panic: frozenset[str] | None = None
    ) -> bool:
        """Record a report (``full``: it replaces the DP's previous view; ``panic``:
        the ids of the upstreams the DP has in panic mode)."""
        ...

    async def touch(self) -> bool:
        """The DP is alive: keep its reported view counting."""
        ...


class HealthSink(Protocol):
    """Opens one :class:`HealthSession` per DP stream (a ``TargetHealthStore``)."""

    def session(self, node_id: str, hostname: str) -> HealthSession: ...


class OverrideSubscription(Protocol):
    """Manual overrides for one stream, in order; closed when the stream ends."""

    async def get(self) -> ManualOverride: ...

    def close(self) -> None: ...


class OverrideFeed(Protocol):
    """Hands every manual override to every open subscription (an ``OverrideBroadcaster``)."""

    def subscribe(self) -> OverrideSubscription: ...


class ProbeStream(Protocol):
    """Health-check sharding for one DP stream (a ``probe_assignment.ProbeStream``).

    None of its methods raises on storage errors.
    """

    async def alive(self) -> None:
        """The DP is alive (``Hello``, ``Ping``): keep it in the live set."""
        ...

    async def reported(self, full: bool, entries: Sequence[AddressReport]) -> None:
        """The DP's report, after it was stored: share its own probe verdicts."""
        ...

    async def get(self) -> ProbeUpdate:
        """The next assignment or verdicts to send; waits for one."""
        ...

    def close(self) -> None: ...


class ProbeFeed(Protocol):
    """Opens one :class:`ProbeStream` per DP stream (a ``ProbeCoordinator``)."""

    def open(self, node_id: str, hostname: str) -> ProbeStream: ...


def add_cluster_servicer(servicer: cluster_pb2_grpc.ClusterServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` like ``add_ClusterServicer_to_server``, with :func:`serialize_response`
    (snapshots and deltas are yielded as shared, already serialised bytes)."""
    handlers = {
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=cluster_pb2.DataPlaneMessage.FromString,
            response_serializer=serialize_response,
        ),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("ferry.cluster.v1.Cluster", handlers),)
    )
    server.add_registered_method_handlers("ferry.cluster.v1.Cluster", handlers)


def peer_ip(peer: str) -> str:
    """``ipv4:10.0.0.1:5000`` → ``10.0.0.1``; ``ipv6:[::1]:5000`` → ``::1``."""
    if peer.startswith("ipv4:"):
        return peer[5:].rsplit(":", 1)[0]
    if peer.startswith("ipv6:"):
        return peer[5:].rsplit(":", 1)[0].strip("[]")
    return peer


class ClusterServicer(cluster_pb2_grpc.ClusterServicer):
    """Serves ``Cluster.Connect``; one coroutine per connected DP."""

    def __init__(
        self,
        snapshots: SnapshotStore,
        registry: SyncRecorder,
        *,
        cp_id: str,
        health: HealthSink,
        overrides: OverrideFeed,
        probes: ProbeFeed | None = None,
        version: str = ferry_shared.__version__,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        snapshot_slots: SendSlots | None = None,
    ) -> None:
        """``probes`` is None when health-check sharding is off (no assignment is sent).
        ``version`` is this CP's Ferry version, compared with each DP's (see
        :mod:`control_plane.compatibility`). ``ping_interval`` (seconds) is used
        for DPs whose ``Hello`` does not say theirs."""
        self._version = version
        self._ping_interval = ping_interval
        self._snapshot_slots = snapshot_slots or SendSlots()
        self._snapshots = snapshots
        self._registry = registry
        self._cp_id = cp_id
        self._health = health
        self._overrides = overrides
        self._probes = probes
        #: Data-plane streams open on this CP now (``ferry_control_plane_streams``).
        self.open_streams = 0

    async def Connect(  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[cluster_pb2.DataPlaneMessage],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[cluster_pb2.ControlPlaneMessage | bytes]:
        try:
            first = await anext(aiter(request_iterator))
        except StopAsyncIteration:
            return
        if first.WhichOneof("message") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be Hello")
        hello = first.hello
        if not hello.node_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Hello.node_id is required")
        interval = hello.ping_interval or self._ping_interval
        if not (math.isfinite(interval) and 0 < interval <= 3600):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Hello.ping_interval must be in (0, 3600] seconds, got {hello.ping_interval}",
            )
        row = DataPlaneRow(
            id=hello.node_id,
            hostname=hello.hostname,
            ip=peer_ip(context.peer()),
            version=hello.version,
            labels=dict(hello.labels),
            config_version=hello.config_version,
            config_hash=hello.config_hash,
            control_plane=self._cp_id,
        )
        refusal = incompatibility(self._version, hello.version)
        if refusal is not None:
            # Shown in /clustering/data-planes; the DP logs the same reason and retries
            # with back-off (an upgraded CP will take it).
            row.sync_status = "VERSION_INCOMPATIBLE"
            row.sync_error = refusal
            await self._registry.save_quietly(row)
            log.warning("refused data plane %s (%s): %s", row.id, row.hostname, refusal)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, refusal)
        log.info("data plane %s (%s, %s) connected", row.id, row.hostname, row.ip)
        # Outgoing messages: snapshots from the watcher loop, pongs from the
        # reader, overrides from the forwarder (once the first message is out).
        outbox: _Outbox = asyncio.Queue()
        first_queued = asyncio.Event()
        session = self._health.session(hello.node_id, hello.hostname)
        # Subscribe before anything is sent: an override published once the DP
        # holds its config is never missed.
        subscription = self._overrides.subscribe()
        probe = self._probes.open(hello.node_id, hello.hostname) if self._probes is not None else None
        state = _StreamState(
            hello.config_version, hello.config_hash, hello.config_version, hello.config_hash
        )
        reader = asyncio.create_task(
            self._read(request_iterator, row, outbox, session, probe, state, interval)
        )
        watcher = asyncio.create_task(self._watch(row, outbox, first_queued, state))
        forwarder = asyncio.create_task(self._forward(subscription, outbox, first_queued))
        pinger = asyncio.create_task(self._keep_alive(outbox, first_queued, interval))
        tasks = [reader, watcher, forwarder, pinger]
        if probe is not None:
            tasks.append(asyncio.create_task(self._forward_probes(probe, outbox, first_queued)))
        self.open_streams += 1
        try:
            while True:
                getter = asyncio.ensure_future(outbox.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    item = getter.result()
                    if isinstance(item, _FullSnapshot):
                        async with self._snapshot_slots.slot():
                            yield item.data  # resumed once gRPC has sent it
                    else:
                        yield item
                    continue
                getter.cancel()
                break  # the DP closed its side of the stream
        finally:
            self.open_streams -= 1
            subscription.close()
            if probe is not None:
                probe.close()  # its targets go to the other live DPs
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            # The DP's reported health stays until its TTL runs out: it may
            # reconnect (here or to another CP) and keep reporting.
            log.info("data plane %s disconnected", row.id)

    async def _watch(
        self,
        row: DataPlaneRow,
        outbox: _Outbox,
        first_queued: asyncio.Event,
        state: _StreamState,
    ) -> None:
        current = self._snapshots.current
        if current is not None and (current.version, current.hash) == (
            state.sent_version,
            state.sent_hash,
        ):
            # Nothing to send: answer with a Pong so the DP knows the link is up.
            row.sync_status = "SYNCED"
            await outbox.put(
                cluster_pb2.ControlPlaneMessage(pong=cluster_pb2.Pong(config_version=current.version))
            )
            first_queued.set()
        self._registry.save_soon(row)
        while True:
            snapshot = await self._next_change(state)
            delta = None
            if state.resync:
                state.resync = False
            else:
                delta = self._snapshots.delta(state.held_version, state.held_hash)
            state.held_version, state.held_hash = snapshot.version, snapshot.hash
            state.sent_version, state.sent_hash = snapshot.version, snapshot.hash
            if delta is not None and delta.snapshot is snapshot:
                await outbox.put(delta_bytes(delta))
            else:
                await outbox.put(_FullSnapshot(snapshot_bytes(snapshot)))
            first_queued.set()
            if (row.config_version, row.config_hash) != (snapshot.version, snapshot.hash):
                row.sync_status = "STALE"
                row.sync_error = None
            self._registry.save_soon(row)

    async def _next_change(self, state: _StreamState) -> Snapshot:
        """The snapshot to send next: a version the DP does not hold, or a resync's."""
        while True:
            current = self._snapshots.current
            if state.resync and current is not None:
                return current
            state.wake.clear()
            changed = asyncio.ensure_future(
                self._snapshots.wait_for_change(state.sent_version, state.sent_hash)
            )
            woken = asyncio.ensure_future(state.wake.wait())
            try:
                await asyncio.wait({changed, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                woken.cancel()
            if changed.done() and not changed.cancelled():
                return changed.result()

    async def _keep_alive(
        self,
        outbox: _Outbox,
        first_queued: asyncio.Event,
        interval: float,
    ) -> None:
        """Ping the DP every ``interval`` seconds, so it can tell a silent CP from a quiet one."""
        await first_queued.wait()
        while True:
            await asyncio.sleep(interval)
            current = self._snapshots.current
            await outbox.put(
                cluster_pb2.ControlPlaneMessage(
                    ping=cluster_pb2.Ping(
                        config_version=current.version if current else 0,
                        config_hash=current.hash if current else "",
                    )
                )
            )

    async def _forward(
        self,
        subscription: OverrideSubscription,
        outbox: _Outbox,
        first_queued: asyncio.Event,
    ) -> None:
        await first_queued.wait()
        while True:
            await outbox.put(override_message(await subscription.get()))

    async def _forward_probes(
        self,
        probe: ProbeStream,
        outbox: _Outbox,
        first_queued: asyncio.Event,
    ) -> None:
        await first_queued.wait()
        while True:
            await outbox.put(probe_message(await probe.get()))

    async def _read(
        self,
        request_iterator: AsyncIterator[cluster_pb2.DataPlaneMessage],
        row: DataPlaneRow,
        outbox: _Outbox,
        session: HealthSession,
        probe: ProbeStream | None,
        state: _StreamState,
        interval: float,
    ) -> None:
        await session.touch()
        if probe is not None:
            await probe.alive()
        messages = aiter(request_iterator)
        silence = interval * SILENCE_FACTOR
        while True:
            try:
                async with asyncio.timeout(silence):
                    message = await anext(messages)
            except StopAsyncIteration:
                return
            except TimeoutError:
                log.warning(
                    "data plane %s (%s) silent for %.1fs (pings every %.1fs): dropping its stream",
                    row.id, row.hostname, silence, interval,
                )
                return
            kind = message.WhichOneof("message")
            if kind == "ack":
                row.config_version = message.ack.version
                row.config_hash = message.ack.hash
                current = self._snapshots.current
                synced = current is None or (current.version, current.hash) == (
                    message.ack.version,
                    message.ack.hash,
                )
                row.sync_status = "SYNCED" if synced else "STALE"
                row.sync_error = None
            elif kind == "nack":
                nack = message.nack
                log.warning(
                    "data plane %s rejected version %d%s: %s",
                    row.id,
                    nack.version,
                    " (asks for a full snapshot)" if nack.resync else "",
                    nack.error_detail,
                )
                if nack.resync:
                    # It could not apply a delta to what it holds: send it everything.
                    state.resync = True
                    state.wake.set()
                    continue
                row.sync_status = "NACKED"
                row.sync_error = nack.error_detail
                if nack.version == state.sent_version:
                    # It keeps what it last acknowledged: the next delta starts there.
                    state.held_version, state.held_hash = row.config_version, row.config_hash
            elif kind == "ping":
                current = self._snapshots.current
                await outbox.put(
                    cluster_pb2.ControlPlaneMessage(
                        pong=cluster_pb2.Pong(config_version=current.version if current else 0)
                    )
                )
                await session.touch()
                if probe is not None:
                    await probe.alive()
            elif kind == "health":
                entries = address_reports(message.health, row.id)
                await session.report(
                    message.health.full, entries, frozenset(message.health.panic_upstreams)
                )
                if probe is not None:
                    await probe.reported(message.health.full, entries)
                continue
            else:
                continue
            self._registry.save_soon(row)
