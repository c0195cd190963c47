"""HTTP/2 connections to targets, pooled and multiplexed: what gRPC proxying sends a
``grpc``/``grpcs`` service's requests over (one connection carries many streams).

- :class:`H2UpstreamPool` keeps connections (:mod:`data_plane.h2_connection`) per
  :class:`H2Target` (address, TLS identity, server name): :meth:`H2UpstreamPool.open_stream`
  puts the stream on a connection with a free slot (fewest of the peer's
  ``SETTINGS_MAX_CONCURRENT_STREAMS`` and the pool's own cap), opens a new connection
  when all are full (concurrent openers wait for one connect instead of each
  dialling; a failed connect fails all of them), and closes a connection idle for
  ``idle_timeout`` seconds. A connection that received GOAWAY takes no new stream and
  closes when its last stream ends; a connection that fails fails its streams and
  leaves the pool.
- TLS: the :class:`~data_plane.upstream_tls.UpstreamTls` of the target must offer ALPN
  ``h2`` (``TlsEntities.for_service(..., alpn=("h2",))``): HTTP/1.1 identities never
  share a context or a pool key with HTTP/2 ones.
- What a stream offers (send with flow control, end with trailers, response headers,
  data chunks acknowledged as they are read, trailers, cancel) and how it fails:
  :class:`~data_plane.h2_connection.H2Stream`.

Single event-loop thread; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from data_plane.h2_connection import (
    DEFAULT_CONNECTION_WINDOW,
    DEFAULT_STREAM_WINDOW,
    H2ClientConnection,
    H2ConnectError,
    H2Stream,
    H2StreamError,
    Header,
    connect,
)
from data_plane.upstream_tls import UpstreamTls

__all__ = [
    "H2ClientConnection",
    "H2ConnectError",
    "H2Stream",
    "H2StreamError",
    "H2Target",
    "H2UpstreamPool",
    "Header",
    "connect",
]


@dataclass(frozen=True, slots=True)
class H2Target:
    """Where a pooled connection goes: an address, and for TLS the identity and the
    server name (connections of different identities are never shared)."""

    host: str
    port: int
    tls: UpstreamTls | None = None
    server_name: str | None = None

    @property
    def key(self) -> str:
        netloc = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        if self.tls is None:
            return f"h2c/{netloc}"
        return f"{self.tls.pool_prefix}{self.server_name or self.host}/{netloc}"


class H2UpstreamPool:
    """HTTP/2 connections per :class:`H2Target`, multiplexed (see the module docstring).

    ``max_streams_per_connection``: the pool's own cap on streams per connection
    (``None``: the peer's ``SETTINGS_MAX_CONCURRENT_STREAMS`` alone). ``idle_timeout``:
    seconds a connection without streams stays open.
    """

    def __init__(
        self,
        *,
        idle_timeout: float = 60.0,
        max_streams_per_connection: int | None = None,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
    ) -> None:
        self.idle_timeout = idle_timeout
        self._cap = max_streams_per_connection
        self._stream_window = stream_window
        self._connection_window = connection_window
        self._connections: dict[str, list[H2ClientConnection]] = {}
        #: key -> the connect in progress; openers that find no free slot wait for it.
        self._connecting: dict[str, asyncio.Future[BaseException | None]] = {}
        self._closed = False

    def connections(self, target: H2Target) -> list[H2ClientConnection]:
        """The open connections to ``target`` (a copy)."""
        return list(self._connections.get(target.key, ()))

    async def open_stream(
        self,
        target: H2Target,
        headers: Iterable[tuple[bytes | str, bytes | str]],
        *,
        end_stream: bool = False,
        connect_timeout: float,
    ) -> H2Stream:
        """Send ``headers`` on a new stream to ``target``, connecting when no pooled
        connection has a free slot. Raises as :func:`connect` does, or
        :class:`H2StreamError` for headers ``h2`` refuses."""
        if self._closed:
            raise H2ConnectError("the pool is closed")
        headers = list(headers)
        key = target.key
        while True:
            for conn in self._connections.get(key, ()):
                if conn.has_capacity:
                    return conn.open_stream(headers, end_stream=end_stream)
            pending = self._connecting.get(key)
            if pending is not None:
                error = await asyncio.shield(pending)
                if error is not None:
                    raise error
                continue
            await self._connect(target, connect_timeout)

    async def _connect(self, target: H2Target, timeout: float) -> None:
        key = target.key
        pending: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self._connecting[key] = pending
        try:
            conn = await connect(
                target.host, target.port, tls=target.tls, server_name=target.server_name,
                timeout=timeout, stream_window=self._stream_window,
                connection_window=self._connection_window, max_streams=self._cap,
            )
        except asyncio.CancelledError:
            pending.set_result(None)  # the waiters try for themselves
            raise
        except BaseException as exc:
            pending.set_result(exc)  # a failed connect fails everyone who waited for it
            raise
        finally:
            del self._connecting[key]
        if self._closed:
            conn.close()
            pending.set_result(H2ConnectError("the pool is closed"))
            raise H2ConnectError("the pool is closed")
        conn.idle_timeout = self.idle_timeout
        self._connections.setdefault(key, []).append(conn)
        conn.add_close_callback(lambda c: self._forget(key, c))
        conn._after_stream()  # starts its idle clock until a stream arrives
        pending.set_result(None)

    def _forget(self, key: str, conn: H2ClientConnection) -> None:
        conns = self._connections.get(key)
        if conns is not None and conn in conns:
            conns.remove(conn)
            if not conns:
                del self._connections[key]

    def close(self) -> None:
        """Close every connection (their open streams fail)."""
        self._closed = True
        for conns in list(self._connections.values()):
            for conn in list(conns):
                conn.close()
        self._connections.clear()
