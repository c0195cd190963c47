"""The entity service: what a write of an entity means, whoever asks for it.

Kong's DAO layer in Ferry's terms. Over one :class:`~control_plane.store.EntityStore`
it owns everything about an entity write that is not HTTP: ids (a UUID when none is
given), timestamps (``created_at`` kept, ``updated_at`` moving forward; targets in
seconds with millisecond precision, Kong 3.x's ``auto_timestamp_ms``), Kong's
shorthands and foreign-key names, schema validation, uniqueness (the store's unique
keys; a PUT whose id belongs to another entity is a primary-key violation) and
compare-and-set: each read-modify-write retries on a concurrent write, up to
``CAS_ATTEMPTS`` times, then gives up with :class:`StoreUnavailable` (503).

The Admin API (:mod:`control_plane.admin_api`) keeps HTTP: paths, bodies, paging,
status codes. Errors are :class:`~control_plane.errors.FerryError` s.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from control_plane.declarative import ConfigDiff, diff_configs, resolve_document
from control_plane.errors import (
    ConfigVersionMismatch,
    ForeignKeysUnresolved,
    NotFound,
    PrimaryKeyViolation,
    StoreUnavailable,
)
from control_plane.schemas import (
    ENTITIES,
    RuleError,
    expand_shorthands,
    is_uuid,
    merge_patch,
    normalize_target,
    validate_entity,
)
from control_plane.store import ConfigChanged, EntityStore, WriteConflict

#: Compare-and-set attempts for a read-modify-write before giving up (503).
CAS_ATTEMPTS = 8

#: An entity and its stored JSON (the compare-and-set token of a replace).
Found = tuple[dict[str, Any], str]
#: Reads the entity a request names, again on each compare-and-set attempt.
Finder = Callable[[], Awaitable[Found | None]]

#: The unique field that can stand for the id (Kong's ``endpoint_key``), per kind.
_ENDPOINT_KEYS = {entity.kind: entity.endpoint_key for entity in ENTITIES}

#: Kinds whose timestamps are Kong 3.x's ``auto_timestamp_ms``.
_MILLISECOND_KINDS = frozenset({"targets"})


def now() -> int:
    """Epoch seconds, as ``created_at``/``updated_at`` of most entities."""
    return int(time.time())


def _timestamp(kind: str) -> int | float:
    """Now, as ``kind`` stores it: targets in seconds with millisecond precision
    (Kong 3.x's ``auto_timestamp_ms``), other entities in whole seconds."""
    return round(time.time(), 3) if kind in _MILLISECOND_KINDS else now()


def _later(kind: str, previous: Any) -> int | float:
    """An ``updated_at`` for a write after one stamped ``previous``: now, never
    earlier than ``previous`` (a target's moves by at least one millisecond)."""
    if kind in _MILLISECOND_KINDS:
        last = float(previous) if isinstance(previous, int | float) else 0.0
        return max(round(time.time(), 3), round(last + 0.001, 3))
    return max(now(), int(previous or 0))


def _plan_config(
    document: dict[str, Any], current: dict[str, list[dict[str, Any]]], stamp: int
) -> tuple[dict[str, list[dict[str, Any]]], ConfigDiff]:
    """The configuration ``document`` describes and the changes from ``current`` to it."""
    desired = resolve_document(document, current, stamp)
    return desired, diff_configs(current, desired)


class EntityService:
    """Reads and writes entities of one store; for one event loop.

    ``last_version`` is the configuration version of the latest read or write
    this service made (``/status`` shows it).
    """

    def __init__(self, store: EntityStore) -> None:
        self.store = store
        self.last_version = 0

    # -- reads

    async def find(self, kind: str, key: str) -> Found | None:
        """The entity named by ``key`` (an id or its endpoint key) and its stored JSON."""
        entity_id: str | None = key if is_uuid(key) else None
        if entity_id is None:
            entity_id = await self.store.id_by_unique(kind, _ENDPOINT_KEYS[kind], key)
        if entity_id is None:
            return None
        raw = await self.store.get_raw(kind, entity_id)
        return (json.loads(raw), raw) if raw is not None else None

    async def find_target(self, upstream: dict[str, Any], key: str) -> Found | None:
        """A target of ``upstream`` by id or by ``host:port`` (normalised like Kong)."""
        target_id: str | None = None
        if is_uuid(key):
            target_id = key
        else:
            try:
                target_id = await self.store.target_id(upstream["id"], normalize_target(key))
            except RuleError:
                return None
        if target_id is None:
            return None
        raw = await self.store.get_raw("targets", target_id)
        if raw is None:
            return None
        entity = json.loads(raw)
        if entity["upstream"]["id"] != upstream["id"]:
            return None
        return entity, raw

    async def require(self, kind: str, key: str) -> dict[str, Any]:
        """The entity named by ``key``; :class:`NotFound` when there is none."""
        found = await self.find(kind, key)
        if found is None:
            raise NotFound()
        return found[0]

    async def list_all(self, kind: str) -> list[dict[str, Any]]:
        """Every ``kind`` entity."""
        return await self.store.list_all(kind)

    async def list_children(
        self, kind: str, foreign_key: str, parent_id: str
    ) -> list[dict[str, Any]]:
        """The ``kind`` entities whose ``foreign_key`` is ``parent_id``."""
        return await self.store.list_children(kind, foreign_key, parent_id)

    # -- writes

    async def _resolve_service(self, body: dict[str, Any]) -> None:
        """Turn a route's ``service: {"name": ...}`` into ``{"id": ...}``, as Kong does."""
        ref = body.get("service")
        if isinstance(ref, dict) and "id" not in ref and isinstance(ref.get("name"), str):
            service_id = await self.store.id_by_unique("services", "name", ref["name"])
            if service_id is None:
                raise ForeignKeysUnresolved("service", "name", ref["name"], "services")
            body["service"] = {"id": service_id}

    async def _prepare(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        body = expand_shorthands(kind, body)
        if kind == "routes":
            await self._resolve_service(body)
        return body

    async def create(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST: a new entity (its id generated unless given); returns it as stored."""
        body = await self._prepare(kind, body)
        stamp = _timestamp(kind)
        candidate = {**body, "updated_at": stamp}
        if candidate.get("id") is None:
            candidate["id"] = str(uuid.uuid4())
        if candidate.get("created_at") is None:
            candidate["created_at"] = stamp
        entity = validate_entity(kind, candidate)
        self.last_version = await self.store.insert(kind, entity)
        return entity

    async def update(self, kind: str, find: Finder, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: merge ``body`` into the stored entity, re-validate, compare-and-set."""
        body = await self._prepare(kind, body)
        for _ in range(CAS_ATTEMPTS):
            found = await find()
            if found is None:
                raise NotFound()
            current, raw = found
            merged = merge_patch(kind, current, body)
            # The identity and creation time are not the client's to change.
            merged["id"] = current["id"]
            merged["created_at"] = current["created_at"]
            merged["updated_at"] = _later(kind, current.get("updated_at"))
            if kind == "targets":
                merged["upstream"] = current["upstream"]
            entity = validate_entity(kind, merged)
            try:
                self.last_version = await self.store.replace(kind, entity, raw)
            except WriteConflict:
                continue
            return entity
        raise StoreUnavailable("too many concurrent updates of this entity; retry")

    async def upsert(
        self,
        kind: str,
        key: str,
        find: Finder,
        body: dict[str, Any],
        extra: dict[str, Any] | None = None,
        *,
        path_wins: bool = True,
    ) -> dict[str, Any]:
        """PUT: create or replace the entity named by ``key`` with ``body`` (plus defaults).

        ``key`` (a name) wins over the body's own value unless ``path_wins`` is
        false and the body gives one.
        """
        endpoint_key = _ENDPOINT_KEYS[kind]
        body = await self._prepare(kind, body)
        for _ in range(CAS_ATTEMPTS):
            found = await find()
            stamp = _timestamp(kind)
            candidate = {**body, **(extra or {})}
            if is_uuid(key):
                candidate["id"] = key
            else:
                if path_wins or candidate.get(endpoint_key) is None:
                    candidate[endpoint_key] = key
                candidate["id"] = found[0]["id"] if found else candidate.get("id") or str(uuid.uuid4())
            if found:
                candidate["created_at"] = found[0]["created_at"]
                stamp = _later(kind, found[0].get("updated_at"))
            elif candidate.get("created_at") is None:
                candidate["created_at"] = stamp
            candidate["updated_at"] = stamp
            entity = validate_entity(kind, candidate)
            try:
                self.last_version = await self.store.replace(
                    kind, entity, found[1] if found else None
                )
            except WriteConflict:
                if found is None and await self._id_taken(kind, entity["id"], find):
                    # The id belongs to an entity the path does not name (another
                    # name, another upstream's target): no retry can succeed.
                    raise PrimaryKeyViolation({"id": entity["id"]}) from None
                continue
            return entity
        raise StoreUnavailable("too many concurrent updates of this entity; retry")

    async def put_target(
        self, upstream: dict[str, Any], key: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """Kong 3.x: a PUT of an existing target is an update (fields not given
        are kept; a ``target`` in the body renames it); otherwise it creates the
        target, named by the body's ``target`` or else by the path."""

        def find() -> Awaitable[Found | None]:
            return self.find_target(upstream, key)

        if await find() is not None:
            return await self.update("targets", find, body)
        name = key
        if not is_uuid(key):
            try:
                name = normalize_target(key)
            except RuleError:
                pass  # validation reports the invalid target
        return await self.upsert(
            "targets", name, find, body, extra={"upstream": {"id": upstream["id"]}}, path_wins=False
        )

    async def _id_taken(self, kind: str, entity_id: str, find: Finder) -> bool:
        """After a create-only write found ``entity_id`` in use: is it held by an
        entity other than the one the path names? (If the path's entity appeared
        meanwhile, a retry updates it instead.)"""
        if await self.store.get_raw(kind, entity_id) is None:
            return False
        return await find() is None

    async def delete(self, kind: str, found: Found | None) -> None:
        """Delete ``found`` (nothing when it is None, as Kong answers 204 either way)."""
        if found is not None:
            version = await self.store.delete(kind, found[0]["id"])
            if version is not None:
                self.last_version = version

    # -- the whole configuration

    async def export_config(self) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        """The version and every entity, read atomically."""
        version, entities = await self.store.load_all()
        self.last_version = version
        return version, entities

    async def import_config(
        self, document: dict[str, Any], *, expected: int | None = None, check_hash: bool = False
    ) -> tuple[int, dict[str, list[dict[str, Any]]]] | None:
        """Replace the whole configuration with ``document``; the new version and config.

        The changes are computed against one consistent read and applied as one
        store script that checks the version did not move. A concurrent write makes
        it re-read and recompute; with ``expected`` it raises
        :class:`ConfigVersionMismatch` instead. With ``check_hash`` an unchanged
        configuration returns None (nothing written).
        """
        for _ in range(CAS_ATTEMPTS):
            version, current = await self.store.load_all()
            if expected is not None and version != expected:
                raise ConfigVersionMismatch(expected, version)
            desired, plan = await asyncio.to_thread(_plan_config, document, current, now())
            if check_hash and plan.empty:
                return None
            try:
                new_version = await self.store.replace_config(
                    plan.upserts, plan.deletes, expect_version=version
                )
            except ConfigChanged as exc:
                if expected is not None:
                    raise ConfigVersionMismatch(expected, exc.version) from None
                continue
            self.last_version = new_version
            return new_version, desired
        raise StoreUnavailable("too many concurrent writes during the configuration import; retry")

    async def current_version(self) -> tuple[bool, int]:
        """Whether the store answers, and the configuration version last known."""
        reachable = await self.store.ping()
        if reachable:
            try:
                self.last_version = await self.store.current_version()
            except StoreUnavailable:
                reachable = False
        return reachable, self.last_version
