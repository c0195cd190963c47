"""Target health as the data planes report it, kept in Redis; manual overrides fan-out.

Two flows meet here; neither knows gRPC (the servicer in
:mod:`control_plane.cluster_server` converts wire messages) nor HTTP (the Admin
API turns the views into Kong's shapes through :mod:`control_plane.health_view`).

**Reports (DP → CP → Redis).** Each DP's stream gets a
:class:`DataPlaneHealthSession` from :meth:`TargetHealthStore.session`. A full
report replaces everything that DP reported before; a partial one applies
transitions. The DP's view lives in Redis, so every control plane sharing the
Redis shows every DP, whichever CP it is connected to:

==========================================  ===========================================
``{p}:health:dp:{node_id}``                 hash ``{upstream_id}|{target}|{address}`` →
                                            JSON ``{upstream_id, target_id, target,
                                            address, state, reason, time, weight,
                                            hostname}``; ``address`` is ``""`` for a
                                            target the DP cannot resolve (``DNS_ERROR``)
                                            and ``{upstream_id}|~panic`` → ``{"panic":
                                            bool}`` for an upstream that DP has put in
                                            or out of panic mode (issue 18)
``{p}:health:dps``                          set of node ids that may have such a hash
``{p}:health:overrides``                    stream of manual overrides (``MAXLEN ~``)
``{p}:health:events:{upstream_id}``         the upstream's health history, written by the
                                            report scripts (:mod:`control_plane.health_history`)
==========================================  ===========================================

Each DP hash has a TTL (``ttl`` seconds, milliseconds precision) refreshed by
every report and every ping of that DP. A DP that disconnects is not removed
(it may come back through any CP); its view stops counting once the TTL runs
out. Readers drop index members whose hash has expired, in the same script
that reads them, so a member is never removed while its hash exists.

The field key includes the target, not only the address: two DNS targets of one
upstream may resolve to the same ``ip:port`` and each has its own health.

**Overrides (Admin API → Redis → every CP → its DPs).**
:meth:`TargetHealthStore.publish_override` appends to the overrides stream and
returns once Redis acknowledged it. Every CP runs one :class:`OverrideFollower`
that reads the stream (``XREAD BLOCK``) from the tip it saw at start-up and hands
each entry to an :class:`OverrideBroadcaster`, which copies it to one bounded
in-process queue per connected DP stream. Overrides are events, not state: a DP
that connects later does not receive earlier ones (as on a single Kong node, where
an override lasts until the checker changes the state again).

All classes are for one event loop; none is thread-safe.

Why past ~600 lines: the report scripts, the DP hashes they write (rows, panic flags,
history events recorded in the same call) and the readers of those hashes share one
Redis layout; the history's own reads and rules live in
:mod:`control_plane.health_history`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from control_plane.health_history import (
    EVENTS_LUA,
    EVENTS_MAXLEN,
    HealthEvent,
    events_key_prefix,
    read_events,
)
from control_plane.health_types import AddressReport, DataPlaneReport, ManualOverride
from control_plane.store import redis_reachable
from control_plane.stream_follower import StreamFollower

log = logging.getLogger("ferry.control_plane.health")

#: How long a DP's reported view counts without a report or ping from it: three
#: of the DP's 30 s pings (Kong drops a silent DP after 45 s).
DEFAULT_HEALTH_TTL = 90.0

#: Entries the overrides stream keeps (approximately; ``MAXLEN ~``).
OVERRIDES_MAXLEN = 1000

#: Overrides queued for one DP stream before the oldest are dropped.
SUBSCRIBER_QUEUE = 256


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


#: The field of a DP's hash that holds its panic flag for an upstream: ``{id}|~panic``
#: (one ``|``: never a target's field, never selected by ``_SELECT_LUA``).
_PANIC_SUFFIX = "|~panic"
_PANIC_ON = '{"panic":true}'
_PANIC_OFF = '{"panic":false}'



# ------------------------------------------------------------- Redis scripts

# Both report scripts also record each row's state change in the upstream's
# health history (control_plane/health_history.py: EVENTS_LUA, the rules).
# ARGV[3..6] = events key prefix, maxlen, node id, the store's upstreams hash;
# entries from ARGV[7].

# KEYS[1] = the DP's hash, KEYS[2] = the index set. ARGV = ttl_ms, node_id,
# events..., then (field, value, target prefix, is_dns, state, upstream_id)
# sextuples: the DP's complete view replaces the hash.
_REPLACE_LUA = EVENTS_LUA + r"""
redis.replicate_commands()
local ev = {ARGV[3], ARGV[4], ARGV[5], ARGV[6]}
local froms = {}
-- anything but a hash (none, or damaged) held no rows: every row is new
local held = redis.call("TYPE", KEYS[1])["ok"] == "hash"
for i = 7, #ARGV, 6 do
  froms[i] = held and previous(KEYS[1], ARGV[i + 2], ARGV[i], ARGV[i + 3]) or ""
end
redis.call("DEL", KEYS[1])
for i = 7, #ARGV, 6 do
  redis.call("HSET", KEYS[1], ARGV[i], ARGV[i + 1])
  record(ev, ARGV[i + 5], froms[i], ARGV[i + 4], ARGV[i + 1])
end
if #ARGV > 6 then
  redis.call("PEXPIRE", KEYS[1], ARGV[1])
  redis.call("SADD", KEYS[2], ARGV[2])
end
return 1
"""

# Transitions. ARGV = ttl_ms, node_id, events..., then (target prefix, field,
# value, is_dns, state, upstream_id) sextuples. A DNS_ERROR removes the target's
# addresses; an address removes the target's DNS_ERROR entry (field = prefix).
_UPDATE_LUA = EVENTS_LUA + r"""
redis.replicate_commands()
local ev = {ARGV[3], ARGV[4], ARGV[5], ARGV[6]}
for i = 7, #ARGV, 6 do
  local prefix, field, value, dns = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  record(ev, ARGV[i + 5], previous(KEYS[1], prefix, field, dns), ARGV[i + 4], value)
  if dns == "1" then
    for _, f in ipairs(redis.call("HKEYS", KEYS[1])) do
      if string.sub(f, 1, #prefix) == prefix then redis.call("HDEL", KEYS[1], f) end
    end
  else
    redis.call("HDEL", KEYS[1], prefix)
  end
  redis.call("HSET", KEYS[1], field, value)
end
redis.call("PEXPIRE", KEYS[1], ARGV[1])
redis.call("SADD", KEYS[2], ARGV[2])
return 1
"""

# Refresh a DP's TTL; 0 when its hash is gone (expired, or Redis lost it).
_TOUCH_LUA = r"""
if redis.call("PEXPIRE", KEYS[1], ARGV[1]) == 1 then
  redis.call("SADD", KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# KEYS[1] = index set. ARGV = hash key prefix, field prefix ("" = every field).
# Returns {{node_id, {field, value, ...}}, ...}; drops members whose hash expired.
_READ_LUA = r"""
local out = {}
for _, id in ipairs(redis.call("SMEMBERS", KEYS[1])) do
  local key = ARGV[1] .. id
  if redis.call("EXISTS", key) == 0 then
    redis.call("SREM", KEYS[1], id)
  else
    local kept = {}
    local all = redis.call("HGETALL", key)
    for i = 1, #all, 2 do
      if ARGV[2] == "" or string.sub(all[i], 1, #ARGV[2]) == ARGV[2] then
        table.insert(kept, all[i])
        table.insert(kept, all[i + 1])
      end
    end
    table.insert(out, {id, kept})
  end
end
return out
"""

# Selected targets of selected DPs. KEYS = the DPs' hashes; ARGV = for each key
# in turn, a count n followed by n target prefixes ("{upstream_id}|{target}|").
# Returns one list of values per key: the entries of those targets (none when
# the hash has expired). A field's target prefix ends at its second "|".
_SELECT_LUA = r"""
local out = {}
local pos = 1
for i = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  pos = pos + 1
  local wanted = {}
  for j = 1, n do
    wanted[ARGV[pos]] = true
    pos = pos + 1
  end
  local found = {}
  if n > 0 then
    local all = redis.call("HGETALL", KEYS[i])
    for f = 1, #all, 2 do
      local first = string.find(all[f], "|", 1, true)
      local second = first and string.find(all[f], "|", first + 1, true)
      if second and wanted[string.sub(all[f], 1, second)] then
        table.insert(found, all[f + 1])
      end
    end
  end
  table.insert(out, found)
end
return out
"""


def _encode(report: AddressReport, hostname: str) -> str:
    return json.dumps({**asdict(report), "hostname": hostname}, separators=(",", ":"))


def _decode(value: bytes | str) -> tuple[AddressReport, str] | None:
    try:
        raw = json.loads(_text(value))
        report = AddressReport(**AddressReport.fields_of(raw))
        return report, str(raw.get("hostname") or "")
    except (ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------- the store


class TargetHealthStore:
    """DP health views and the overrides stream in Redis, under ``prefix``.

    ``ttl`` is in seconds (fractions allowed, kept to the millisecond). Read and
    publish methods raise :class:`~control_plane.errors.StoreUnavailable` when
    Redis is unreachable; sessions never raise on Redis errors (see
    :class:`DataPlaneHealthSession`).
    """

    def __init__(
        self, redis: aioredis.Redis, prefix: str = "ferry", *, ttl: float = DEFAULT_HEALTH_TTL
    ) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl * 1000))
        self._replace = redis.register_script(_REPLACE_LUA)
        self._update = redis.register_script(_UPDATE_LUA)
        self._touch = redis.register_script(_TOUCH_LUA)
        self._read = redis.register_script(_READ_LUA)
        self._select = redis.register_script(_SELECT_LUA)

    @property
    def ttl_ms(self) -> int:
        """How long (ms) a DP's view counts after its last report or ping."""
        return self._ttl_ms

    @property
    def index_key(self) -> str:
        """The set of node ids that may hold a health hash."""
        return f"{self._prefix}:health:dps"

    @property
    def overrides_stream_key(self) -> str:
        """The stream every control plane follows for manual overrides."""
        return f"{self._prefix}:health:overrides"

    def data_plane_key(self, node_id: str) -> str:
        """The hash holding one DP's view."""
        return f"{self._prefix}:health:dp:{node_id}"

    def session(self, node_id: str, hostname: str) -> DataPlaneHealthSession:
        """The report sink of one DP stream; create one per stream, after its Hello."""
        return DataPlaneHealthSession(self, node_id, hostname)

    # -- writes, for DataPlaneHealthSession (they raise RedisError / OSError)

    async def write_replace(
        self,
        node_id: str,
        hostname: str,
        entries: Iterable[AddressReport],
        panic: Iterable[str] = (),
    ) -> None:
        """Make ``entries`` (and ``panic``: the ids of the upstreams in panic mode) the
        DP's whole view and refresh its TTL (an empty view: no hash); rows whose state
        changed are recorded in the health history, oldest first."""
        args: list[str | int] = [self._ttl_ms, node_id, *self._events_args(node_id)]
        for entry in sorted(entries, key=lambda e: e.time):
            dns = "1" if entry.state == "DNS_ERROR" else "0"
            args += [entry.field, _encode(entry, hostname), entry.target_prefix, dns,
                     entry.state, entry.upstream_id]
        for upstream_id in panic:
            # A panic flag has no state: the scripts record nothing for it.
            field = upstream_id + _PANIC_SUFFIX
            args += [field, _PANIC_ON, field, "0", "", ""]
        await self._replace(keys=[self.data_plane_key(node_id), self.index_key], args=args)

    async def write_update(
        self,
        node_id: str,
        hostname: str,
        entries: Iterable[AddressReport],
        panic: Mapping[str, bool] | None = None,
    ) -> None:
        """Apply transitions to the DP's view (DNS rules as in ``_UPDATE_LUA``) and set
        the panic flags in ``panic`` (upstream id → flag); refresh its TTL; rows whose
        state changed are recorded in the health history."""
        args: list[str | int] = [self._ttl_ms, node_id, *self._events_args(node_id)]
        for entry in entries:
            dns = "1" if entry.state == "DNS_ERROR" else "0"
            args += [entry.target_prefix, entry.field, _encode(entry, hostname), dns,
                     entry.state, entry.upstream_id]
        for upstream_id, on in (panic or {}).items():
            field = upstream_id + _PANIC_SUFFIX
            args += [field, field, _PANIC_ON if on else _PANIC_OFF, "0", "", ""]
        await self._update(keys=[self.data_plane_key(node_id), self.index_key], args=args)

    def _events_args(self, node_id: str) -> list[str | int]:
        return [events_key_prefix(self._prefix), EVENTS_MAXLEN, node_id, f"{self._prefix}:entities:upstreams"]

    def events_key(self, upstream_id: str) -> str:
        """The stream of ``upstream_id``'s health history."""
        return events_key_prefix(self._prefix) + upstream_id

    async def events(
        self, upstream_id: str, size: int, start: str | None = None
    ) -> tuple[list[HealthEvent], str | None]:
        """The upstream's health history, newest first (:func:`health_history.read_events`)."""
        return await read_events(self._redis, self.events_key(upstream_id), size, start)

    async def write_touch(self, node_id: str) -> bool:
        """Refresh the DP's TTL; False when its hash no longer exists."""
        result = await self._touch(keys=[self.data_plane_key(node_id), self.index_key], args=[self._ttl_ms, node_id])
        return bool(int(result))

    # -- reads

    async def reports(self, upstream_id: str | None = None) -> list[DataPlaneReport]:
        """Every live DP's entries for ``upstream_id`` (None: for every upstream).

        DPs with nothing about that upstream are left out. Ordered by hostname,
        then node id. Raises ``StoreUnavailable`` when Redis is unreachable.
        """
        field_prefix = f"{upstream_id}|" if upstream_id is not None else ""
        async with redis_reachable(self._redis):
            raw = await self._read(
                keys=[self.index_key], args=[f"{self._prefix}:health:dp:", field_prefix]
            )
        out: list[DataPlaneReport] = []
        for node_raw, flat in raw:
            entries: list[AddressReport] = []
            hostname = ""
            panic: set[str] = set()
            for i in range(1, len(flat), 2):
                field = _text(flat[i - 1])
                if field.endswith(_PANIC_SUFFIX):
                    if _text(flat[i]) == _PANIC_ON:
                        panic.add(field[: -len(_PANIC_SUFFIX)])
                    continue
                decoded = _decode(flat[i])
                if decoded is None:
                    log.warning("ignoring an unreadable health entry of data plane %s", _text(node_raw))
                    continue
                entry, hostname = decoded
                entries.append(entry)
            if entries:
                entries.sort(key=lambda e: e.field)
                out.append(
                    DataPlaneReport(_text(node_raw), hostname, tuple(entries), frozenset(panic))
                )
        out.sort(key=lambda r: (r.hostname, r.node_id))
        return out

    async def target_entries(
        self, wanted: Mapping[str, Iterable[str]]
    ) -> dict[str, tuple[str, list[AddressReport]]]:
        """What some DPs reported about some targets, in one round trip.

        ``wanted`` maps a node id to ``"{upstream_id}|{target}"`` keys; the answer
        maps each node id whose hash exists and holds any of them to its
        hostname and those entries (every address of each target). Raises
        ``RedisError``/``OSError`` (callers are background tasks, not the Admin API).
        """
        nodes = list(wanted)
        keys: list[str] = []
        args: list[str | int] = []
        for node in nodes:
            prefixes = sorted({f"{key}|" for key in wanted[node]})
            keys.append(self.data_plane_key(node))
            args += [len(prefixes), *prefixes]
        if not keys:
            return {}
        raw = await self._select(keys=keys, args=args)
        out: dict[str, tuple[str, list[AddressReport]]] = {}
        for node, values in zip(nodes, raw, strict=True):
            entries: list[AddressReport] = []
            hostname = ""
            for value in values:
                decoded = _decode(value)
                if decoded is not None:
                    entry, hostname = decoded
                    entries.append(entry)
            if entries:
                out[node] = (hostname, entries)
        return out

    # -- overrides

    async def publish_override(self, override: ManualOverride, *, origin: str = "") -> str:
        """Append ``override`` to the overrides stream; returns its entry id.

        Returns only after Redis acknowledged the ``XADD``; ``origin`` (the CP's
        node id) is recorded for operators reading the stream. Raises
        ``StoreUnavailable`` when Redis is unreachable (nothing was sent).
        """
        fields: dict[Any, Any] = {
            "upstream_id": override.upstream_id,
            "target": override.target,
            "address": override.address,
            "healthy": "1" if override.healthy else "0",
            "time": repr(override.time),
            "origin": origin,
        }
        async with redis_reachable(self._redis):
            entry_id = await self._redis.xadd(
                self.overrides_stream_key, fields, maxlen=OVERRIDES_MAXLEN, approximate=True
            )
        return _text(entry_id)


def override_from_entry(fields: Mapping[Any, Any]) -> ManualOverride | None:
    """Decode one overrides-stream entry; None when it is not one Ferry wrote."""
    values = {_text(k): _text(v) for k, v in fields.items()}
    try:
        return ManualOverride(
            upstream_id=values["upstream_id"],
            target=values["target"],
            address=values.get("address", ""),
            healthy=values["healthy"] == "1",
            time=float(values.get("time") or 0.0),
        )
    except (KeyError, ValueError):
        return None


class DataPlaneHealthSession:
    """Writes one DP stream's reports and pings to Redis; never raises on Redis errors.

    Owned by the servicer coroutine of that stream; calls must not overlap (the
    stream's reader awaits each in turn). The session also keeps the DP's view
    in memory so that a write lost to a Redis outage, or a hash that vanished
    (TTL expired between two pings, Redis restarted empty), is rewritten on the
    next report or ping: the DP itself re-sends its full view only after a
    reconnect or a config change.
    """

    def __init__(self, store: TargetHealthStore, node_id: str, hostname: str) -> None:
        self._store = store
        self.node_id = node_id
        self.hostname = hostname
        self._view: dict[str, AddressReport] = {}
        #: True once the in-memory view is the DP's complete view (a full
        #: report arrived on this stream); before that it holds only transitions.
        self._complete = False
        #: True when Redis may differ from the in-memory view (a write failed).
        self._dirty = False
        #: The upstreams the DP says are in panic mode, and every upstream it ever
        #: said so of on this stream (their flags are rewritten after a failed write).
        self._panic: frozenset[str] = frozenset()
        self._panic_seen: set[str] = set()

    def _panic_flags(self) -> dict[str, bool]:
        return {u: u in self._panic for u in self._panic_seen}

    async def report(
        self, full: bool, entries: Sequence[AddressReport], panic: frozenset[str] | None = None
    ) -> bool:
        """Record a ``HealthReport``; returns False when Redis could not be written.

        ``panic``: the report's ``panic_upstreams`` (the DP's complete set), or None
        to leave the flags as they are."""
        changes: dict[str, bool] = {}
        if panic is not None:
            changes = {u: u in panic for u in self._panic ^ panic}
            self._panic = panic
            self._panic_seen |= panic
        if full:
            self._view = {e.field: e for e in entries}
            self._complete = True
        else:
            for entry in entries:
                self._merge(entry)
        try:
            if full or (self._dirty and self._complete):
                await self._store.write_replace(
                    self.node_id, self.hostname, self._view.values(), self._panic
                )
            elif self._dirty:
                await self._store.write_update(
                    self.node_id, self.hostname, self._view.values(), self._panic_flags()
                )
            elif entries or changes:
                await self._store.write_update(self.node_id, self.hostname, entries, changes)
        except (RedisError, OSError) as exc:
            self._dirty = True
            log.warning("could not store the health report of data plane %s: %s", self.node_id, exc)
            return False
        self._dirty = False
        return True

    async def touch(self) -> bool:
        """Keep the DP's view counting (on Hello and on each Ping); False on a Redis error."""
        try:
            if self._dirty or not await self._store.write_touch(self.node_id):
                # Rewrite what we know; an empty view has nothing to keep alive.
                if self._complete:
                    await self._store.write_replace(
                        self.node_id, self.hostname, self._view.values(), self._panic
                    )
                elif self._view:
                    await self._store.write_update(
                        self.node_id, self.hostname, self._view.values(), self._panic_flags()
                    )
        except (RedisError, OSError) as exc:
            self._dirty = True
            log.warning("could not refresh the health of data plane %s: %s", self.node_id, exc)
            return False
        self._dirty = False
        return True

    def _merge(self, entry: AddressReport) -> None:
        """Apply one transition to the in-memory view (the same rules as ``_UPDATE_LUA``)."""
        if entry.state == "DNS_ERROR":
            for key in [k for k in self._view if k.startswith(entry.target_prefix)]:
                del self._view[key]
        else:
            self._view.pop(entry.target_prefix, None)
        self._view[entry.field] = entry


# --------------------------------------------------------------- fan-out


class OverrideSubscription:
    """The overrides one DP stream has yet to send. Iterate it; close it when done."""

    def __init__(self, broadcaster: OverrideBroadcaster, maxsize: int) -> None:
        self._broadcaster = broadcaster
        self._items: deque[ManualOverride] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self.dropped = 0

    def _offer(self, override: ManualOverride) -> None:
        if len(self._items) >= self._maxsize:
            self._items.popleft()
            self.dropped += 1
            log.warning("a data plane stream is not keeping up; dropped its oldest health override")
        self._items.append(override)
        self._ready.set()

    async def get(self) -> ManualOverride:
        """The next override, in publication order; waits for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def __aiter__(self) -> OverrideSubscription:
        return self

    async def __anext__(self) -> ManualOverride:
        return await self.get()

    def close(self) -> None:
        """Stop receiving; pending overrides are discarded. Idempotent."""
        self._broadcaster._subscribers.discard(self)
        self._items.clear()


class OverrideBroadcaster:
    """Copies each override to every open subscription (one per connected DP stream)."""

    def __init__(self, queue_size: int = SUBSCRIBER_QUEUE) -> None:
        self._subscribers: set[OverrideSubscription] = set()
        self._queue_size = queue_size

    def subscribe(self) -> OverrideSubscription:
        """Start receiving every override published from now on."""
        subscription = OverrideSubscription(self, self._queue_size)
        self._subscribers.add(subscription)
        return subscription

    def publish(self, override: ManualOverride) -> int:
        """Hand ``override`` to every subscriber without waiting; returns how many."""
        subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription._offer(override)
        return len(subscribers)

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)


class OverrideSink(Protocol):
    """Where the follower delivers overrides (an :class:`OverrideBroadcaster`)."""

    def publish(self, override: ManualOverride) -> int: ...


class OverrideFollower(StreamFollower[ManualOverride]):
    """Follows the overrides stream and publishes each entry into ``sink``.

    A :class:`~control_plane.stream_follower.StreamFollower`: :meth:`start`
    records the stream's tip before it returns, so every override appended
    after ``start`` is delivered, and none appended before; after a Redis error
    it resumes after the last entry it delivered.
    """

    def __init__(
        self, redis: aioredis.Redis, stream_key: str, sink: OverrideSink, *, block_ms: int = 1000
    ) -> None:
        super().__init__(
            redis, stream_key, override_from_entry, sink.publish,
            what="health overrides", block_ms=block_ms,
        )
