"""Health-check sharding: which data planes probe which targets, and sharing what they find.

Envoy's HDS answer to N × M probing. With ``--health-check-replicas K`` (K ≥ 1)
each target of an upstream with active checks on is probed by K data planes
(DPs); the others take those DPs' verdicts, so probe load grows with the
targets, not with DPs × targets. K = 0 (the default) leaves this module out:
no CP message is sent and every DP probes every target.

**Live membership, cluster-wide.** Several control planes (CPs) share one
Redis and each DP streams to one of them, so the DPs that may probe are kept in
Redis, not in a CP's memory:

==========================================  ===========================================
``{p}:health:live``                         sorted set: node id → expiry (epoch seconds,
                                            Redis's clock = now + ``ttl``); refreshed on
                                            ``Hello``, every ``Ping`` and every report
``{p}:health:live:streams``                 hash node id → token of the stream that
                                            refreshed it last (removal is conditional on
                                            it, so a DP that reconnected elsewhere is not
                                            removed when its old stream ends)
``{p}:health:verdicts``                     stream of shared probe verdicts (``MAXLEN ~``):
                                            ``origin`` (node id), ``hostname``,
                                            ``control_plane``, ``entries`` (JSON list of
                                            ``AddressReport`` fields)
==========================================  ===========================================

A stream that ends removes its DP at once; readers ignore (and prune) members
whose expiry has passed. Each CP reads the set every ``membership_interval``
seconds and at once when one of its own streams opens or closes; the DPs
connected to this CP count as live whatever Redis says.

**Assignment.** A target is keyed ``"{upstream_id}|{target}"`` with the target as
the DP spells it (``host:port``, host lower-cased). Only targets of weight > 0
of upstreams with ``active.healthy.interval`` or ``active.unhealthy.interval`` > 0
are assigned. Each key goes to the K live nodes with the highest
``sha256(node_id + "|" + key)`` (rendezvous hashing): every CP computes the same
assignment from the same membership, a DP that leaves moves only its own keys,
and with K ≥ the number of live DPs every DP probes every key. Each DP stream
gets ``ProbeAssignment`` with its keys after its first message, and again
whenever its set changes.

**Verdicts.** A report from prober X counts as a verdict for the entries whose
key is assigned to X, whose state is ``HEALTHY``/``UNHEALTHY`` and whose reason
starts with ``"active:"`` (X's own probes; full reports included). They are
appended to the verdicts stream; every CP follows it and hands each entry to
each of its streams except X's, without the keys that stream's DP probes
itself, with the reason naming X (``"active (dp2): 2 http_failures"``, see
:func:`relayed_reason`). When a DP stops probing keys (its first assignment
after connecting, or a membership change), it is sent the current state of
those keys from its new probers' stored health (``{p}:health:dp:{node_id}``,
see :mod:`control_plane.health`) as soon as a prober has stored some: their
probe verdicts, or HEALTHY when their probes have not found the target failing
(a passive ejection on the prober is not handed over; see :func:`_best`).

All classes are for one event loop; none is thread-safe.

Why past ~600 lines: the pure assignment (rendezvous hashing, hand-over ranking) and
the Redis-backed parts (live membership, per-stream probe state, the coordinator that
re-assigns) are one protocol whose invariants this docstring states once; the pure
half (~300 lines) could become its own module if it grows.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import uuid
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from control_plane.health import DEFAULT_HEALTH_TTL, TargetHealthStore
from control_plane.health_types import AddressReport, AssignmentUpdate, ProbeUpdate, VerdictUpdate
from control_plane.snapshot import Snapshot, SnapshotStore
from control_plane.stream_follower import StreamFollower

log = logging.getLogger("ferry.control_plane.probes")

#: Seconds between two reads of the live set (membership changes on other CPs).
DEFAULT_MEMBERSHIP_INTERVAL = 1.0

#: Entries the verdicts stream keeps (approximately; ``MAXLEN ~``).
VERDICTS_MAXLEN = 10_000

#: Verdict batches queued for one DP stream before the oldest are dropped.
STREAM_QUEUE = 256

#: The states a verdict carries; the others say nothing a prober found.
VERDICT_STATES = frozenset({"HEALTHY", "UNHEALTHY"})

#: How the reason of a DP's own active-probe transition starts.
OWN_PROBE_REASON = "active:"


# ------------------------------------------------------------- pure functions


def probe_key(upstream_id: str, target: str) -> str:
    """The assignment key of a target: ``upstream_id|target``, spelled as the DP does."""
    return f"{upstream_id}|{target.lower()}"


def active_checks_on(upstream: Mapping[str, Any]) -> bool:
    """True when the upstream has an active probe loop (a healthy or unhealthy interval > 0)."""
    active = (upstream.get("healthchecks") or {}).get("active") or {}
    intervals = ((active.get("healthy") or {}).get("interval"), (active.get("unhealthy") or {}).get("interval"))
    return any((v or 0) > 0 for v in intervals)


def probe_keys(snapshot: Snapshot | None) -> tuple[str, ...]:
    """The sorted keys of every target to assign in ``snapshot``.

    Targets of weight > 0 whose upstream has active checks on; weight-0 targets
    are never probed, and passive-only upstreams have nothing to assign.
    """
    if snapshot is None:
        return ()
    checked: set[str] = set()
    targets: list[dict[str, Any]] = []
    for resource in snapshot.resources:
        if resource.kind == "upstreams":
            if active_checks_on(json.loads(resource.body)):
                checked.add(resource.id)
        elif resource.kind == "targets":
            targets.append(json.loads(resource.body))
    keys: set[str] = set()
    for target in targets:
        upstream_id = str((target.get("upstream") or {}).get("id") or "")
        weight = target.get("weight")
        if upstream_id in checked and (weight is None or weight > 0) and target.get("target"):
            keys.add(probe_key(upstream_id, str(target["target"])))
    return tuple(sorted(keys))


def _score(node_id: str, key: str) -> bytes:
    return hashlib.sha256(f"{node_id}|{key}".encode()).digest()


def rendezvous(key: str, nodes: Iterable[str], replicas: int) -> tuple[str, ...]:
    """The ``replicas`` nodes with the highest ``sha256(node + "|" + key)``, highest first.

    All of them (fewer than ``replicas``) when there are not enough nodes.
    """
    unique = set(nodes)
    return tuple(heapq.nlargest(replicas, unique, key=lambda node: _score(node, key)))


@dataclass(frozen=True, slots=True)
class Assignment:
    """Who probes what: ``probers`` maps each key to its nodes, ``targets`` the reverse.

    A node missing from ``targets`` probes nothing; a key missing from
    ``probers`` is not assigned (not in the config, or no active checks).
    """

    replicas: int
    members: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    probers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    targets: Mapping[str, frozenset[str]] = field(default_factory=dict)
    key_set: frozenset[str] = frozenset()

    def targets_of(self, node_id: str) -> frozenset[str]:
        """The keys ``node_id`` probes."""
        return self.targets.get(node_id, frozenset())

    def probes(self, node_id: str, key: str) -> bool:
        """Whether ``node_id`` is one of the probers of ``key``."""
        return node_id in self.probers.get(key, ())


def assign(keys: Iterable[str], members: Iterable[str], replicas: int) -> Assignment:
    """Assign every key to ``replicas`` of ``members`` by :func:`rendezvous` hashing."""
    if replicas < 1:
        raise ValueError("replicas must be at least 1")
    nodes = tuple(sorted(set(members)))
    sorted_keys = tuple(sorted(set(keys)))
    probers: dict[str, tuple[str, ...]] = {}
    by_node: dict[str, set[str]] = {node: set() for node in nodes}
    for key in sorted_keys:
        chosen = rendezvous(key, nodes, replicas)
        probers[key] = chosen
        for node in chosen:
            by_node[node].add(key)
    return Assignment(
        replicas=replicas,
        members=nodes,
        keys=sorted_keys,
        probers=probers,
        targets={node: frozenset(ks) for node, ks in by_node.items()},
        key_set=frozenset(sorted_keys),
    )


def relayed_reason(reason: str, state: str, hostname: str) -> str:
    """The reason a shared verdict carries on the DPs that take it: names its source.

    ``"active: 2 http_failures"`` from dp2 → ``"active (dp2): 2 http_failures"``;
    ``"passive: 3 timeouts"`` → ``"passive (dp2): 3 timeouts"``; ``"manual"`` →
    ``"manual (dp2)"``; ``""`` (the prober has seen no transition) →
    ``"active (dp2): healthy"``. A reason that already names a source, or any
    other free text, is kept as it is.
    """
    source = hostname or "another data plane"
    if not reason:
        return f"active ({source}): {state.lower()}"
    head, sep, rest = reason.partition(":")
    if not head or " " in head or "(" in head:
        return reason
    return f"{head} ({source}){sep}{rest}"


def _handover_rank(entry: AddressReport) -> tuple[int, float] | None:
    """How much a prober's stored entry says about what its probes found; None: nothing.

    Its own probe verdict (``"active: ..."``) ranks first, one it took from
    another prober (``"active (dp1): ..."``) next, then any other HEALTHY state
    (its probes have not found the address failing since: no transition yet,
    a manual override, a closed half-open breaker). An UNHEALTHY state for any
    other reason (passive, manual) is that prober's own traffic or an override
    every DP got anyway: it says nothing about the probes. Ties go to the latest.
    """
    if entry.state not in VERDICT_STATES:
        return None
    if entry.reason.startswith(OWN_PROBE_REASON):
        return (2, entry.time)
    if entry.reason.startswith("active"):
        return (1, entry.time)
    if entry.state == "HEALTHY":
        return (0, entry.time)
    return None


def _best(candidates: Sequence[tuple[str, AddressReport]]) -> list[AddressReport]:
    """Per address, the state to hand over from probers' ``(hostname, entry)`` pairs.

    Ranked by :func:`_handover_rank`; reasons are rewritten by :func:`relayed_reason`.
    """
    by_address: dict[str, tuple[tuple[int, float], str, AddressReport]] = {}
    for hostname, entry in candidates:
        rank = _handover_rank(entry)
        if rank is None:
            continue
        held = by_address.get(entry.address)
        if held is None or rank > held[0]:
            by_address[entry.address] = (rank, hostname, entry)
    return [
        replace(entry, reason=relayed_reason(entry.reason, entry.state, hostname))
        for _, (_, hostname, entry) in sorted(by_address.items())
    ]


# ---------------------------------------------------------------- value types




@dataclass(frozen=True, slots=True)
class VerdictBatch:
    """One entry of the verdicts stream: what the prober ``origin`` found."""

    origin: str
    hostname: str
    entries: tuple[AddressReport, ...]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def verdicts_from_entry(fields: Mapping[Any, Any]) -> VerdictBatch | None:
    """Decode one verdicts-stream entry; None when it is not one Ferry wrote."""
    values = {_text(k): _text(v) for k, v in fields.items()}
    try:
        entries: list[AddressReport] = []
        for raw in json.loads(values["entries"]):
            entry = AddressReport.normalised(**AddressReport.fields_of(raw))
            if entry is not None:
                entries.append(entry)
        return VerdictBatch(values["origin"], values.get("hostname", ""), tuple(entries))
    except (KeyError, ValueError, TypeError):
        return None


# ------------------------------------------------------------- Redis: members

# KEYS[1] = live set, KEYS[2] = stream tokens. ARGV = ttl_ms, node_id, token.
_REFRESH_LUA = r"""
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call("ZADD", KEYS[1], now + tonumber(ARGV[1]) / 1000, ARGV[2])
redis.call("HSET", KEYS[2], ARGV[2], ARGV[3])
return 1
"""

# Remove node ARGV[1] unless another stream (not token ARGV[2]) refreshed it since.
_REMOVE_LUA = r"""
if redis.call("HGET", KEYS[2], ARGV[1]) == ARGV[2] then
  redis.call("ZREM", KEYS[1], ARGV[1])
  redis.call("HDEL", KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# Prune expired members, return the live ones.
_MEMBERS_LUA = r"""
local t = redis.call("TIME")
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local expired = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", now)
for _, id in ipairs(expired) do
  redis.call("ZREM", KEYS[1], id)
  redis.call("HDEL", KEYS[2], id)
end
return redis.call("ZRANGE", KEYS[1], 0, -1)
"""


class LiveMembership:
    """The cluster-wide set of live DPs in Redis. Methods raise ``RedisError``/``OSError``.

    Expiry uses Redis's clock (``TIME``), so CPs with skewed clocks agree.
    """

    def __init__(self, redis: aioredis.Redis, prefix: str = "ferry", *, ttl: float = DEFAULT_HEALTH_TTL) -> None:
        if ttl <= 0:
            raise ValueError("ttl must be positive")
        self.key = f"{prefix}:health:live"
        self.streams_key = f"{prefix}:health:live:streams"
        self._ttl_ms = max(1, round(ttl * 1000))
        self._refresh = redis.register_script(_REFRESH_LUA)
        self._remove = redis.register_script(_REMOVE_LUA)
        self._members = redis.register_script(_MEMBERS_LUA)

    async def refresh(self, node_id: str, token: str) -> None:
        """``node_id`` is live for ``ttl`` more seconds, on the stream ``token``."""
        await self._refresh(keys=[self.key, self.streams_key], args=[self._ttl_ms, node_id, token])

    async def remove(self, node_id: str, token: str) -> bool:
        """Remove ``node_id`` unless a stream other than ``token`` refreshed it last."""
        result = await self._remove(keys=[self.key, self.streams_key], args=[node_id, token])
        return bool(int(result))

    async def members(self) -> tuple[str, ...]:
        """The live node ids, sorted (expired ones are pruned)."""
        raw = await self._members(keys=[self.key, self.streams_key])
        return tuple(sorted(_text(member) for member in raw))


# --------------------------------------------------------------- per stream


class ProbeStream:
    """Sharding for one DP stream: liveness, its reports, and the updates it has to send.

    The servicer calls :meth:`alive` on ``Hello`` and each ``Ping``,
    :meth:`reported` after storing each ``HealthReport``, sends what :meth:`get`
    returns (after the stream's first message), and calls :meth:`close` when the
    stream ends. None of them raises on Redis errors.
    """

    def __init__(self, coordinator: ProbeCoordinator, node_id: str, hostname: str, maxsize: int) -> None:
        self._coordinator = coordinator
        self.node_id = node_id
        self.hostname = hostname
        #: Identifies this stream in the live set (see :meth:`LiveMembership.remove`).
        self.token = uuid.uuid4().hex
        #: The keys of the last assignment queued; None before the first (the DP probes all).
        self.sent: frozenset[str] | None = None
        #: The coordinator's assignment this stream was last brought up to date with.
        self.seen: Assignment | None = None
        #: Keys this DP stopped probing whose current state it has not been sent yet.
        self.pending: set[str] = set()
        self.dropped = 0
        self._items: deque[ProbeUpdate] = deque()
        self._maxsize = maxsize
        self._ready = asyncio.Event()
        self._refresh_failed = False
        self.closed = False

    async def alive(self) -> None:
        """The DP is alive: keep it in the live set."""
        await self._coordinator._refresh(self)

    async def reported(self, full: bool, entries: Sequence[AddressReport]) -> None:
        """The DP reported ``entries``: keep it live, share its own probe verdicts."""
        await self._coordinator._reported(self, entries)

    async def get(self) -> ProbeUpdate:
        """The next update to send, in order; waits for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()

    def close(self) -> None:
        """The stream ended: drop pending updates, leave the live set. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._items.clear()
        self._coordinator._closed(self)

    # -- for the coordinator

    def _offer_assignment(self, update: AssignmentUpdate) -> None:
        # Only the newest assignment matters. One still waiting is replaced where
        # it stands: the hand-over verdicts queued after it must still reach the
        # DP after an assignment without those targets, or the DP ignores them.
        for index, item in enumerate(self._items):
            if isinstance(item, AssignmentUpdate):
                self._items[index] = update
                break
        else:
            self._items.append(update)
        self._ready.set()

    def _offer_verdicts(self, entries: Sequence[AddressReport]) -> None:
        verdicts = sum(isinstance(item, VerdictUpdate) for item in self._items)
        if verdicts >= self._maxsize:
            oldest = next(i for i, item in enumerate(self._items) if isinstance(item, VerdictUpdate))
            del self._items[oldest]
            self.dropped += 1
            log.warning("data plane %s is not keeping up; dropped its oldest health verdicts", self.node_id)
        self._items.append(VerdictUpdate(tuple(entries)))
        self._ready.set()


# ------------------------------------------------------------ the coordinator


class ProbeCoordinator:
    """Keeps the assignment current and shares verdicts, for this CP's DP streams.

    ``replicas`` is K (≥ 1). ``ttl`` is how long a DP stays live without a
    ``Hello``, ``Ping`` or report (the health report TTL). ``health`` supplies
    the stored views for hand-overs. Owns two background tasks (the membership
    loop and the verdicts follower): :meth:`start` before opening streams,
    :meth:`stop` before closing the Redis client.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        snapshots: SnapshotStore,
        health: TargetHealthStore,
        *,
        replicas: int,
        prefix: str = "ferry",
        ttl: float = DEFAULT_HEALTH_TTL,
        membership_interval: float = DEFAULT_MEMBERSHIP_INTERVAL,
        cp_id: str = "",
        queue_size: int = STREAM_QUEUE,
    ) -> None:
        if replicas < 1:
            raise ValueError("replicas must be at least 1 (0 turns sharding off: do not start this)")
        if membership_interval <= 0:
            raise ValueError("membership_interval must be positive")
        self._redis = redis
        self._snapshots = snapshots
        self._health = health
        self.replicas = replicas
        self.membership = LiveMembership(redis, prefix, ttl=ttl)
        self.verdicts_stream_key = f"{prefix}:health:verdicts"
        self._interval = membership_interval
        self._cp_id = cp_id
        self._queue_size = queue_size
        self._follower = StreamFollower(
            redis, self.verdicts_stream_key, verdicts_from_entry, self.deliver, what="health verdicts"
        )
        self._streams: set[ProbeStream] = set()
        self._remote: tuple[str, ...] = ()
        self._redis_failed = False
        self._assignment = Assignment(replicas)
        self._keys_of: tuple[int, str] | None = None
        self._keys: tuple[str, ...] = ()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._removals: set[asyncio.Task[None]] = set()
        self._stopped = False

    @property
    def assignment(self) -> Assignment:
        """The assignment as this CP last computed it."""
        return self._assignment

    async def start(self) -> None:
        """Start following verdicts (raises on a Redis error) and computing assignments."""
        await self._follower.start()
        self._task = asyncio.create_task(self._run(), name="ferry-probe-assignment")

    async def stop(self) -> None:
        """Finish pending live-set removals, then stop both tasks. Idempotent."""
        self._stopped = True
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        if self._task is not None:
            # The flag as well as the cancel: on Python 3.11 a cancel that lands as
            # a Redis command completes is lost (asyncio.wait_for in redis-py).
            self._wake.set()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._follower.stop()

    def open(self, node_id: str, hostname: str) -> ProbeStream:
        """A DP stream opened (after its ``Hello``): its first assignment follows shortly."""
        stream = ProbeStream(self, node_id, hostname, self._queue_size)
        self._streams.add(stream)
        self._wake.set()
        return stream

    # -- verdicts

    def deliver(self, batch: VerdictBatch) -> None:
        """Hand a prober's verdicts to every local stream but the prober's, minus the keys it probes."""
        assignment = self._assignment
        for stream in list(self._streams):
            if stream.node_id == batch.origin:
                continue
            entries: list[AddressReport] = []
            for entry in batch.entries:
                key = probe_key(entry.upstream_id, entry.target)
                if assignment.probes(stream.node_id, key):
                    continue  # it finds out for itself
                entries.append(replace(entry, reason=relayed_reason(entry.reason, entry.state, batch.hostname)))
                if assignment.probes(batch.origin, key):
                    stream.pending.discard(key)  # as fresh as a hand-over
            if entries:
                stream._offer_verdicts(entries)

    async def _reported(self, stream: ProbeStream, entries: Sequence[AddressReport]) -> None:
        await self._refresh(stream)
        assignment = self._assignment
        own = tuple(
            entry
            for entry in entries
            if entry.state in VERDICT_STATES
            and entry.reason.startswith(OWN_PROBE_REASON)
            and assignment.probes(stream.node_id, probe_key(entry.upstream_id, entry.target))
        )
        if not own:
            return
        fields: dict[Any, Any] = {
            "origin": stream.node_id,
            "hostname": stream.hostname,
            "control_plane": self._cp_id,
            "entries": json.dumps([asdict(entry) for entry in own], separators=(",", ":")),
        }
        try:
            await self._redis.xadd(self.verdicts_stream_key, fields, maxlen=VERDICTS_MAXLEN, approximate=True)
        except (RedisError, OSError) as exc:
            log.warning("could not share the probe verdicts of data plane %s: %s", stream.node_id, exc)

    # -- membership

    async def _refresh(self, stream: ProbeStream) -> None:
        if stream.closed or self._stopped:
            return
        try:
            await self.membership.refresh(stream.node_id, stream.token)
        except (RedisError, OSError) as exc:
            if not stream._refresh_failed:
                log.warning("could not mark data plane %s live for health-check sharding: %s", stream.node_id, exc)
            stream._refresh_failed = True
            return
        stream._refresh_failed = False

    def _closed(self, stream: ProbeStream) -> None:
        self._streams.discard(stream)
        if self._stopped:
            return
        task = asyncio.create_task(self._remove(stream), name=f"ferry-probe-leave-{stream.node_id}")
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def _remove(self, stream: ProbeStream) -> None:
        try:
            await self.membership.remove(stream.node_id, stream.token)
        except (RedisError, OSError) as exc:
            # Its entry expires after the TTL instead.
            log.warning("could not remove data plane %s from the live set: %s", stream.node_id, exc)
        self._wake.set()

    # -- the loop

    async def _run(self) -> None:
        while not self._stopped:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad tick stop sharding
                log.exception("health-check assignment failed; retrying")
            await self._wait()

    async def _wait(self) -> None:
        if not self._wake.is_set():
            current = self._snapshots.current
            held = (current.version, current.hash) if current is not None else (0, "")
            waiters = {
                asyncio.ensure_future(self._wake.wait()),
                asyncio.ensure_future(self._snapshots.wait_for_change(*held)),
            }
            try:
                await asyncio.wait(waiters, timeout=self._interval, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)
        self._wake.clear()

    def _current_keys(self) -> tuple[str, ...]:
        current = self._snapshots.current
        identity = (current.version, current.hash) if current is not None else None
        if identity != self._keys_of:
            self._keys = probe_keys(current)
            self._keys_of = identity
        return self._keys

    async def _tick(self) -> None:
        try:
            self._remote = await self.membership.members()
            if self._redis_failed:
                log.info("health-check sharding sees the live data planes again")
            self._redis_failed = False
        except (RedisError, OSError) as exc:
            if not self._redis_failed:
                log.warning("cannot read the live data planes (%s); assigning from the last known set", exc)
            self._redis_failed = True
        # This CP's own streams are live whatever Redis says (or does not say yet).
        members = tuple(sorted(set(self._remote) | {s.node_id for s in self._streams}))
        keys = self._current_keys()
        if (members, keys) != (self._assignment.members, self._assignment.keys):
            self._assignment = assign(keys, members, self.replicas)
            log.debug(
                "health-check assignment: %d targets over %d live data planes, %d each",
                len(keys), len(members), self.replicas,
            )
        for stream in list(self._streams):
            if stream.seen is not self._assignment:
                self._push_assignment(stream)
        await self._hand_over()

    def _push_assignment(self, stream: ProbeStream) -> None:
        """Queue the stream's share when it changed; note what it stopped probing."""
        assignment = self._assignment
        stream.seen = assignment
        mine = assignment.targets_of(stream.node_id)
        if stream.sent != mine:
            before = assignment.key_set if stream.sent is None else stream.sent
            stream.pending |= before - mine
            stream.sent = mine
            stream._offer_assignment(AssignmentUpdate(tuple(sorted(mine)), self.replicas))
        stream.pending &= assignment.key_set
        stream.pending -= mine

    async def _hand_over(self) -> None:
        """Send streams the current state of keys they stopped probing, from the probers' views."""
        assignment = self._assignment
        wanted: dict[str, set[str]] = {}
        for stream in self._streams:
            for key in stream.pending:
                for node in assignment.probers.get(key, ()):
                    if node != stream.node_id:
                        wanted.setdefault(node, set()).add(key)
        if not wanted:
            return
        try:
            stored = await self._health.target_entries(wanted)
        except (RedisError, OSError) as exc:
            log.warning("cannot read the probers' health for a hand-over (%s); retrying", exc)
            return
        found: dict[str, list[tuple[str, str, AddressReport]]] = {}
        for node, (hostname, entries) in stored.items():
            for entry in entries:
                found.setdefault(probe_key(entry.upstream_id, entry.target), []).append((node, hostname, entry))
        for stream in list(self._streams):
            verdicts: list[AddressReport] = []
            for key in sorted(stream.pending):
                candidates = [
                    (hostname, entry)
                    for node, hostname, entry in found.get(key, ())
                    if node != stream.node_id and assignment.probes(node, key)
                ]
                if not candidates:
                    continue  # no prober has reported it yet: try again next time
                # Reported, but perhaps with nothing probes decided (a passive
                # ejection): then the DP keeps its own last state.
                stream.pending.discard(key)
                verdicts += _best(candidates)
            if verdicts:
                stream._offer_verdicts(verdicts)
