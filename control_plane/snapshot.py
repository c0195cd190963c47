"""Versioned, immutable config snapshots and the store that hands them out.

Modelled on go-control-plane's ``pkg/cache/v3``: the store keeps the latest
:class:`Snapshot`; a watcher says which version it holds and is woken only when
the store's version differs. The store knows nothing of Redis or gRPC: the
:mod:`control_plane.config_follower` feeds it, the cluster servicer reads it.

Deltas: alongside the current snapshot the store keeps a change log, the
entity keys each version changed, for a contiguous run of versions ending at
the current one. A data plane holding a version inside that run gets a
:class:`Delta` (the current bodies of the changed entities, and the keys of
those that are gone) instead of the whole config. The log is bounded
(``history`` versions); a version older than its start, a version the store
never saw, or a delta as large as the config itself means a full snapshot.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ferry_shared.snapshot_format import KINDS, canonical_json, config_hash


@dataclass(frozen=True, slots=True)
class Resource:
    """One entity as it travels to data planes: canonical JSON ``body``."""

    kind: str
    id: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The whole config at one version. Immutable; share it freely across tasks."""

    version: int
    hash: str
    resources: tuple[Resource, ...]
    #: Lazily built wire form, cached so N streams serialise it once (see
    #: :func:`control_plane.cluster_server.snapshot_bytes`).
    wire_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Change:
    """One changed entity of one version, as the change stream records it."""

    version: int
    kind: str
    id: str


@dataclass(frozen=True, slots=True)
class Delta:
    """The change from ``from_version`` to ``snapshot``: immutable, shared by streams."""

    from_version: int
    #: The hash of the config at ``from_version`` when this store published it, else "".
    from_hash: str
    snapshot: Snapshot
    upserts: tuple[Resource, ...]
    removals: tuple[tuple[str, str], ...]
    wire_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


#: How many versions of change history the store keeps for deltas.
DEFAULT_HISTORY = 10_000


def build_snapshot(version: int, entities: Mapping[str, Sequence[Mapping[str, Any]]]) -> Snapshot:
    """Encode ``entities`` (kind → list of entity dicts) canonically and hash them.

    Resources are ordered by kind (dependency order) then id, so equal configs
    produce byte-identical snapshots on every control plane.
    """
    resources: list[Resource] = []
    for kind in KINDS:
        for entity in sorted(entities.get(kind, ()), key=lambda e: str(e["id"])):
            resources.append(Resource(kind, str(entity["id"]), canonical_json(dict(entity))))
    digest = config_hash((r.kind, r.id, r.body) for r in resources)
    return Snapshot(version=version, hash=digest, resources=tuple(resources))


class SnapshotBuilder:
    """Builds snapshots from the entities' stored JSON texts, encoding only what changed.

    Every reload reads every entity again, but an entity whose stored text is the
    one seen by the previous build keeps that build's :class:`Resource`: with
    10 000 targets, decoding and canonically re-encoding the unchanged entities
    was most of the time from a write to its snapshot. The result equals
    :func:`build_snapshot` of the decoded entities. One builder per follower;
    it remembers the texts of its last build only.
    """

    def __init__(self) -> None:
        self._known: dict[tuple[str, str | bytes], Resource] = {}

    def build(self, version: int, texts: Mapping[str, Iterable[str | bytes]]) -> Snapshot:
        known = self._known
        fresh: dict[tuple[str, str | bytes], Resource] = {}
        resources: list[Resource] = []
        for kind in KINDS:
            of_kind: list[Resource] = []
            for text in texts.get(kind, ()):
                key = (kind, text)
                resource = known.get(key)
                if resource is None:
                    entity = json.loads(text)
                    resource = Resource(kind, str(entity["id"]), canonical_json(entity))
                fresh[key] = resource
                of_kind.append(resource)
            of_kind.sort(key=lambda r: r.id)
            resources.extend(of_kind)
        self._known = fresh
        digest = config_hash((r.kind, r.id, r.body) for r in resources)
        return Snapshot(version=version, hash=digest, resources=tuple(resources))


class SnapshotStore:
    """Holds the latest snapshot and its change log; wakes watchers on a new version.

    Single event loop; not thread-safe. Versions only move forward: a snapshot
    older than the current one (a slow reload racing a fast one) is ignored.
    """

    def __init__(self, *, history: int = DEFAULT_HISTORY, delta_cache: int = 64) -> None:
        self._current: Snapshot | None = None
        self._changed = asyncio.Event()
        self._history = history
        #: version -> keys it changed, for every version in [_log_start, current].
        self._log: OrderedDict[int, set[tuple[str, str]]] = OrderedDict()
        #: The oldest version whose changes are all in the log; None = no history.
        self._log_start: int | None = None
        #: (from_version, to_version) -> Delta, so N DPs at one version share one.
        self._deltas: OrderedDict[tuple[int, int], Delta] = OrderedDict()
        self._delta_cache = delta_cache
        #: version -> hash of the snapshots published here (the last ``history``).
        self._hashes: OrderedDict[int, str] = OrderedDict()

    @property
    def current(self) -> Snapshot | None:
        return self._current

    def set(
        self, snapshot: Snapshot, changes: Iterable[Change] = (), *, since: int | None = None
    ) -> bool:
        """Publish ``snapshot``; returns False (and changes nothing) when it is not newer.

        ``changes`` are every change of the versions after ``since`` up to
        ``snapshot.version`` (the change stream's entries); ``since`` None means
        they are unknown, and the log restarts at ``snapshot``. When ``since`` is
        the current version the log grows; otherwise it is replaced, starting
        after ``since``.
        """
        current = self._current
        if current is not None and (
            snapshot.version < current.version
            or (snapshot.version == current.version and snapshot.hash == current.hash)
        ):
            return False
        self._record(snapshot.version, changes, since)
        self._current = snapshot
        self._hashes[snapshot.version] = snapshot.hash
        self._hashes.move_to_end(snapshot.version)
        while len(self._hashes) > self._history:
            self._hashes.popitem(last=False)
        # Wake every watcher, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    def _record(self, version: int, changes: Iterable[Change], since: int | None) -> None:
        current = self._current
        contiguous = (
            since is not None
            and current is not None
            and since == current.version
            and self._log_start is not None
        )
        if not contiguous:
            self._log.clear()
            self._deltas.clear()
            self._log_start = None if since is None else since + 1
        if self._log_start is None:
            # Nothing known before this snapshot: deltas start from it.
            self._log_start = version + 1
            return
        for change in changes:
            if self._log_start <= change.version <= version:
                self._log.setdefault(change.version, set()).add((change.kind, change.id))
        while len(self._log) > self._history:
            dropped, _ = self._log.popitem(last=False)
            self._log_start = max(self._log_start, dropped + 1)

    def delta(self, from_version: int, from_hash: str = "") -> Delta | None:
        """The change from ``from_version`` to the current snapshot, or None for a full one.

        None when ``from_version`` is 0 (a new DP), outside the change log, not
        older than the current version, when this store published that version
        with another hash than ``from_hash`` (the DP's config came from elsewhere),
        or when the delta would carry at least as many entities as the whole
        config (far behind).
        """
        current = self._current
        known_hash = self._hashes.get(from_version, "")
        if (
            current is None
            or from_version <= 0
            or (known_hash and from_hash and known_hash != from_hash)
            or from_version >= current.version
            or self._log_start is None
            or from_version + 1 < self._log_start
        ):
            return None
        key = (from_version, current.version)
        cached = self._deltas.get(key)
        if cached is not None and cached.snapshot is current:
            return cached
        changed: set[tuple[str, str]] = set()
        for version in range(from_version + 1, current.version + 1):
            changed |= self._log.get(version, set())
        if len(changed) >= max(1, len(current.resources)):
            return None
        by_key = current.wire_cache.get("by_key")
        if by_key is None:
            by_key = {(r.kind, r.id): r for r in current.resources}
            current.wire_cache["by_key"] = by_key
        upserts = tuple(by_key[k] for k in sorted(changed) if k in by_key)
        removals = tuple(k for k in sorted(changed) if k not in by_key)
        delta = Delta(from_version, known_hash, current, upserts, removals)
        self._deltas[key] = delta
        while len(self._deltas) > self._delta_cache:
            self._deltas.popitem(last=False)
        return delta

    async def wait_for_change(self, known_version: int, known_hash: str = "") -> Snapshot:
        """Return the current snapshot as soon as it differs from ``known_version``/``known_hash``."""
        while True:
            current = self._current
            # A DP that holds nothing says hash "", which no snapshot has.
            if current is not None and (current.version, current.hash) != (known_version, known_hash):
                return current
            await self._changed.wait()
