"""The one config installer of a data-plane process (Kong's ``config_helper.lua``).

Whatever brings a config — the cluster client (snapshots and deltas from the CP, the
disk cache at start) or a proxy worker (snapshots from its node) — hands it to a
:class:`ConfigInstaller`, which runs the whole sequence in one place:

1. **verify and compile** (immutable objects only): :func:`apply_snapshot` checks a snapshot's hash and
   compiles it; :func:`merge_delta` builds the config a delta leads to from the held
   one and checks its hash. A config that cannot be applied raises
   :class:`~data_plane.runtime.ConfigError` (:class:`DeltaDoesNotFit` when a delta
   does not fit what is held) and the previous config keeps serving;
2. **health checkers**: :func:`attach_checkers` gives each compiled upstream its
   live :class:`~data_plane.health.checker.HealthChecker`, the previous version's
   when nothing it depends on changed, else a new one that takes over the state of
   the addresses that stay (the compiled config holds no live object of its own);
3. **DNS**: ``TargetResolver.apply`` resolves new target names first, so the first
   requests balance over IPs;
4. **swap**: ``ConfigHolder.current = config`` (one reference assignment: a request
   sees the old or the new config, never a mix);
5. **health**: ``HealthSupervisor.apply`` starts the new checkers and stops the
   replaced ones;
6. **publish**: ``on_installed(snapshot)`` (a node with workers sends it to them);
7. **disk cache**: ``ConfigCache.save`` in a thread (temp file, fsync, rename).

Single event loop; one install at a time (the callers install in turn).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import TargetResolver
from data_plane.health.checker import HealthChecker
from data_plane.runtime import ConfigError, ConfigHolder, RuntimeConfig, compile_config
from ferry_shared.snapshot_format import KINDS, config_hash
from proto import cluster_pb2

if TYPE_CHECKING:  # the supervisor attaches checkers through this module
    from data_plane.health.supervisor import HealthSupervisor

__all__ = [
    "ConfigInstaller",
    "DecodedBodies",
    "DeltaDoesNotFit",
    "apply_snapshot",
    "attach_checkers",
    "merge_delta",
]

#: The cluster link's logger: what an install logs reads as it did before the move.
log = logging.getLogger("ferry.data_plane.cluster")


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

    ``decoded`` (see :func:`compile_resources`) saves decoding bodies an earlier
    compile decoded.
    """
    resources = [(r.kind, r.id, r.body) for r in snapshot.resources]
    digest = config_hash(resources)
    if digest != snapshot.hash:
        raise ConfigError(f"config hash mismatch: received {snapshot.hash!r}, computed {digest!r}")
    return compile_resources(snapshot.version, snapshot.hash, resources, previous, decoded)


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


def compile_resources(
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


def attach_checkers(config: RuntimeConfig, previous: RuntimeConfig | None) -> None:
    """Give every upstream of ``config`` that has none its health checker.

    The previous version's checker (with its probe loops) carries on when the
    upstream kept its balancer, settings, Host and target ids; otherwise a new
    checker takes over the counters and states of the addresses that stay. Call it
    before ``config`` serves. Idempotent; does no I/O and starts nothing (the
    health supervisor starts and stops the probe loops).
    """
    for upstream in config.upstreams.values():
        if upstream.health is not None:
            continue
        old = previous.upstreams.get(upstream.id) if previous is not None else None
        old_health = old.health if old is not None else None
        settings = upstream.health_settings
        if (
            old_health is not None
            and old_health.balancer is upstream.balancer
            and old_health.settings == settings
            and old_health.host_header == upstream.host_name
            and old_health.target_ids == upstream.target_ids
        ):
            upstream.attach_health(old_health)
            continue
        upstream.attach_health(
            HealthChecker(
                upstream.id,
                settings,
                upstream.balancer,
                target_ids=upstream.target_ids,
                host_header=upstream.host_name,
                previous=old_health,
                clock=upstream.balancer.options.clock,
            )
        )


class ConfigInstaller:
    """Compiles and installs the configs of one data-plane process (node or worker).

    ``cache`` (``None`` in a worker) is written after each install from the wire;
    ``resolver`` and ``health`` are the process's DNS resolver and health supervisor;
    ``on_installed`` is called with each snapshot once it serves (from the cache
    too), after the health checkers of its config started.
    """

    def __init__(
        self,
        holder: ConfigHolder,
        cache: ConfigCache | None = None,
        *,
        resolver: TargetResolver | None = None,
        dns_timeout: float = 2.0,
        health: HealthSupervisor | None = None,
        on_installed: Callable[[cluster_pb2.Snapshot], None] | None = None,
    ) -> None:
        self.holder = holder
        self.cache = cache
        self.resolver = resolver
        self.health = health
        self.on_installed = on_installed
        self._dns_timeout = dns_timeout
        #: The whole config being served, as received (the base of the next delta).
        self._held: cluster_pb2.Snapshot | None = None
        #: The bodies of the last config compiled here, decoded (see ``compile_resources``).
        self._decoded: DecodedBodies = {}

    async def load_cache(self) -> bool:
        """Serve the disk cache's config; False when there is none usable (reported)."""
        if self.cache is None:
            return False
        cached = await asyncio.to_thread(self.cache.load)  # reports an unusable file
        if cached is None:
            return False
        try:
            config = apply_snapshot(cached, None, self._decoded)
        except ConfigError as exc:
            await asyncio.to_thread(
                self.cache.reject, f"this data plane cannot apply the config it holds: {exc}"
            )
            return False
        await self._install(cached, config, save=False)
        log.info("serving cached config version %d until the control plane answers", cached.version)
        return True

    async def install_snapshot(self, snapshot: cluster_pb2.Snapshot) -> cluster_pb2.Snapshot:
        """Verify, compile and serve a whole config; raises :class:`ConfigError`."""
        config = apply_snapshot(snapshot, self.holder.current, self._decoded)
        await self._install(snapshot, config)
        return snapshot

    async def install_delta(self, delta: cluster_pb2.Delta) -> cluster_pb2.Snapshot:
        """Serve the config ``delta`` leads to from the held one; returns that config.

        Raises :class:`DeltaDoesNotFit` (ask for the full config) or :class:`ConfigError`.
        """
        merged = merge_delta(self._held, delta)
        config = compile_resources(
            merged.version,
            merged.hash,
            [(r.kind, r.id, r.body) for r in merged.resources],
            self.holder.current,
            self._decoded,
        )
        await self._install(merged, config)
        return merged

    async def _install(
        self, snapshot: cluster_pb2.Snapshot, config: RuntimeConfig, *, save: bool = True
    ) -> None:
        """Serve ``config`` (compiled from ``snapshot``) and, with ``save``, cache it on disk."""
        attach_checkers(config, self.holder.current)
        if self.resolver is not None:
            # Resolve new target names first so the first requests balance over IPs.
            await self.resolver.apply(config, timeout=self._dns_timeout)
        self.holder.current = config
        self._held = snapshot
        if self.health is not None:
            self.health.apply(config)
        if self.on_installed is not None:
            self.on_installed(snapshot)
        if not save or self.cache is None:
            return
        try:
            await asyncio.to_thread(self.cache.save, snapshot)
        except OSError as exc:
            # Serving the new config matters more than caching it; say so loudly.
            log.error("could not write the config cache %s: %s", self.cache.path, exc)
        log.info("applied config version %d (%s)", snapshot.version, snapshot.hash[:12])
