"""The one config installer of a data-plane process (Kong's ``config_helper.lua``).

Whatever brings a config — the cluster client (snapshots and deltas from the CP, the
disk cache at start) or a proxy worker (snapshots from its node) — hands it to a
:class:`ConfigInstaller`, which runs the whole sequence in one place:

1. **verify and compile** (immutable objects only): a snapshot's hash is checked and
   the whole config compiled; a delta is merged onto the held config
   (:class:`~data_plane.held_config.HeldConfig`: one sha256 pass over the kept hash
   records, nothing re-encoded) and only what it touches is decoded and recompiled
   (:func:`~data_plane.incremental_compile.compile_change`: untouched upstreams,
   services, routes and the router stay the very same objects). A config that cannot
   be applied raises :class:`~data_plane.runtime.ConfigError` (:class:`DeltaDoesNotFit`
   when a delta does not fit what is held, or its result does not hash to what the
   control plane says) and the previous config keeps serving;
2. **health checkers**: :func:`attach_checkers` gives each compiled upstream its
   live :class:`~data_plane.health.checker.HealthChecker`, the previous version's
   when nothing it depends on changed, else a new one that takes over the state of
   the addresses that stay (the compiled config holds no live object of its own);
3. **DNS**: ``TargetResolver.apply`` resolves new target names first, so the first
   requests balance over IPs;
4. **swap**: ``ConfigHolder.current = config`` (one reference assignment: a request
   sees the old or the new config, never a mix); then the caller's ``served``
   callback (the cluster client records the time);
5. **health**: ``HealthSupervisor.apply`` starts the new checkers and stops the
   replaced ones;
6. **publish**: ``on_installed(held)`` (a node with workers sends the whole config
   to them);
7. **disk cache**: ``ConfigCache.save_encoded`` in a thread (temp file, fsync,
   rename, fsync of the directory), started when the install returns and not
   awaited by it.

Durability: the cache file is always whole (the old one or the new one). An
install returns (and the cluster client ACKs) once the config *serves*; the cache
follows :data:`CACHE_SAVE_DELAY` later, one save at a time, the newest config then
(a burst of changes is written once: the configs replaced before their turn are
skipped). A process that dies in between restarts on the previous cached config
and says so in its ``Hello``: the control plane sends it what it lacks, as after
any restart. Waiting for the fsync before the ACK would tell the control plane
nothing it relies on, and made every install as slow as the disk; saving each
config at once cost every data plane about 0.7 ms of CPU per change (encoding,
write, fsync), while ten data planes on two cores were still applying it.
:meth:`ConfigInstaller.flush` writes the pending save at once and waits for it
(shutdown, tests).

Single event loop; one install at a time (the callers install in turn).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import TargetResolver
from data_plane.health.checker import HealthChecker
from data_plane.held_config import DeltaDoesNotFit, HeldConfig, Key
from data_plane.incremental_compile import CompiledState, compile_all, compile_change
from data_plane.runtime import ConfigError, ConfigHolder, RuntimeConfig, compile_config
from ferry_shared.linger import Linger
from ferry_shared.snapshot_format import KINDS, config_hash
from proto import cluster_pb2

if TYPE_CHECKING:  # the supervisor attaches checkers through this module
    from data_plane.health.supervisor import HealthSupervisor

__all__ = [
    "ConfigInstaller",
    "DecodedBodies",
    "DeltaDoesNotFit",
    "HeldConfig",
    "apply_snapshot",
    "attach_checkers",
    "merge_delta",
]

#: The cluster link's logger: what an install logs reads as it did before the move.
#: Seconds the disk-cache save waits after an install (see Durability above).
CACHE_SAVE_DELAY = 1.0

log = logging.getLogger("ferry.data_plane.cluster")


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
    """The whole config ``delta`` leads to from ``held``, hash verified (resources sorted).

    Raises :class:`DeltaDoesNotFit` when ``held`` is not the delta's base or the
    result does not hash to ``delta.hash``; ``held`` is never modified. (The
    installer merges onto its :class:`HeldConfig` instead, which keeps what makes
    the next merge cheap.)
    """
    if held is None:
        raise DeltaDoesNotFit(
            f"delta from version {delta.from_version} does not apply: this data plane holds no config"
        )
    base, _ = HeldConfig.from_snapshot(held)
    return base.merge(delta)[0].snapshot()


def _decode(kind: str, entity_id: str, body: bytes) -> dict[str, Any]:
    if kind not in KINDS:
        raise ConfigError(f"unknown entity kind {kind!r} (id {entity_id})")
    try:
        entity = json.loads(body)
    except ValueError as exc:
        raise ConfigError(f"{kind} {entity_id}: body is not JSON: {exc}") from None
    if not isinstance(entity, dict):
        raise ConfigError(f"{kind} {entity_id}: body is not a JSON object")
    return entity


def compile_snapshot(
    snapshot: cluster_pb2.Snapshot,
    held: HeldConfig,
    serving: RuntimeConfig | None,
    previous: CompiledState | None = None,
    previous_held: HeldConfig | None = None,
) -> CompiledState:
    """Decode and compile the whole of ``snapshot`` (verified; ``held`` is its held form).

    ``serving`` is the config that serves now (balancers and budgets are reused or
    seeded from its). Bodies equal to ``previous_held``'s are not decoded again
    (``previous``'s entities are shared: the compile only reads them). Entities
    compile in the snapshot's order; a snapshot listing a key twice compiles what
    it listed.
    """
    entities: dict[str, dict[str, Mapping[str, Any]]] = {kind: {} for kind in KINDS}
    reuse = previous is not None and previous_held is not None
    listed: dict[str, list[Mapping[str, Any]]] | None = (
        {kind: [] for kind in KINDS} if held.listed_twice else None
    )
    for resource in snapshot.resources:
        kind, entity_id, body = resource.kind, resource.id, resource.body
        entity: Mapping[str, Any] | None = None
        if reuse and previous_held.body((kind, entity_id)) == body:  # type: ignore[union-attr]
            entity = previous.entities.get(kind, {}).get(entity_id)  # type: ignore[union-attr]
        if entity is None:
            entity = _decode(kind, entity_id, body)
        entities[kind][entity_id] = entity
        if listed is not None:
            listed[kind].append(entity)
    return compile_all(held.version, held.hash, entities, serving, listed=listed)


def compile_delta(
    state: CompiledState, merged: HeldConfig, changes: dict[Key, bytes | None]
) -> CompiledState:
    """Decode what ``changes`` brought and recompile only what it touches."""
    decoded = {
        key: None if body is None else _decode(key[0], key[1], body) for key, body in changes.items()
    }
    return compile_change(state, merged.version, merged.hash, decoded)


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
            entity = _decode(kind, entity_id, body)
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
    ``on_installed`` is called with each config (:class:`HeldConfig`: ``version``,
    ``hash``, ``snapshot()``) once it serves (from the cache too), after the health
    checkers of its config started.
    """

    def __init__(
        self,
        holder: ConfigHolder,
        cache: ConfigCache | None = None,
        *,
        resolver: TargetResolver | None = None,
        dns_timeout: float = 2.0,
        health: HealthSupervisor | None = None,
        on_installed: Callable[[HeldConfig], None] | None = None,
        cache_save_delay: float = CACHE_SAVE_DELAY,
    ) -> None:
        """``cache_save_delay``: seconds a disk-cache save waits after an install
        before it writes (the newest config then), so a burst of changes is written
        once (see the module's Durability note)."""
        self.holder = holder
        self.cache = cache
        self.resolver = resolver
        self.health = health
        self.on_installed = on_installed
        self._dns_timeout = dns_timeout
        #: The whole config being served, as received (the base of the next delta).
        self._held: HeldConfig | None = None
        #: Its compiled form and indexes (the base of the next incremental compile).
        self._state: CompiledState | None = None
        #: The config the disk cache is to hold next, and the task writing it.
        self._unsaved: HeldConfig | None = None
        self._saving: asyncio.Task[None] | None = None
        self._cache_linger = Linger(cache_save_delay)

    async def load_cache(self) -> bool:
        """Serve the disk cache's config; False when there is none usable (reported)."""
        if self.cache is None:
            return False
        cached = await asyncio.to_thread(self.cache.load)  # reports an unusable file
        if cached is None:
            return False
        try:
            held, state = self._compile_snapshot(cached)
        except ConfigError as exc:
            await asyncio.to_thread(
                self.cache.reject, f"this data plane cannot apply the config it holds: {exc}"
            )
            return False
        await self._install(held, state, save=False)
        log.info("serving cached config version %d until the control plane answers", cached.version)
        return True

    def _compile_snapshot(self, snapshot: cluster_pb2.Snapshot) -> tuple[HeldConfig, CompiledState]:
        held, verified = HeldConfig.from_snapshot(snapshot)
        if not verified:
            digest = config_hash((r.kind, r.id, r.body) for r in snapshot.resources)
            raise ConfigError(
                f"config hash mismatch: received {snapshot.hash!r}, computed {digest!r}"
            )
        state = self._state if self._state_serves() else None
        previous_held = self._held if state is not None else None
        return held, compile_snapshot(snapshot, held, self.holder.current, state, previous_held)

    def _state_serves(self) -> bool:
        """Whether the held state is what serves (nothing else set ``holder.current``)."""
        return self._state is not None and self._state.config is self.holder.current

    async def install_snapshot(
        self, snapshot: cluster_pb2.Snapshot, served: Callable[[], None] | None = None
    ) -> HeldConfig:
        """Verify, compile and serve a whole config; raises :class:`ConfigError`.

        ``served`` is called as soon as the config serves (before the disk cache is
        written); returns the config as held.
        """
        held, state = self._compile_snapshot(snapshot)
        await self._install(held, state, served=served)
        return held

    async def install_delta(
        self, delta: cluster_pb2.Delta, served: Callable[[], None] | None = None
    ) -> HeldConfig:
        """Serve the config ``delta`` leads to from the held one; returns that config.

        Only what the delta changed is decoded and recompiled. Raises
        :class:`DeltaDoesNotFit` (ask for the full config) or :class:`ConfigError`;
        ``served`` as for :meth:`install_snapshot`.
        """
        if self._held is None:
            raise DeltaDoesNotFit(
                f"delta from version {delta.from_version} does not apply: "
                "this data plane holds no config"
            )
        merged, changes = self._held.merge(delta)
        state = self._state
        if state is None:
            raise DeltaDoesNotFit("no compiled config to apply a delta to")
        if not self._state_serves():
            # Something else set what serves: compile the whole config against it.
            state = compile_snapshot(merged.snapshot(), merged, self.holder.current)
        else:
            state = compile_delta(state, merged, changes)
        await self._install(merged, state, served=served)
        return merged

    async def _install(
        self,
        held: HeldConfig,
        state: CompiledState,
        *,
        save: bool = True,
        served: Callable[[], None] | None = None,
    ) -> None:
        """Serve ``state``'s config (compiled from ``held``) and, with ``save``, cache it on disk."""
        config = state.config
        previous = self.holder.current
        attach_checkers(config, previous)
        if self.resolver is not None:
            # Resolve new target names first so the first requests balance over IPs.
            await self.resolver.apply(config, timeout=self._dns_timeout)
        self.holder.current = config
        self._held, self._state = held, state
        if served is not None:
            served()
        if self.health is not None:
            self.health.apply(config)
        if self.on_installed is not None:
            self.on_installed(held)
        if not save or self.cache is None:
            return
        log.info("applied config version %d (%s)", held.version, held.hash[:12])
        self._unsaved = held
        if self._saving is None or self._saving.done():
            self._saving = asyncio.create_task(self._save_pending(self.cache), name="ferry-config-cache")

    async def _save_pending(self, cache: ConfigCache) -> None:
        while self._unsaved is not None:
            await self._cache_linger.wait()
            held, self._unsaved = self._unsaved, None
            try:
                await asyncio.to_thread(_save, cache, held)
            except OSError as exc:
                # Serving the new config matters more than caching it; say so loudly.
                log.error("could not write the config cache %s: %s", cache.path, exc)

    async def flush(self) -> None:
        """Wait until the disk cache holds the last config installed from the wire
        (or its write failed, which is logged). Cancelling the caller leaves the
        write running."""
        await self._cache_linger.flush(lambda: self._saving)


def _save(cache: ConfigCache, held: HeldConfig) -> None:
    """Write ``held`` to the disk cache, then encode what the next delta's save joins
    (in the cache's thread: off the event loop. Should a delta need them first, the
    loop encodes them too; the results are equal and either may be kept)."""
    cache.save_encoded(held.encoded())
    held.prepare()
