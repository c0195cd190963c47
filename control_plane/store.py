"""The control plane's entity store: Kong's entities in Redis, written atomically.

Layout under ``prefix`` (default ``ferry``):

=====================================  ==============================================
``{p}:entities:{kind}``                hash id -> entity JSON (the Admin API's shape)
``{p}:unique:{kind}:{field}``          hash value -> id (``name``; targets use
                                       ``{upstream_id}|{target}`` under ``target``)
``{p}:refs:{kind}:{field}:{parent}``   set of child ids (routes of a service,
                                       targets of an upstream, SNIs of a
                                       certificate, services and upstreams using a
                                       client certificate, services trusting a CA
                                       certificate: one entry per id of the array)
``{p}:version``                        integer, +1 per successful write
``{p}:changes``                        stream: ``version kind id op`` per changed entity
=====================================  ==============================================

Every write (insert, replace, delete with its cascade, and the replace of the
whole configuration by ``POST /config``) is one Lua script: the unique and
foreign-key checks, the entity writes, the version ``INCR`` and the ``XADD`` of
every change happen atomically, so a reader of the stream never sees a version
whose entities are not in place, and a check never races a write. (A delete of
a missing entity, and a whole-config replace that changes nothing, write nothing
and keep the version.)
A method returns only after Redis has executed (acknowledged) the script.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from control_plane.errors import (
    FerryError,
    ForeignKeyViolation,
    PrimaryKeyViolation,
    ReferencedByOthers,
    StoreUnavailable,
    UniqueViolation,
)
from control_plane.redis_connection import unreachable_message
from control_plane.schemas import KINDS

#: How many change entries the stream keeps (approximately; ``MAXLEN ~``).
CHANGES_MAXLEN = 10000

# What every write script shares: the key layout, an entity's unique claims and
# parent references, unlinking an entity, and the version bump with one stream
# entry per change. ARGV[1] = prefix, ARGV[2] = JSON request, ARGV[3] = MAXLEN.
_LUA_COMMON = r"""
local p = ARGV[1]
local req = cjson.decode(ARGV[2])
local maxlen = ARGV[3]
local null = cjson.null

local UNIQUE = {
  services = {"name"}, routes = {"name"}, upstreams = {"name"},
  snis = {"name"}, ca_certificates = {"cert_digest"},
}
local FOREIGN = {
  routes = {{"service", "services"}}, targets = {{"upstream", "upstreams"}},
  snis = {{"certificate", "certificates"}},
  services = {{"client_certificate", "certificates"}},
  upstreams = {{"client_certificate", "certificates"}},
}
-- arrays of ids referencing other entities (a service's CA certificates)
local ARRAY_REFS = { services = {{"ca_certificates", "ca_certificates"}} }

local function ekey(kind) return p .. ":entities:" .. kind end
local function ukey(kind, field) return p .. ":unique:" .. kind .. ":" .. field end
local function rkey(kind, field, parent) return p .. ":refs:" .. kind .. ":" .. field .. ":" .. parent end

local function present(v) return v ~= nil and v ~= null end

-- the unique claims of an entity: list of {hash key, value, field, display value}
local function claims(kind, e)
  local out = {}
  for _, f in ipairs(UNIQUE[kind] or {}) do
    if present(e[f]) then table.insert(out, {ukey(kind, f), tostring(e[f]), f, e[f]}) end
  end
  if kind == "targets" and present(e.upstream) and present(e.target) then
    table.insert(out, {ukey(kind, "target"), e.upstream.id .. "|" .. e.target, "target", e.target})
  end
  return out
end

-- the parents an entity references: list of {refs set key, parent kind, parent id, field}
local function parents(kind, e)
  local out = {}
  for _, fk in ipairs(FOREIGN[kind] or {}) do
    local ref = e[fk[1]]
    if present(ref) and present(ref.id) then
      table.insert(out, {rkey(kind, fk[1], ref.id), fk[2], ref.id, fk[1]})
    end
  end
  for _, ar in ipairs(ARRAY_REFS[kind] or {}) do
    local ids = e[ar[1]]
    if present(ids) then
      for _, rid in ipairs(ids) do
        table.insert(out, {rkey(kind, ar[1], rid), ar[2], rid, ar[1]})
      end
    end
  end
  return out
end

-- the children of a parent that point at it through fields of other kinds:
-- returns {kind, field} of the first kind with any, or nil
local function referenced(id, refs)
  for _, r in ipairs(refs) do
    local set = rkey(r[1], r[2], id)
    if redis.call("SCARD", set) > 0 then
      return r[1], redis.call("SRANDMEMBER", set)
    end
  end
  return nil
end


local function unlink(kind, id, e)
  for _, c in ipairs(claims(kind, e)) do
    if redis.call("HGET", c[1], c[2]) == id then redis.call("HDEL", c[1], c[2]) end
  end
  for _, r in ipairs(parents(kind, e)) do redis.call("SREM", r[1], id) end
  redis.call("HDEL", ekey(kind), id)
end

local function link(kind, id, text)
  local e = cjson.decode(text)
  redis.call("HSET", ekey(kind), id, text)
  for _, c in ipairs(claims(kind, e)) do redis.call("HSET", c[1], c[2], id) end
  for _, r in ipairs(parents(kind, e)) do redis.call("SADD", r[1], id) end
end

-- delete every child of kind pointing at parent id through field (a cascade)
local function cascade(kind, field, id, changes)
  local set = rkey(kind, field, id)
  for _, cid in ipairs(redis.call("SMEMBERS", set)) do
    local cjson_text = redis.call("HGET", ekey(kind), cid)
    if cjson_text then
      unlink(kind, cid, cjson.decode(cjson_text))
      table.insert(changes, {kind, cid, "delete"})
    end
  end
  redis.call("DEL", set)
end

local function bump(changes)
  local v = redis.call("INCR", p .. ":version")
  for _, c in ipairs(changes) do
    redis.call("XADD", p .. ":changes", "MAXLEN", "~", maxlen, "*",
               "version", v, "kind", c[1], "id", c[2], "op", c[3])
  end
  return v
end
"""

# One script for every single-entity write. Request:
#   {"op": "insert"|"replace"|"delete", "kind", "id", "entity": "<json>",
#    "expect": "<json currently stored>" | null}
# "replace" is a compare-and-set: it applies only when the stored JSON still
# equals "expect" (null: the entity must not exist), so a read-modify-write in
# Python cannot lose a concurrent update; a mismatch answers {"err":"conflict"}
# and the caller re-reads and retries.
_WRITE_LUA = _LUA_COMMON + r"""
local kind, id = req.kind, req.id
local current = redis.call("HGET", ekey(kind), id)

if req.op == "delete" then
  if not current then return cjson.encode({version = null}) end
  local old = cjson.decode(current)
  local changes = {}
  if kind == "services" then
    -- routes.service has no cascade in Kong: refuse while routes point here
    if redis.call("SCARD", rkey("routes", "service", id)) > 0 then
      return cjson.encode({err = "restrict", parent = "services", child = "routes"})
    end
  elseif kind == "upstreams" then
    -- targets.upstream cascades: the upstream's targets go with it
    cascade("targets", "upstream", id, changes)
  elseif kind == "certificates" then
    -- client_certificate has no cascade in Kong: refuse while one points here
    local child = referenced(id, {{"services", "client_certificate"}, {"upstreams", "client_certificate"}})
    if child then
      return cjson.encode({err = "restrict", parent = "certificates", child = child})
    end
    -- snis.certificate cascades (Kong's certificates DAO deletes them)
    cascade("snis", "certificate", id, changes)
  elseif kind == "ca_certificates" then
    local child, child_id = referenced(id, {{"services", "ca_certificates"}})
    if child then
      return cjson.encode({err = "referenced", parent = "ca_certificates", child = child, child_id = child_id})
    end
  end
  unlink(kind, id, old)
  -- the upstream's health history goes with it (control_plane/health_history.py)
  if kind == "upstreams" then redis.call("DEL", p .. ":health:events:" .. id) end
  table.insert(changes, {kind, id, "delete"})
  return cjson.encode({version = bump(changes)})
end

if req.op == "insert" then
  if current then return cjson.encode({err = "pk"}) end
elseif req.expect == null then
  if current then return cjson.encode({err = "conflict"}) end
elseif current ~= req.expect then
  return cjson.encode({err = "conflict"})
end

local new = cjson.decode(req.entity)
for _, r in ipairs(parents(kind, new)) do
  if redis.call("HEXISTS", ekey(r[2]), r[3]) == 0 then
    return cjson.encode({err = "fk", field = r[4], parent = r[2], ref = r[3]})
  end
end
for _, c in ipairs(claims(kind, new)) do
  local owner = redis.call("HGET", c[1], c[2])
  if owner and owner ~= id then
    return cjson.encode({err = "unique", field = c[3], value = c[4]})
  end
end
if current then unlink(kind, id, cjson.decode(current)) end
link(kind, id, req.entity)
return cjson.encode({version = bump({{kind, id, "upsert"}})})
"""

# The whole configuration replaced at once (``POST /config``). Request:
#   {"expect": <version the plan was computed against>,
#    "upserts": [[kind, id, "<json>"], ...], "deletes": [[kind, id], ...]}
# A compare-and-set on the version: the plan applies only when the version is
# still "expect" (else {"err":"version","version":v}). Every write bumps the
# version, so an unchanged version means the entities are exactly those the
# plan was computed from, and the plan (a complete, validated configuration)
# cannot break a unique or foreign-key rule: no check is repeated here. Every
# changed entity is unlinked before any is linked, so two entities may swap a
# name. One version for the whole plan, one stream entry per changed entity;
# an empty plan writes nothing and keeps the version.
_REPLACE_ALL_LUA = _LUA_COMMON + r"""
local version = tonumber(redis.call("GET", p .. ":version") or "0")
if version ~= tonumber(req.expect) then
  return cjson.encode({err = "version", version = version})
end
if #req.upserts == 0 and #req.deletes == 0 then
  return cjson.encode({version = version})
end
local changes = {}
for _, d in ipairs(req.deletes) do
  local current = redis.call("HGET", ekey(d[1]), d[2])
  if current then
    unlink(d[1], d[2], cjson.decode(current))
    if d[1] == "upstreams" then redis.call("DEL", p .. ":health:events:" .. d[2]) end
    table.insert(changes, {d[1], d[2], "delete"})
  end
end
for _, u in ipairs(req.upserts) do
  local current = redis.call("HGET", ekey(u[1]), u[2])
  if current then unlink(u[1], u[2], cjson.decode(current)) end
end
for _, u in ipairs(req.upserts) do
  link(u[1], u[2], u[3])
  table.insert(changes, {u[1], u[2], "upsert"})
end
return cjson.encode({version = bump(changes)})
"""

# A consistent snapshot: the version and every entity, read in one script.
_LOAD_ALL_LUA = r"""
local p = ARGV[1]
local out = {redis.call("GET", p .. ":version") or "0"}
for i = 2, #ARGV do
  table.insert(out, redis.call("HVALS", p .. ":entities:" .. ARGV[i]))
end
return out
"""


class WriteConflict(Exception):
    """A compare-and-set write found the entity changed since it was read.

    Not a :class:`FerryError`: callers re-read and retry; it never reaches a client.
    """


class ConfigChanged(Exception):
    """A whole-config replace found the version moved since the plan was computed.

    Not a :class:`FerryError`: callers re-read and retry (or report a
    mismatch to a client that asked for a version). ``version`` is the
    version found.
    """

    def __init__(self, version: int) -> None:
        super().__init__(f"the configuration is now at version {version}")
        self.version = version


@asynccontextmanager
async def redis_reachable(client: aioredis.Redis | None = None) -> AsyncIterator[None]:
    """Turn Redis connection failures into :class:`StoreUnavailable` (HTTP 503).

    Every control-plane module that answers the Admin API from Redis wraps its
    Redis calls in this, so an outage is one 503 body everywhere, never a 500.
    Pass the ``client`` used inside: the message then says which Redis (never
    its password). A write refused by a read-only replica counts as an outage.
    """
    try:
        yield
    except FerryError:
        raise
    except (
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        redis.exceptions.ReadOnlyError,
        OSError,
    ) as exc:
        raise StoreUnavailable(unreachable_message(exc, client)) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class EntityStore:
    """Kong's entities in Redis; every write is one atomic, acknowledged script.

    The client may use ``decode_responses`` or not; the store handles both.
    Entities are plain dicts in the Admin API's shape (validated upstream of the
    store: the store checks only identity, uniqueness and references).
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "ferry") -> None:
        self._redis = redis
        self._prefix = prefix
        self._write = redis.register_script(_WRITE_LUA)
        self._load_all = redis.register_script(_LOAD_ALL_LUA)
        self._replace_all = redis.register_script(_REPLACE_ALL_LUA)

    @property
    def redis(self) -> aioredis.Redis:
        """The client this store uses (shared with other Redis-backed views)."""
        return self._redis

    @property
    def prefix(self) -> str:
        """The key prefix every key of this store starts with."""
        return self._prefix

    @property
    def changes_stream_key(self) -> str:
        """The stream with one entry per changed entity: ``version kind id op``."""
        return f"{self._prefix}:changes"

    @property
    def version_key(self) -> str:
        """The integer key incremented once per successful write."""
        return f"{self._prefix}:version"

    def _entities_key(self, kind: str) -> str:
        return f"{self._prefix}:entities:{kind}"

    # ------------------------------------------------------------------ reads

    async def ping(self) -> bool:
        """True when Redis answers; never raises."""
        try:
            return bool(await self._redis.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    async def current_version(self) -> int:
        """The configuration version: 0 when nothing was ever written."""
        async with redis_reachable(self._redis):
            value = await self._redis.get(self.version_key)
        return int(value) if value is not None else 0

    async def load_all(self) -> tuple[int, dict[str, list[dict[str, Any]]]]:
        """The version and every entity of each kind, read atomically (one script).

        Keys of the dict are exactly ``upstreams``, ``targets``, ``services``,
        ``routes``; each entity is the dict the Admin API returns.
        """
        version, texts = await self.load_all_raw()
        entities = {
            kind: sorted((json.loads(item) for item in items), key=lambda e: e["id"])
            for kind, items in texts.items()
        }
        return version, entities

    async def load_all_raw(self) -> tuple[int, dict[str, list[str | bytes]]]:
        """Like :meth:`load_all`, but each entity is its stored JSON text, in no order.

        The config follower reads this way: it decodes only the texts that changed
        since its previous read (:class:`~control_plane.snapshot.SnapshotBuilder`).
        """
        async with redis_reachable(self._redis):
            raw = await self._load_all(args=[self._prefix, *KINDS])
        return int(_text(raw[0])), {
            kind: list(items) for kind, items in zip(KINDS, raw[1:], strict=True)
        }

    async def get_raw(self, kind: str, entity_id: str) -> str | None:
        """The stored JSON text of one entity (for a later compare-and-set), or None."""
        async with redis_reachable(self._redis):
            value = await self._redis.hget(self._entities_key(kind), entity_id)
        return _text(value) if value is not None else None

    async def get(self, kind: str, entity_id: str) -> dict[str, Any] | None:
        """One entity by id, or None."""
        raw = await self.get_raw(kind, entity_id)
        return json.loads(raw) if raw is not None else None

    async def id_by_unique(self, kind: str, field: str, value: str) -> str | None:
        """The id of the ``kind`` entity whose unique ``field`` equals ``value``."""
        async with redis_reachable(self._redis):
            found = await self._redis.hget(
                f"{self._prefix}:unique:{kind}:{field}", value
            )
        return _text(found) if found is not None else None

    async def target_id(self, upstream_id: str, target: str) -> str | None:
        """The id of the target ``target`` (canonical text) of an upstream, or None."""
        return await self.id_by_unique("targets", "target", f"{upstream_id}|{target}")

    async def list_all(self, kind: str) -> list[dict[str, Any]]:
        """Every ``kind`` entity, ordered by id (the paging order)."""
        async with redis_reachable(self._redis):
            values = await self._redis.hvals(self._entities_key(kind))
        return sorted((json.loads(_text(v)) for v in values), key=lambda e: e["id"])

    async def list_children(
        self, kind: str, field: str, parent_id: str
    ) -> list[dict[str, Any]]:
        """The ``kind`` entities whose foreign key ``field`` points at ``parent_id``."""
        async with redis_reachable(self._redis):
            ids = await self._redis.smembers(
                f"{self._prefix}:refs:{kind}:{field}:{parent_id}"
            )
            if not ids:
                return []
            values = await self._redis.hmget(
                self._entities_key(kind), [_text(i) for i in ids]
            )
        return sorted(
            (json.loads(_text(v)) for v in values if v is not None), key=lambda e: e["id"]
        )

    # ----------------------------------------------------------------- writes

    async def _run(self, request: dict[str, Any]) -> dict[str, Any]:
        async with redis_reachable(self._redis):
            raw = await self._write(
                args=[self._prefix, json.dumps(request), str(CHANGES_MAXLEN)]
            )
        result: dict[str, Any] = json.loads(_text(raw))
        error = result.get("err")
        if error == "pk":
            raise PrimaryKeyViolation({"id": request["id"]})
        if error == "conflict":
            raise WriteConflict(request["id"])
        if error == "unique":
            raise UniqueViolation({result["field"]: result["value"]})
        if error == "fk":
            raise ForeignKeyViolation.invalid_reference(
                {"id": result["ref"]}, result["field"], result["parent"]
            )
        if error == "restrict":
            raise ForeignKeyViolation.restricted(result["parent"], result["child"])
        if error == "referenced":
            raise ReferencedByOthers(
                f"ca certificate {request['id']} is still referenced by "
                f"{result['child']} (id = {result['child_id']})"
            )
        return result

    async def insert(self, kind: str, entity: dict[str, Any]) -> int:
        """Create ``entity``; returns the new version.

        Raises :class:`PrimaryKeyViolation` (id taken), :class:`UniqueViolation`,
        :class:`ForeignKeyViolation` (missing parent).
        """
        result = await self._run(
            {"op": "insert", "kind": kind, "id": entity["id"], "entity": json.dumps(entity)}
        )
        return int(result["version"])

    async def replace(self, kind: str, entity: dict[str, Any], expect: str | None) -> int:
        """Write ``entity`` over the stored one if that is still ``expect``.

        ``expect`` is the JSON text read by :meth:`get_raw` (None: the entity
        must not exist yet). Raises :class:`WriteConflict` when it changed in
        between, plus the violations :meth:`insert` raises. Returns the version.
        """
        result = await self._run(
            {
                "op": "replace",
                "kind": kind,
                "id": entity["id"],
                "entity": json.dumps(entity),
                "expect": expect,
            }
        )
        return int(result["version"])

    async def delete(self, kind: str, entity_id: str) -> int | None:
        """Delete one entity (an upstream with its targets, a certificate with its
        SNIs); returns the version.

        None when there was nothing to delete (no version bump). Raises
        :class:`ForeignKeyViolation` when deleting a service that routes use or a
        certificate a service or upstream presents (``client_certificate``), and
        :class:`ReferencedByOthers` for a CA certificate a service trusts.
        """
        result = await self._run({"op": "delete", "kind": kind, "id": entity_id})
        version = result.get("version")
        return int(version) if version is not None else None

    async def replace_config(
        self,
        upserts: Sequence[tuple[str, dict[str, Any]]],
        deletes: Sequence[tuple[str, str]],
        *,
        expect_version: int,
    ) -> int:
        """Apply a whole-config plan atomically, if the version is still ``expect_version``.

        ``upserts`` are ``(kind, entity)`` pairs written as given (created or
        replaced); ``deletes`` are ``(kind, id)`` pairs. The plan must take
        the configuration read at ``expect_version`` (:meth:`load_all`) to a
        complete, valid one (:mod:`control_plane.declarative` computes it):
        the store does not repeat unique or foreign-key checks, and deletes
        nothing it is not told to (no cascade). One script: one version for
        the whole plan and one change-stream entry per changed entity.

        Returns the new version, or ``expect_version`` unchanged when the plan
        is empty (nothing written). Raises :class:`ConfigChanged` when the
        version moved in between (nothing written; re-read and retry).
        """
        request = {
            "expect": expect_version,
            "upserts": [[kind, entity["id"], json.dumps(entity)] for kind, entity in upserts],
            "deletes": [[kind, entity_id] for kind, entity_id in deletes],
        }
        async with redis_reachable(self._redis):
            raw = await self._replace_all(
                args=[self._prefix, json.dumps(request), str(CHANGES_MAXLEN)]
            )
        result: dict[str, Any] = json.loads(_text(raw))
        if result.get("err") == "version":
            raise ConfigChanged(int(result["version"]))
        return int(result["version"])
