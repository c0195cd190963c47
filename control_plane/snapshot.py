"""Versioned, immutable config snapshots and the store that hands them out.

Modelled on go-control-plane's ``pkg/cache/v3``: the store keeps the latest
:class:`Snapshot`; a watcher says which version it holds and is woken only when
the store's version differs. The store knows nothing of Redis or gRPC: the
:mod:`control_plane.config_follower` feeds it, the cluster servicer reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ferry.snapshot_format import KINDS, canonical_json, config_hash


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
    #: :func:`control_plane.cluster_server.snapshot_message`).
    wire_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


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


class SnapshotStore:
    """Holds the latest snapshot and wakes watchers when its version changes.

    Single event loop; not thread-safe. Versions only move forward: a snapshot
    older than the current one (a slow reload racing a fast one) is ignored.
    """

    def __init__(self) -> None:
        self._current: Snapshot | None = None
        self._changed = asyncio.Event()

    @property
    def current(self) -> Snapshot | None:
        return self._current

    def set(self, snapshot: Snapshot) -> bool:
        """Publish ``snapshot``; returns False (and changes nothing) when it is not newer."""
        current = self._current
        if current is not None and (
            snapshot.version < current.version
            or (snapshot.version == current.version and snapshot.hash == current.hash)
        ):
            return False
        self._current = snapshot
        # Wake every watcher, then arm a fresh event for the next change.
        self._changed.set()
        self._changed = asyncio.Event()
        return True

    async def wait_for_change(self, known_version: int, known_hash: str = "") -> Snapshot:
        """Return the current snapshot as soon as it differs from ``known_version``/``known_hash``."""
        while True:
            current = self._current
            # A DP that holds nothing says hash "", which no snapshot has.
            if current is not None and (current.version, current.hash) != (known_version, known_hash):
                return current
            await self._changed.wait()
