"""Health history: every health transition any data plane reported, per upstream, in Redis.

Written by the report scripts of :class:`control_plane.health.TargetHealthStore` in the
same script call that stores the report (one round trip, atomic with it), read by
``GET /upstreams/{u}/health/events``. Being in Redis, every control plane sharing the
Redis shows the same history, whichever CP the reporting DP was connected to.

==========================================  ===========================================
``{p}:health:events:{upstream_id}``         stream, one entry per transition: ``node``
                                            (the DP's node id), ``from`` (its previous
                                            state, ``""`` for none), ``entry`` (the
                                            stored report JSON: target, address, state,
                                            reason, time, weight, hostname); trimmed to
                                            the newest :data:`EVENTS_MAXLEN` entries
==========================================  ===========================================

Rules:

- An event is recorded when a DP's report gives a row (``{upstream}|{target}|{address}``
  of that DP's hash) a state other than the one the hash held: ``from`` is that state,
  or none when the row is new (the DP's first report of it, or its hash had expired).
  A report that repeats a state records nothing, so a full report (a DP reconnecting)
  logs only the rows that changed while it was away.
- ``DNS_ERROR`` rows replace the target's addresses: an address row after a
  ``DNS_ERROR`` comes *from* ``DNS_ERROR``; a ``DNS_ERROR`` comes from Kong's target rule
  over the DP's previous address states (``HEALTHY`` if any was, else ``UNHEALTHY`` if
  any was, else ``HEALTHCHECKS_OFF``).
- Rows that vanish (a target removed, a full report without them, a DP's view expiring)
  record nothing: those are configuration or liveness changes, not health transitions.
- Order is the order the CP stored the reports (the stream id); within one full report,
  the DP's transition ``time`` ascending. ``GET`` lists newest first.
- The stream of an upstream is deleted with the upstream (:mod:`control_plane.store`),
  and nothing is recorded for an upstream the store does not hold (a DP reports a
  deleted upstream until its configuration catches up).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import redis.asyncio as aioredis
from aiohttp import web

from control_plane.admin_requests import decode_offset, encode_offset, page_size
from control_plane.errors import InvalidOffset
from control_plane.health_types import AddressReport
from control_plane.store import redis_reachable

#: Events kept per upstream (exactly: ``XADD MAXLEN``, not ``~``, so the bound is the
#: documented one; trimming a stream this small costs next to nothing).
EVENTS_MAXLEN = 1000

#: Lua shared by the report scripts (``control_plane.health``): ``previous`` gives the
#: state a DP's hash holds for a row before it is written ("" for none); ``record``
#: appends an event when the state changes and the upstream exists. ``ev`` = {key
#: prefix, maxlen, node id, the store's upstreams hash}.
EVENTS_LUA = r"""
local function state_of(value)
  local ok, decoded = pcall(cjson.decode, value)
  if ok and type(decoded) == "table" and type(decoded["state"]) == "string" then
    return decoded["state"]
  end
  return ""
end

local function previous(key, prefix, field, dns)
  local old = redis.call("HGET", key, field)
  if old then return state_of(old) end
  if dns == "1" then
    -- a DNS_ERROR replaces the target's addresses: Kong's rule over their states
    local seen = {}
    local all = redis.call("HGETALL", key)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, #prefix) == prefix then seen[state_of(all[i + 1])] = true end
    end
    for _, s in ipairs({"HEALTHY", "UNHEALTHY", "HEALTHCHECKS_OFF"}) do
      if seen[s] then return s end
    end
    return ""
  end
  -- an address replaces the target's DNS_ERROR row (field = prefix)
  local dns_row = redis.call("HGET", key, prefix)
  if dns_row then return state_of(dns_row) end
  return ""
end

local function record(ev, upstream_id, from, to, value)
  -- not for an upstream already deleted (a DP reports it until its config catches
  -- up): its stream would outlive it
  if from ~= to and redis.call("HEXISTS", ev[4], upstream_id) == 1 then
    redis.call("XADD", ev[1] .. upstream_id, "MAXLEN", ev[2], "*",
               "node", ev[3], "from", from, "entry", value)
  end
end
"""

_STREAM_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def events_key_prefix(prefix: str) -> str:
    """What the upstream id is appended to for its events stream."""
    return f"{prefix}:health:events:"


@dataclass(frozen=True, slots=True)
class HealthEvent:
    """One recorded transition: ``report`` is what the DP reported (the *to* state)."""

    id: str
    node_id: str
    hostname: str
    previous: str | None
    report: AddressReport

    @property
    def recorded_at(self) -> float:
        """Epoch seconds at which the CP stored it (the stream id's milliseconds)."""
        return int(self.id.partition("-")[0]) / 1000

    def to_api(self) -> dict[str, Any]:
        """The Admin API's event object (``docs/health-checks.md``, "Health history")."""
        r = self.report
        return {
            "id": self.id,
            "time": r.time,
            "recorded_at": self.recorded_at,
            "data_plane": {"id": self.node_id, "hostname": self.hostname},
            "target": r.target,
            "target_id": r.target_id,
            "address": r.address,
            "from": self.previous,
            "to": r.state,
            "reason": r.reason,
            "weight": r.weight,
        }


def decode_event(entry_id: bytes | str, fields: Mapping[Any, Any]) -> HealthEvent | None:
    """One stream entry; None when it is not one Ferry wrote."""
    values = {_text(k): _text(v) for k, v in fields.items()}
    try:
        raw = json.loads(values["entry"])
        report = AddressReport(**AddressReport.fields_of(raw))
        return HealthEvent(
            id=_text(entry_id),
            node_id=values["node"],
            hostname=str(raw.get("hostname") or ""),
            previous=values.get("from") or None,
            report=report,
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


async def read_events(
    redis: aioredis.Redis, key: str, size: int, start: str | None = None
) -> tuple[list[HealthEvent], str | None]:
    """Up to ``size`` events of stream ``key``, newest first, from entry id ``start``
    (inclusive; None: the newest); returns them and the id the next page starts at
    (None on the last page). One ``XREVRANGE``; raises ``StoreUnavailable`` when Redis
    is unreachable. Unreadable entries are skipped (they still count toward a page)."""
    async with redis_reachable(redis):
        answer = await redis.xrevrange(key, max=start or "+", min="-", count=size + 1)
    entries: list[tuple[Any, Any]] = list(answer or [])
    following = _text(entries[size][0]) if len(entries) > size else None
    events = [e for e in (decode_event(i, f or {}) for i, f in entries[:size]) if e is not None]
    return events, following


class HealthEventSource(Protocol):
    """Where ``GET /upstreams/{u}/health/events`` reads (a ``TargetHealthStore``)."""

    async def events(
        self, upstream_id: str, size: int, start: str | None = None
    ) -> tuple[list[HealthEvent], str | None]:
        """See :func:`read_events`."""
        ...


async def events_page(
    request: web.Request, source: HealthEventSource, upstream_id: str, base: str
) -> dict[str, Any]:
    """``{"data": [...], "next": base?offset=...|null[, "offset"]}`` with Kong's paging.

    ``size`` as everywhere (``InvalidSize``); ``offset`` is the opaque token of a
    ``next`` link: it names the first event of the page (``InvalidOffset`` when it
    names no stream entry). An offset whose events have been trimmed since gives an
    empty last page.
    """
    size = page_size(request)
    start: str | None = None
    if request.query.get("offset"):
        start = decode_offset(request.query["offset"])
        if not _STREAM_ID.fullmatch(start):
            raise InvalidOffset(request.query["offset"], "bad offset")
    events, following = await source.events(upstream_id, size, start)
    body: dict[str, Any] = {"data": [e.to_api() for e in events], "next": None}
    if following is not None:
        offset = encode_offset(following)
        body["next"] = f"{base}?offset={quote(offset)}"
        body["offset"] = offset
    return body
