"""The data plane's end of the cluster link.

Opens ``Cluster.Connect``, says ``Hello`` with the version/hash it holds, and
for every snapshot or delta received: builds the whole new config (a delta is
applied to a copy of the held one), verifies its hash, compiles it, swaps it
into the :class:`~data_plane.runtime.ConfigHolder` (one reference assignment,
so a request sees the old or the new config, never a mix), writes it to the
disk cache and ACKs. A config it cannot apply is NACKed with the reason and the
previous config keeps serving; a delta that does not fit what it holds is
NACKed with ``resync`` so the CP sends the full snapshot. Reconnects with
jittered exponential backoff (tenacity) so many DPs returning after a CP
restart do not arrive at once. Keep-alive: pings every ``ping_interval``
seconds and ends a stream on which nothing arrived for 1.5 intervals.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import TargetResolver
from data_plane.health_messages import address_health, verdict_rows
from data_plane.health_supervisor import HealthSupervisor
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigError, ConfigHolder, RuntimeConfig, compile_config
from ferry.cluster_link import DEFAULT_PING_INTERVAL, SILENCE_FACTOR, require_secured_link
from ferry.cluster_tls import ClusterTLS, explain_link_failure, open_channel
from ferry.snapshot_format import KINDS, config_hash
from proto import cluster_pb2, cluster_pb2_grpc

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


class DeltaDoesNotFit(ConfigError):
    """A delta whose base is not the held config, or whose result has another hash."""




#: Entity bodies (canonical JSON) → their decoded dicts, as a compile left them.
DecodedBodies = dict[bytes, dict[str, Any]]


def apply_snapshot(
    snapshot: cluster_pb2.Snapshot,
    previous: RuntimeConfig | None,
    decoded: DecodedBodies | None = None,
) -> RuntimeConfig:
    """Verify and compile ``snapshot``; raise :class:`ConfigError` when it cannot be applied.

    ``decoded`` (see :func:`_compile`) saves decoding bodies an earlier compile decoded.
    """
    resources = [(r.kind, r.id, r.body) for r in snapshot.resources]
    digest = config_hash(resources)
    if digest != snapshot.hash:
        raise ConfigError(f"config hash mismatch: received {snapshot.hash!r}, computed {digest!r}")
    return _compile(snapshot.version, snapshot.hash, resources, previous, decoded)


def merge_delta(held: cluster_pb2.Snapshot | None, delta: cluster_pb2.Delta) -> cluster_pb2.Snapshot:
    """The whole config ``delta`` leads to from ``held``, hash verified.

    Raises :class:`DeltaDoesNotFit` when ``held`` is not the delta's base or the
    result does not hash to ``delta.hash``; ``held`` is never modified.
    """
    if held is None or held.version != delta.from_version:
        holding = f"version {held.version}" if held is not None else "no config"
        raise DeltaDoesNotFit(
            f"delta from version {delta.from_version} does not apply: this data plane holds {holding}"
        )
    if delta.from_hash and delta.from_hash != held.hash:
        raise DeltaDoesNotFit(
            f"delta from version {delta.from_version} is based on config {delta.from_hash[:12]}, "
            f"this data plane holds {held.hash[:12]}"
        )
    merged: dict[tuple[str, str], bytes] = {(r.kind, r.id): r.body for r in held.resources}
    for key in delta.removals:
        merged.pop((key.kind, key.id), None)
    for resource in delta.upserts:
        merged[(resource.kind, resource.id)] = resource.body
    digest = config_hash((kind, entity_id, body) for (kind, entity_id), body in merged.items())
    if digest != delta.hash:
        raise DeltaDoesNotFit(
            f"config after the delta to version {delta.version} hashes to {digest[:12]}, "
            f"expected {delta.hash[:12]}"
        )
    return cluster_pb2.Snapshot(
        version=delta.version,
        hash=delta.hash,
        resources=[
            cluster_pb2.Resource(kind=kind, id=entity_id, body=body)
            for (kind, entity_id), body in sorted(merged.items())
        ],
    )


def _compile(
    version: int,
    digest: str,
    resources: list[tuple[str, str, bytes]],
    previous: RuntimeConfig | None,
    decoded: DecodedBodies | None = None,
) -> RuntimeConfig:
    """Decode the bodies and compile them.

    With ``decoded`` (the bodies the previous compile decoded), a body seen then is
    not decoded again — a one-target delta to a 10 000-target config decoded every
    entity — and ``decoded`` is left holding this compile's bodies only, so it does
    not grow. ``compile_config`` only reads the entity dicts, which makes sharing
    them between configs safe.
    """
    entities: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    known = decoded if decoded is not None else {}
    fresh: DecodedBodies = {}
    for kind, entity_id, body in resources:
        if kind not in entities:
            raise ConfigError(f"unknown entity kind {kind!r} (id {entity_id})")
        entity = known.get(body)
        if entity is None:
            try:
                entity = json.loads(body)
            except ValueError as exc:
                raise ConfigError(f"{kind} {entity_id}: body is not JSON: {exc}") from None
            if not isinstance(entity, dict):
                raise ConfigError(f"{kind} {entity_id}: body is not a JSON object")
        fresh[body] = entity
        entities[kind].append(entity)
    config = compile_config(version, digest, entities, previous=previous)
    if decoded is not None:
        decoded.clear()
        decoded.update(fresh)
    return config


class ClusterClient:
    """Keeps one stream to the CP open for the DP's lifetime. Run :meth:`run` as a task."""

    def __init__(
        self,
        control_plane: str,
        holder: ConfigHolder,
        cache: ConfigCache,
        node: NodeIdentity,
        *,
        insecure: bool,
        tls: ClusterTLS | None = None,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        on_applied: Callable[[RuntimeConfig], None] | None = None,
        resolver: TargetResolver | None = None,
        dns_timeout: float = 2.0,
        health: HealthSupervisor | None = None,
        on_installed: Callable[[cluster_pb2.Snapshot], None] | None = None,
    ) -> None:
        """``on_installed`` is called with each snapshot once it serves (from the
        cache too), after the health checkers of its config started."""
        require_secured_link(insecure, tls)
        self._tls = tls
        self._target = control_plane
        self._holder = holder
        self._cache = cache
        self._node = node
        self._ping_interval = ping_interval
        self._backoff_base = backoff_base
        self._backoff_max = backoff_max
        self._on_applied = on_applied
        self._resolver = resolver
        self._dns_timeout = dns_timeout
        self._health = health
        self._on_installed = on_installed
        #: gRPC aio allows one write in progress per call: pings, ACKs and health
        #: reports take turns.
        self._write_lock = asyncio.Lock()
        self.state = ClusterLinkState()
        #: The whole config being served, as received (the base of the next delta).
        self._held: cluster_pb2.Snapshot | None = None
        #: The bodies of the last config compiled here, decoded (see ``_compile``).
        self._decoded: DecodedBodies = {}

    async def load_cache(self) -> bool:
        """Serve the disk cache's config until a CP answers; False when there is none usable.

        Call once, before :meth:`run`.
        """
        cached = await asyncio.to_thread(self._cache.load)  # reports an unusable file
        if cached is None:
            return False
        try:
            config = apply_snapshot(cached, None, self._decoded)
        except ConfigError as exc:
            await asyncio.to_thread(
                self._cache.reject, f"this data plane cannot apply the config it holds: {exc}"
            )
            return False
        await self._install(cached, config, save=False)
        log.info("serving cached config version %d until the control plane answers", cached.version)
        return True

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
            config = apply_snapshot(snapshot, self._holder.current, self._decoded)
        except ConfigError as exc:
            await self._nack(call, snapshot.version, snapshot.hash, exc)
            return
        await self._install(snapshot, config)
        await self._ack(call, snapshot)

    async def _handle_delta(self, call: grpc.aio.StreamStreamCall, delta: cluster_pb2.Delta) -> None:
        try:
            merged = merge_delta(self._held, delta)
            config = _compile(
                merged.version,
                merged.hash,
                [(r.kind, r.id, r.body) for r in merged.resources],
                self._holder.current,
                self._decoded,
            )
        except ConfigError as exc:
            await self._nack(call, delta.version, delta.hash, exc)
            return
        await self._install(merged, config)
        await self._ack(call, merged)

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

    async def _install(
        self, snapshot: cluster_pb2.Snapshot, config: RuntimeConfig, *, save: bool = True
    ) -> None:
        """Serve ``config`` (compiled from ``snapshot``) and, with ``save``, cache it on disk."""
        if self._resolver is not None:
            # Resolve new target names first so the first requests balance over IPs.
            await self._resolver.apply(config, timeout=self._dns_timeout)
        self._holder.current = config
        self._held = snapshot
        if self._health is not None:
            self._health.apply(config)
        if self._on_installed is not None:
            self._on_installed(snapshot)
        if not save:
            return
        self.state.last_config_at = time.time()
        self.state.last_nack = None
        if self._on_applied is not None:
            self._on_applied(config)
        try:
            await asyncio.to_thread(self._cache.save, snapshot)
        except OSError as exc:
            # Serving the new config matters more than caching it; say so loudly.
            log.error("could not write the config cache %s: %s", self._cache.path, exc)
        log.info("applied config version %d (%s)", snapshot.version, snapshot.hash[:12])

    async def _ack(self, call: grpc.aio.StreamStreamCall, snapshot: cluster_pb2.Snapshot) -> None:
        await self._write(
            call,
            cluster_pb2.DataPlaneMessage(
                ack=cluster_pb2.Ack(version=snapshot.version, hash=snapshot.hash)
            ),
        )
