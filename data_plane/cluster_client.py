"""The data plane's end of the cluster link: a thin adapter between the gRPC stream
and the :class:`~data_plane.config_installer.ConfigInstaller`.

Opens ``Cluster.Connect``, says ``Hello`` with the version/hash it holds, hands
every snapshot or delta received to the installer (which verifies, compiles,
swaps, starts health checks and writes the disk cache) and ACKs. A config the
installer refuses is NACKed with the reason and the previous config keeps
serving; a delta that does not fit what it holds is NACKed with ``resync`` so
the CP sends the full snapshot. Health reports, overrides, probe assignments
and verdicts pass between the stream and the health supervisor. Reconnects with
jittered exponential backoff (tenacity) so many DPs returning after a CP
restart do not arrive at once. Keep-alive: pings every ``ping_interval``
seconds and ends a stream on which nothing arrived for 1.5 intervals.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from data_plane.config_cache import ConfigCache
from data_plane.config_installer import (
    ConfigInstaller,
    DecodedBodies,
    DeltaDoesNotFit,
    HeldConfig,
    apply_snapshot,
    merge_delta,
)
from data_plane.health.messages import address_health, verdict_rows
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigError, ConfigHolder
from ferry_shared.cluster_link import DEFAULT_PING_INTERVAL, SILENCE_FACTOR, require_secured_link
from ferry_shared.cluster_tls import ClusterTLS, explain_link_failure, open_channel
from proto import cluster_pb2, cluster_pb2_grpc

#: Kept importable from here: the installer moved to ``config_installer``.
__all__ = [
    "ClusterClient",
    "ClusterLinkState",
    "DecodedBodies",
    "DeltaDoesNotFit",
    "SessionEnded",
    "apply_snapshot",
    "merge_delta",
]

log = logging.getLogger("ferry.data_plane.cluster")


class SessionEnded(Exception):
    """An established stream ended; reconnect with a fresh backoff."""


@dataclass(slots=True)
class ClusterLinkState:
    """What the status API shows about the link. Mutated only by the client task."""

    connected: bool = False
    last_error: str | None = None
    last_config_at: float | None = None
    last_nack: str | None = None


class ClusterClient:
    """Keeps one stream to the CP open for the DP's lifetime. Run :meth:`run` as a task."""

    def __init__(
        self,
        control_plane: str,
        installer: ConfigInstaller | ConfigHolder,
        cache: ConfigCache | None = None,
        node: NodeIdentity | None = None,
        *,
        insecure: bool,
        tls: ClusterTLS | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
    ) -> None:
        """``installer`` installs what the stream brings. The short form
        ``ClusterClient(cp, holder, cache, node, ...)`` builds a plain installer (no
        DNS, no health checks) over ``holder`` and ``cache``."""
        require_secured_link(insecure, tls)
        if isinstance(installer, ConfigHolder):
            if cache is None:
                raise TypeError("ClusterClient(cp, holder, cache, node): the cache is required")
            installer = ConfigInstaller(installer, cache)
        if node is None:
            raise TypeError("ClusterClient: node is required")
        self._installer = installer
        self._tls = tls
        self._target = control_plane
        self._holder = installer.holder
        self._node = node
        self._ping_interval = ping_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._health = installer.health
        #: gRPC aio allows one write in progress per call: pings, ACKs and health
        #: reports take turns.
        self._write_lock = asyncio.Lock()
        self.state = ClusterLinkState()

    async def load_cache(self) -> bool:
        """Serve the disk cache's config until a CP answers; False when there is none usable.

        Call once, before :meth:`run`.
        """
        return await self._installer.load_cache()

    async def flush(self) -> None:
        """Wait until the disk cache holds the last config applied (see
        :meth:`ConfigInstaller.flush`: the ACK does not wait for it)."""
        await self._installer.flush()

    async def run(self) -> None:
        """Connect, stream, reconnect; returns only when cancelled."""
        while True:
            try:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type((grpc.aio.AioRpcError, OSError)),
                    wait=wait_random_exponential(multiplier=self._backoff_base, max=self._backoff_max),
                    before_sleep=self._log_retry,
                ):
                    with attempt:
                        await self._session()
            except SessionEnded:
                # Jitter even the first reconnect so DPs dropped together spread out.
                await asyncio.sleep(random.uniform(0, self._backoff_base))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        detail = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        self.state.last_error = detail
        security = explain_link_failure(exc, self._tls)
        if security is not None:
            # A certificate or TLS mismatch: retrying alone will not fix it.
            self.state.last_error = security
            log.error(
                "control plane %s: %s; retry %d in %.1fs",
                self._target,
                security,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
            )
            return
        if isinstance(exc, grpc.aio.AioRpcError) and exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
            # Not a network problem: the CP will not serve this DP (e.g. its version).
            log.error(
                "control plane %s refused this data plane: %s; retry %d in %.1fs",
                self._target,
                detail,
                state.attempt_number,
                state.next_action.sleep if state.next_action else 0.0,
            )
            return
        log.warning(
            "control plane %s unreachable (%s); retry %d in %.1fs",
            self._target,
            detail,
            state.attempt_number,
            state.next_action.sleep if state.next_action else 0.0,
        )

    def _hello(self) -> cluster_pb2.DataPlaneMessage:
        current = self._holder.current
        return cluster_pb2.DataPlaneMessage(
            hello=cluster_pb2.Hello(
                node_id=self._node.node_id,
                hostname=self._node.hostname,
                version=self._node.version,
                labels=self._node.labels,
                config_version=current.version if current else 0,
                config_hash=current.hash if current else "",
                ping_interval=self._ping_interval,
            )
        )

    async def _session(self) -> None:
        options = [
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.max_receive_message_length", 256 * 1024 * 1024),
        ]
        async with open_channel(self._target, self._tls, options) as channel:
            call = cluster_pb2_grpc.ClusterStub(channel).Connect()
            if self._health is not None:
                # Probe everything until this CP says otherwise: a CP that does not
                # shard never sends an assignment, and no target may go unprobed.
                self._health.assign(False, [])
            await self._write(call, self._hello())
            pinger = asyncio.create_task(self._ping(call))
            reporter = asyncio.create_task(self._report_health(call))
            established = False
            silence = self._ping_interval * SILENCE_FACTOR
            try:
                while True:
                    try:
                        async with asyncio.timeout(silence):
                            message = await call.read()
                    except TimeoutError:
                        log.warning(
                            "control plane %s silent for %.1fs; dropping the stream",
                            self._target, silence,
                        )
                        if not established:
                            raise OSError(f"control plane sent nothing for {silence:.1f}s") from None
                        break
                    if message is grpc.aio.EOF:
                        break
                    kind = message.WhichOneof("message")
                    if kind == "snapshot":
                        await self._handle_snapshot(call, message.snapshot)
                    elif kind == "delta":
                        await self._handle_delta(call, message.delta)
                    elif kind == "health_override":
                        self._handle_override(message.health_override)
                    elif kind == "probe_assignment" and self._health is not None:
                        assignment = message.probe_assignment
                        self._health.assign(assignment.sharded, list(assignment.targets))
                    elif kind == "health_verdicts" and self._health is not None:
                        self._health.verdicts(verdict_rows(message.health_verdicts.addresses))
                    if not established:
                        # Only after handling it: the CP's first message is the
                        # snapshot when one is due, a Pong otherwise.
                        established = True
                        self.state.connected = True
                        self.state.last_error = None
                        log.info("connected to control plane %s", self._target)
            except grpc.aio.AioRpcError:
                if not established:
                    raise
            finally:
                self.state.connected = False
                pinger.cancel()
                reporter.cancel()
                await asyncio.gather(pinger, reporter, return_exceptions=True)
                call.cancel()
            if established:
                log.warning("stream to control plane %s ended; reconnecting", self._target)
                raise SessionEnded()
            raise OSError("control plane closed the stream before sending anything")

    async def _write(
        self, call: grpc.aio.StreamStreamCall, message: cluster_pb2.DataPlaneMessage
    ) -> None:
        async with self._write_lock:
            await call.write(message)

    async def _report_health(self, call: grpc.aio.StreamStreamCall) -> None:
        """Send this DP's health view once connected, then every transition.

        Transitions queued together go out as one message; a full view replaces
        everything the CP holds for this DP.
        """
        health = self._health
        if health is None:
            return
        health.queue_full_view()  # the CP may hold nothing (or something stale) for us
        queue = health.reports
        while True:
            full, rows = await queue.get()
            batch = list(rows)
            while not queue.empty():
                next_full, next_rows = queue.get_nowait()
                if next_full:
                    full, batch = True, list(next_rows)
                else:
                    batch.extend(next_rows)
            await self._write(
                call,
                cluster_pb2.DataPlaneMessage(
                    health=cluster_pb2.HealthReport(
                        full=full,
                        addresses=address_health(batch),
                        # Read now, not when queued: the set as it is when sent.
                        panic_upstreams=health.panic_upstreams(),
                    )
                ),
            )

    def _handle_override(self, override: cluster_pb2.HealthOverride) -> None:
        if self._health is None:
            return
        if not self._health.override(
            override.upstream_id, override.target, override.address, override.healthy
        ):
            log.warning(
                "health override for unknown upstream %s target %s ignored",
                override.upstream_id, override.target,
            )

    async def _ping(self, call: grpc.aio.StreamStreamCall) -> None:
        while True:
            await asyncio.sleep(self._ping_interval)
            current = self._holder.current
            await self._write(call,
                cluster_pb2.DataPlaneMessage(
                    ping=cluster_pb2.Ping(
                        config_version=current.version if current else 0,
                        config_hash=current.hash if current else "",
                    )
                )
            )

    async def _handle_snapshot(
        self, call: grpc.aio.StreamStreamCall, snapshot: cluster_pb2.Snapshot
    ) -> None:
        try:
            installed = await self._installer.install_snapshot(snapshot, served=self._installed)
        except ConfigError as exc:
            await self._nack(call, snapshot.version, snapshot.hash, exc)
            return
        await self._ack(call, installed)

    async def _handle_delta(self, call: grpc.aio.StreamStreamCall, delta: cluster_pb2.Delta) -> None:
        try:
            installed = await self._installer.install_delta(delta, served=self._installed)
        except ConfigError as exc:
            await self._nack(call, delta.version, delta.hash, exc)
            return
        await self._ack(call, installed)

    def _installed(self) -> None:
        """The new config serves (called at the swap, before the disk cache and the ACK)."""
        self.state.last_config_at = time.time()
        self.state.last_nack = None

    async def _nack(
        self, call: grpc.aio.StreamStreamCall, version: int, digest: str, exc: ConfigError
    ) -> None:
        resync = isinstance(exc, DeltaDoesNotFit)
        if resync:
            log.warning("cannot apply the delta to version %d: %s; asking for the full config",
                        version, exc)
        else:
            self.state.last_nack = str(exc)
            log.error("rejected config version %d: %s", version, exc)
        await self._write(
            call,
            cluster_pb2.DataPlaneMessage(
                nack=cluster_pb2.Nack(
                    version=version, hash=digest, error_detail=str(exc), resync=resync
                )
            ),
        )

    async def _ack(self, call: grpc.aio.StreamStreamCall, snapshot: HeldConfig) -> None:
        await self._write(
            call,
            cluster_pb2.DataPlaneMessage(
                ack=cluster_pb2.Ack(version=snapshot.version, hash=snapshot.hash)
            ),
        )
