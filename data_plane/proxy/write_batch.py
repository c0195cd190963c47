"""Writes to clients and targets made at the end of the event loop's iteration.

Why: on loopback (and on any host whose peers sleep between requests) most of a
proxy's kernel time is waking the reader of each write: ``sock_def_readable`` →
an inter-processor interrupt when the peer's core is idle. One iteration of the
loop handles every socket that was ready (tens of them at load); written as they
are produced, each response wakes its client anew a few microseconds after the
last one went back to sleep. Gathered and written together at the iteration's
end, a batch wakes each peer process once. ``docs/performance.md`` § Writes at
the end of the iteration has the figures.

Contract:

- A connection queues its bytes (:meth:`WriteBatch.client` /
  :meth:`WriteBatch.upstream` register it the first time in an iteration; it
  keeps the bytes itself and appends to them until flushed). Order on one
  connection is kept: every later write of that connection in the same
  iteration is appended to the same queue, and a connection that closes flushes
  its queue first (an abort drops it, as an abort drops the transport's buffer).
- :meth:`WriteBatch.flush` runs once per iteration with something queued (one
  ``call_soon``, which uvloop and asyncio run before they poll for I/O again),
  targets first (their round trip is the longer one), then clients. Nothing
  waits longer than the rest of the iteration that produced it, so no timeout
  is affected: the bytes are out before the loop looks at a socket or a timer
  again.
- Flow control is unchanged: ``pause_writing`` still comes from the transport,
  at the flush; at most one iteration's reads are held here.

All on the proxy's one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data_plane.proxy.dispatch import _Dispatch
    from data_plane.proxy.upstream import _UpstreamConnection

log = logging.getLogger(__name__)


class WriteBatch:
    """The connections with bytes queued in the loop's current iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._clients: list[_Dispatch] = []
        self._upstreams: list[_UpstreamConnection] = []
        self._armed = False

    def client(self, conn: _Dispatch) -> None:
        """``conn`` queued its first bytes of this iteration."""
        self._clients.append(conn)
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self.flush)

    def upstream(self, conn: _UpstreamConnection) -> None:
        """``conn`` queued its first bytes of this iteration."""
        self._upstreams.append(conn)
        if not self._armed:
            self._armed = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every queued connection's bytes (each in one call)."""
        self._armed = False
        upstreams = self._upstreams
        if upstreams:
            self._upstreams = []
            for up in upstreams:
                try:
                    up.flush_output()
                except Exception:  # one broken transport must not hold the others' bytes
                    log.exception("proxy bug while writing to a target")
                    up.abandon()
        clients = self._clients
        if clients:
            self._clients = []
            for client in clients:
                try:
                    client.flush_output()
                except Exception:
                    log.exception("proxy bug while writing to a client")
                    client._abort()
