"""Idle keep-alive connections to upstream addresses, per address.

The pool only *keeps* connections; the proxy opens them (``loop.create_connection``)
and hands them back with :meth:`UpstreamPool.release` when a response finished on a
connection that may be reused. Ownership is exclusive: a connection is either in use
by exactly one request (not in the pool) or idle in the pool.

Idle connections are handed out most-recently-used first, so under a falling load the
surplus ones age and are closed by the sweep after ``idle_timeout`` seconds. A
connection the upstream closes while idle removes itself via :meth:`discard`.

Concurrency: single event-loop thread; nothing here awaits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, Protocol, TypeVar


class PooledConnection(Protocol):
    """What the pool needs from a connection object."""

    pool_key: str
    idle_since: float

    def is_usable(self) -> bool:
        """Open and not known to be closing (``False`` for one the peer closed)."""
        ...

    def close(self) -> None:
        """Close the connection; it must call :meth:`UpstreamPool.discard` or not be pooled."""
        ...


C = TypeVar("C", bound=PooledConnection)


class UpstreamPool(Generic[C]):
    """Bounded per-key LIFO pools of idle connections.

    ``max_idle_per_key`` bounds the idle connections kept per address (a released
    connection beyond it is closed); ``idle_timeout`` (seconds) closes connections idle
    longer than that (Kong's ``upstream_keepalive_idle_timeout`` default is 60 s).
    """

    def __init__(
        self,
        *,
        max_idle_per_key: int = 256,
        idle_timeout: float = 60.0,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._loop = loop or asyncio.get_running_loop()
        self._idle: dict[str, deque[C]] = {}
        self._max_idle = max_idle_per_key
        self._idle_timeout = idle_timeout
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    def acquire(self, key: str) -> C | None:
        """Take an idle, usable connection for ``key`` (most recent first), or ``None``."""
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.is_usable():
                return conn
            conn.close()
        return None

    def release(self, conn: C) -> bool:
        """Give back a connection whose exchange finished cleanly.

        Returns ``True`` when it was kept; otherwise it has been closed.
        """
        if self._closed or not conn.is_usable():
            conn.close()
            return False
        idle = self._idle.get(conn.pool_key)
        if idle is None:
            idle = self._idle[conn.pool_key] = deque()
        if len(idle) >= self._max_idle:
            conn.close()
            return False
        conn.idle_since = self._loop.time()
        idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)
        return True

    def discard(self, conn: C) -> None:
        """Forget an idle connection (the peer closed it). No-op if it is not idle here."""
        idle = self._idle.get(conn.pool_key)
        if idle:
            try:
                idle.remove(conn)
            except ValueError:
                pass

    def idle_count(self, key: str | None = None) -> int:
        """Idle connections for ``key``, or in total."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(d) for d in self._idle.values())

    def close(self) -> None:
        """Close every idle connection and refuse further releases."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        pools, self._idle = self._idle, {}
        for idle in pools.values():
            for conn in idle:
                conn.close()

    def _sweep_interval(self) -> float:
        return max(0.05, min(self._idle_timeout / 2, 5.0))

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = self._loop.time() - self._idle_timeout
        for key in list(self._idle):
            idle = self._idle[key]
            # Oldest on the left: everything released before ``deadline`` goes.
            while idle and (idle[0].idle_since <= deadline or not idle[0].is_usable()):
                idle.popleft().close()
            if not idle:
                del self._idle[key]
        if self._idle and not self._closed:
            self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep)
