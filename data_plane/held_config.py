"""The config a data plane holds, as the control plane sent it: the base of the next delta.

:class:`HeldConfig` keeps each resource's body by ``(kind, id)`` together with the
two encodings a change needs, so that a one-entity delta to a 10 000-entity config
costs a few milliseconds instead of a rebuild of everything:

- its **hash record** (``kind \\0 id \\0 body \\n``, exactly what
  :func:`ferry_shared.snapshot_format.config_hash` feeds sha256 for it), in key order,
  with the sha256 state after every :data:`HASH_BLOCK` records: a delta's result is
  verified by resuming from the last state before its first change (on average
  half a pass over 3.7 MB instead of re-encoding everything) — the hash
  definition is unchanged;
- its **wire record** (the resource as a ``Snapshot.resources`` field, protobuf
  bytes): the disk cache and the worker hub get the serialized whole config by
  joining them, byte for byte what ``Snapshot.SerializeToString`` gives for the
  merged config (resources sorted by kind, then id).

Immutable once built (the lazily computed wire records and message are caches
of pure functions of the content); a merge builds a new one that shares the
unchanged records. Not thread-safe to build lazily from two threads at once: the
installer computes the caches on the event loop or in the one thread it awaits.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Any

from data_plane.runtime import ConfigError
from ferry_shared.snapshot_format import config_hash
from proto import cluster_pb2

__all__ = ["DeltaDoesNotFit", "HeldConfig", "Key"]

#: ``(kind, id)`` of a resource.
Key = tuple[str, str]

#: Hash records between two kept sha256 states (about 40 KB of a typical config).
HASH_BLOCK = 128


def _hash_states(records: list[bytes], kept: list[Any], first: int) -> list[Any]:
    """The sha256 states after every :data:`HASH_BLOCK` records and after the last
    (``states[k]``: after ``records[:k * HASH_BLOCK]``; the last: after all of them),
    reusing ``kept[: first // HASH_BLOCK + 1]``, which must hash the same records
    up to ``first``."""
    block = first // HASH_BLOCK
    states = kept[: block + 1]
    state = states[block].copy()
    for begin in range(block * HASH_BLOCK, len(records), HASH_BLOCK):
        state.update(b"".join(records[begin : begin + HASH_BLOCK]))
        states.append(state.copy())
    if len(states) == 1:
        states.append(state)  # no records: the empty hash is the last state too
    return states


class DeltaDoesNotFit(ConfigError):
    """A delta whose base is not the held config, or whose result has another hash."""


def _hash_record(kind: str, entity_id: str, body: bytes) -> bytes:
    return b"".join((kind.encode(), b"\0", entity_id.encode(), b"\0", body, b"\n"))


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2) with field number ``tag``."""
    return bytes((tag << 3 | 2,)) + _varint(len(payload)) + payload


def _wire_record(kind: str, entity_id: str, body: bytes) -> bytes:
    """``Snapshot.resources`` (field 3) holding one ``Resource`` (kind 1, id 2, body 3),
    as protobuf serializes it (proto3: empty fields are left out)."""
    resource = b"".join(
        _field(tag, value)
        for tag, value in ((1, kind.encode()), (2, entity_id.encode()), (3, body))
        if value
    )
    return _field(3, resource)


class HeldConfig:
    """One config version's resources by key, with their hash and wire records."""

    __slots__ = ("version", "hash", "_bodies", "_keys", "_records", "_states", "_wire", "_snapshot")

    def __init__(
        self,
        version: int,
        digest: str,
        bodies: dict[Key, bytes],
        keys: list[Key],
        records: list[bytes],
        states: list[Any],
        wire: list[bytes] | None,
        snapshot: cluster_pb2.Snapshot | None = None,
    ) -> None:
        """Use :meth:`from_snapshot` or :meth:`merge`. ``keys`` are ``bodies``' keys,
        sorted; ``records`` and ``wire`` are in the same order; ``states`` as
        :func:`_hash_states` gives them."""
        self.version = version
        self.hash = digest
        self._bodies = bodies
        self._keys = keys
        self._records = records
        self._states = states
        #: Wire records in key order; ``None`` until first needed (a held snapshot).
        self._wire = wire
        #: The snapshot this config came as, when it came whole (then cached as sent).
        self._snapshot = snapshot

    @classmethod
    def from_snapshot(cls, snapshot: cluster_pb2.Snapshot) -> tuple[HeldConfig, bool]:
        """The held form of ``snapshot`` and whether its hash checks out.

        A snapshot listing a key twice is held with the last body (as merges
        always did) and its hash checked over what it listed.
        """
        bodies = {(r.kind, r.id): r.body for r in snapshot.resources}
        keys = sorted(bodies)
        records = [_hash_record(kind, entity_id, bodies[(kind, entity_id)]) for kind, entity_id in keys]
        states = _hash_states(records, [hashlib.sha256()], 0)
        if len(keys) == len(snapshot.resources):
            digest = states[-1].hexdigest()
        else:
            digest = config_hash((r.kind, r.id, r.body) for r in snapshot.resources)
        held = cls(snapshot.version, snapshot.hash, bodies, keys, records, states, None, snapshot)
        return held, digest == snapshot.hash

    @property
    def listed_twice(self) -> bool:
        """Whether the snapshot this came as listed a key more than once."""
        return self._snapshot is not None and len(self._keys) != len(self._snapshot.resources)

    def body(self, key: Key) -> bytes | None:
        return self._bodies.get(key)

    def items(self) -> list[tuple[Key, bytes]]:
        """``((kind, id), body)`` in key order."""
        bodies = self._bodies
        return [(key, bodies[key]) for key in self._keys]

    def __len__(self) -> int:
        return len(self._keys)

    def merge(self, delta: cluster_pb2.Delta) -> tuple[HeldConfig, dict[Key, bytes | None]]:
        """The config ``delta`` leads to, hash verified, and what changed.

        The changes map each key whose body differs (or that appeared) to its new
        body, each key that went to ``None``. Raises :class:`DeltaDoesNotFit` when
        this is not the delta's base or the result does not hash to ``delta.hash``;
        ``self`` is never modified.
        """
        if self.version != delta.from_version:
            raise DeltaDoesNotFit(
                f"delta from version {delta.from_version} does not apply: "
                f"this data plane holds version {self.version}"
            )
        if delta.from_hash and delta.from_hash != self.hash:
            raise DeltaDoesNotFit(
                f"delta from version {delta.from_version} is based on config "
                f"{delta.from_hash[:12]}, this data plane holds {self.hash[:12]}"
            )
        # Removals first, then upserts (a key in both ends upserted), last one wins.
        final: dict[Key, bytes | None] = {}
        for removed in delta.removals:
            final[(removed.kind, removed.id)] = None
        for resource in delta.upserts:
            final[(resource.kind, resource.id)] = resource.body
        bodies, keys, records, states = self._bodies, self._keys, self._records, self._states
        changes = {
            key: body
            for key, body in final.items()
            if (body is None and key in bodies) or (body is not None and bodies.get(key) != body)
        }
        wire = self._wire
        if changes:
            if wire is None:
                wire = self.wire_records()
            bodies, keys, records, wire = dict(bodies), list(keys), list(records), list(wire)
            for key, body in changes.items():
                at = bisect.bisect_left(keys, key)
                present = at < len(keys) and keys[at] == key
                if body is None:
                    del bodies[key], keys[at], records[at], wire[at]
                    continue
                bodies[key] = body
                record = _hash_record(key[0], key[1], body)
                wired = _wire_record(key[0], key[1], body)
                if present:
                    records[at], wire[at] = record, wired
                else:
                    keys.insert(at, key)
                    records.insert(at, record)
                    wire.insert(at, wired)
            # Records before the first changed key are as they were.
            first = min(bisect.bisect_left(keys, key) for key in changes)
            states = _hash_states(records, states, first)
        digest = states[-1].hexdigest()
        if digest != delta.hash:
            raise DeltaDoesNotFit(
                f"config after the delta to version {delta.version} hashes to {digest[:12]}, "
                f"expected {delta.hash[:12]}"
            )
        merged = HeldConfig(delta.version, delta.hash, bodies, keys, records, states, wire)
        return merged, changes

    def wire_records(self) -> list[bytes]:
        """Each resource as a ``Snapshot.resources`` field, in key order (computed once)."""
        if self._wire is None:
            snapshot = self._snapshot
            if snapshot is not None and not self.listed_twice:
                # protobuf's own encoder: faster than encoding each by hand.
                fields = {(r.kind, r.id): _field(3, r.SerializeToString()) for r in snapshot.resources}
                self._wire = [fields[key] for key in self._keys]
            else:
                bodies = self._bodies
                self._wire = [_wire_record(kind, i, bodies[(kind, i)]) for kind, i in self._keys]
        return self._wire

    def prepare(self) -> None:
        """Compute the wire records now (the installer does it in its cache thread)."""
        self.wire_records()

    def encoded(self) -> bytes:
        """The whole config as a serialized ``Snapshot`` (as received when it came whole;
        else resources sorted by key, as a merge always listed them)."""
        if self._snapshot is not None:
            return self._snapshot.SerializeToString()
        head = cluster_pb2.Snapshot(version=self.version, hash=self.hash).SerializeToString()
        return head + b"".join(self.wire_records())

    def snapshot(self) -> cluster_pb2.Snapshot:
        """The whole config as a ``Snapshot`` message (what workers and tests read)."""
        if self._snapshot is None:
            self._snapshot = cluster_pb2.Snapshot.FromString(self.encoded())
        return self._snapshot
