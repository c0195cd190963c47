"""Overload caps per target: Envoy's circuit breakers, counted per address.

An upstream's ``max_requests``, ``max_connections`` and ``max_pending_requests`` (0 =
unlimited, the default: Kong has none of this) bound, for each of its target addresses,

- ``requests``: tries in flight on the address (from the pick to :meth:`Try.end
  <data_plane.upstream_try.Try.end>`), checked when a try is picked
  (:meth:`OverloadGuard.pick`): an address at its cap is passed over for another one
  not at its cap (a re-pick, not a retry); with every usable address at its cap the
  proxy answers 503 with ``X-Ferry-Overloaded: true``;
- ``connections``: open upstream connections to the address (busy, idle in the pool,
  or being opened), checked when a try needs a new connection: at the cap the try
  waits (is *pending*) for one to be released or closed, at most the service's
  ``connect_timeout``;
- ``pending``: tries waiting like that; past ``max_pending_requests`` a try is answered
  503 overloaded at once (without the cap a queue is unbounded, as Envoy's is not).

Ownership, so that every count is released exactly once: a try that counted itself in
``requests`` holds its :class:`TargetLoad` and gives the count back in ``Try.end``; a
connection slot is held by the task opening the connection (a :class:`ConnectionSlot`)
until the connection exists, then by the connection (``_UpstreamConnection.load``)
until it is lost; a pending try holds a :class:`PendingTicket` from its admission to
the end of its wait. Slots and tickets are counted when the try is admitted, before
its task runs (so that tries admitted in one loop turn see each other), and the task's
done callback gives them back if it was cancelled before it ever ran. Loads are kept
per upstream id across config versions (a new version's guard shares them), so a try
or connection of an older version releases the count it took.

Concurrency: the proxy's one event loop; nothing here is thread-safe. With ``--workers
N`` each worker process counts (and caps) on its own, as each Envoy does.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from data_plane.balancers import Address, Balancer, BalancerHandle

__all__ = [
    "OPEN",
    "OVERFLOW",
    "WAIT",
    "CAP_MAX_CONNECTIONS",
    "CAP_MAX_PENDING_REQUESTS",
    "CAP_MAX_REQUESTS",
    "OverloadCaps",
    "ConnectionSlot",
    "OverloadGuard",
    "PendingTicket",
    "TargetLoad",
]

#: The ``cap`` label of ``ferry_upstream_overflow_total``: which cap refused a try.
CAP_MAX_REQUESTS: Final = "max_requests"
CAP_MAX_PENDING_REQUESTS: Final = "max_pending_requests"
#: A pending try's wait for a connection ran out (``connect_timeout``).
CAP_MAX_CONNECTIONS: Final = "max_connections"


#: :meth:`OverloadGuard.admit_connection`'s answers.
OPEN: Final = 0  # a connection slot is reserved: open a connection
WAIT: Final = 1  # at max_connections: wait as a pending try (TargetLoad.wait_turn)
OVERFLOW: Final = 2  # at max_pending_requests too: answer 503 overloaded


class Recyclable(Protocol):
    """What :meth:`TargetLoad.hand_over` needs from a connection."""

    pool_key: str

    def is_usable(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class OverloadCaps:
    """An upstream's three caps, per target address (0 = unlimited)."""

    max_connections: int = 0
    max_pending_requests: int = 0
    max_requests: int = 0

    @property
    def any(self) -> bool:
        return bool(self.max_connections or self.max_pending_requests or self.max_requests)


class TargetLoad:
    """The live counts of one address of one upstream (see the module docstring).

    ``waiters`` are the pending tries, oldest first: each a future that gets either a
    released connection (handed over, with the connection slot it owns) or ``None`` (a
    connection slot reserved for it: open a new connection).
    """

    __slots__ = ("key", "requests", "connections", "pending", "waiters")

    def __init__(self, key: str) -> None:
        self.key = key
        self.requests = 0
        self.connections = 0
        self.pending = 0
        self.waiters: deque[tuple[str, asyncio.Future[Recyclable | None]]] = deque()

    def idle(self) -> bool:
        """Nothing counted: no try, connection or waiter."""
        return not (self.requests or self.connections or self.pending or self.waiters)

    def release_request(self) -> None:
        """A try counted in ``requests`` ended (``Try.end``, once per try)."""
        self.requests -= 1

    def release_connection(self) -> None:
        """A connection slot is given up (the connection closed, or its connect failed
        or was cancelled): the oldest waiter gets the slot (``connections`` unchanged),
        else the count drops."""
        while self.waiters:
            _, fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # the slot passes to it
                return
        self.connections -= 1

    def hand_over(self, conn: Recyclable) -> bool:
        """Give ``conn`` (idle again, still counted) to the oldest waiter for its pool
        key. ``False``: no one waits for it (the caller pools it)."""
        if not conn.is_usable():
            return False
        for i, (key, fut) in enumerate(self.waiters):
            if key == conn.pool_key and not fut.done():
                del self.waiters[i]
                fut.set_result(conn)
                return True
        return False

    async def wait_turn(
        self, pool_key: str, recycle: Callable[[Recyclable], None], max_connections: int,
        ticket: PendingTicket,
    ) -> Recyclable | None:
        """Wait as a pending try for a connection to ``pool_key``'s address: returns a
        usable connection handed over (it owns its slot) or ``None`` (a slot is reserved
        for the caller, who must open a connection or :meth:`release_connection`).

        A handed-over connection that closed before this task ran (its slot was
        released when it closed) is not returned: the wait goes on, or takes a slot
        if one is free under ``max_connections``.

        Cancelled (the client went away, the connect timeout): leaves the queue, and
        gives back what it was given meanwhile (a connection through ``recycle``, a slot
        through :meth:`release_connection`), so a cancelled wait holds nothing. The
        try's place in ``pending`` (``ticket``) is given back when the wait ends.
        """
        loop = asyncio.get_running_loop()
        try:
            return await self._wait(loop, pool_key, recycle, max_connections)
        finally:
            ticket.release()

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, pool_key: str,
        recycle: Callable[[Recyclable], None], max_connections: int,
    ) -> Recyclable | None:
        while True:
            fut: asyncio.Future[Recyclable | None] = loop.create_future()
            entry = (pool_key, fut)
            self.waiters.append(entry)
            try:
                given = await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    handed = fut.result()
                    if handed is None:
                        self.release_connection()
                    else:
                        recycle(handed)
                else:
                    fut.cancel()
                    try:
                        self.waiters.remove(entry)
                    except ValueError:
                        pass
                raise
            if given is None or given.is_usable():
                return given
            if self.connections < max_connections:
                self.connections += 1
                return None


class ConnectionSlot:
    """A connection slot of a target, reserved for a try that opens a connection.

    The count is already taken (by :meth:`OverloadGuard.admit_connection`, or passed
    on by :meth:`TargetLoad.release_connection` to a waiter). Given back exactly once
    (:meth:`release`: the connect failed, timed out or was cancelled, also before its
    task ever ran, through the task's done callback) unless the connection took it
    (:meth:`take`).
    """

    __slots__ = ("_load",)

    def __init__(self, load: TargetLoad) -> None:
        self._load: TargetLoad | None = load

    def take(self) -> TargetLoad:
        """The load the new connection now holds the slot of (released when it is lost)."""
        load = self._load
        assert load is not None
        self._load = None
        return load

    def release(self, _task: object = None) -> None:
        load = self._load
        if load is not None:
            self._load = None
            load.release_connection()


class PendingTicket:
    """A pending try's place in its target's ``pending`` count.

    Taken when the try is admitted to wait (:meth:`OverloadGuard.admit_connection`,
    synchronously: two tries admitted before either task runs both count, so
    ``max_pending_requests`` holds), given back exactly once: when its wait ends
    (:meth:`TargetLoad.wait_turn`), or, for a task cancelled before it ever ran (its
    coroutine body never starts), by the task's done callback (:meth:`release` takes
    the task as its ignored argument).
    """

    __slots__ = ("load", "_held")

    def __init__(self, load: TargetLoad) -> None:
        self.load = load
        self._held = True
        load.pending += 1

    def release(self, _task: object = None) -> None:
        if self._held:
            self._held = False
            self.load.pending -= 1


class OverloadGuard:
    """One upstream's caps and the loads of its addresses (``None`` on a
    :class:`~data_plane.runtime.CompiledUpstream` whose caps are all 0).

    ``pool_prefix`` scopes the upstream's pooled connections when ``max_connections``
    is set: its connections are counted against its own targets, so they are not shared
    with another upstream (or a plain service) that names the same address.
    """

    __slots__ = ("caps", "pool_prefix", "_loads")

    def __init__(
        self, caps: OverloadCaps, upstream_id: str, loads: dict[str, TargetLoad] | None = None
    ) -> None:
        self.caps = caps
        self.pool_prefix = f"cap:{upstream_id}/"
        #: Shared with the guard of the upstream's previous config version.
        self._loads: dict[str, TargetLoad] = {} if loads is None else loads

    @classmethod
    def carried_over(
        cls, caps: OverloadCaps, upstream_id: str, old: OverloadGuard | None
    ) -> OverloadGuard | None:
        """The guard of a new config version: ``None`` when every cap is 0, else one
        sharing ``old``'s loads (tries and connections in flight stay counted)."""
        if not caps.any:
            return None
        return cls(caps, upstream_id, old._loads if old is not None else None)

    def load(self, key: str) -> TargetLoad:
        """The load of the address ``key`` (made on first use)."""
        load = self._loads.get(key)
        if load is None:
            load = self._loads[key] = TargetLoad(key)
        return load

    def admit_connection(self, load: TargetLoad) -> int:
        """A try needs a new connection to ``load``'s address (none idle): reserve a
        slot (:data:`OPEN`: the caller holds it), or say it must wait (:data:`WAIT`: the
        caller takes a :class:`PendingTicket` at once) or be refused (:data:`OVERFLOW`).
        Only called when ``max_connections`` is set."""
        caps = self.caps
        if load.connections < caps.max_connections:
            load.connections += 1
            return OPEN
        if caps.max_pending_requests and load.pending >= caps.max_pending_requests:
            return OVERFLOW
        return WAIT

    def loads(self) -> dict[str, TargetLoad]:
        """A copy of every address's load seen so far (what tests look at)."""
        return dict(self._loads)

    def pick(self, balancer: Balancer, handle: BalancerHandle, first: Address) -> tuple[Address | None, TargetLoad | None]:
        """Count a try on ``first`` (the balancer's pick) if it is under
        ``max_requests``; else pick again among the other usable addresses, in the
        balancer's own order, until one is under its cap. Returns the address and its
        load (counted: the try releases it), or ``(None, None)``: every usable address
        is at its cap (the proxy answers 503 overloaded).

        Re-picks are not retries: ``handle.retries`` is untouched, and the addresses
        passed over are not left in ``handle.tried`` (they were not tried).
        """
        cap = self.caps.max_requests
        load = self.load(first.key)
        if cap == 0 or load.requests < cap:
            load.requests += 1
            return first, load
        tried = handle.tried
        before = set(tried)
        before.discard(first.key)
        seen = {first.key}
        chosen: Address | None = None
        for _ in range(len(balancer.addresses)):
            address = balancer.pick(handle)
            if address is None or address.key in seen:
                break  # the balancer went round: every usable address was offered
            seen.add(address.key)
            load = self.load(address.key)
            if load.requests < cap:
                chosen = address
                break
        tried.clear()
        tried.update(before)
        if chosen is None:
            return None, None
        tried.add(chosen.key)
        load.requests += 1
        return chosen, load
