"""The proxy listener: :class:`ProxyServer` and its :class:`ClientTimeouts`.

Contract: a :class:`ProxyServer` is built and started on the loop that runs the proxy
and owns everything the connections share: the upstream pool, the precomputed error
answers, the metrics, the access log, the set of client connections and the sweep that
enforces their timeouts. Its public surface (``start``, ``stop``, ``port``,
``connections``, ``metrics``, ``holder``, ``client_timeouts``) is what the runtime, the
workers and the CLI use; everything else is for the connections of this package. One
event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from data_plane.access_log import AccessLog
from data_plane.h2_upstream import H2UpstreamPool
from data_plane.proxy.client import _ClientConnection
from data_plane.proxy.errors import _ALL_ERRORS, _ErrorResponse
from data_plane.proxy.headers import _CRLF
from data_plane.proxy.http2 import ProtocolSniffer
from data_plane.proxy.write_batch import WriteBatch
from data_plane.request_metrics import RequestMetrics
from data_plane.runtime import ConfigHolder
from data_plane.tls_termination import TlsTermination
from data_plane.upstream_pool import UpstreamPool
from ferry_shared.listen import ListenAddress

if TYPE_CHECKING:
    from data_plane.proxy.upstream import _UpstreamConnection

log = logging.getLogger(__name__)

#: Close a client connection idle (no request in progress) for this long, in seconds.
CLIENT_KEEPALIVE_TIMEOUT: Final = 60.0
#: At most one "out of file descriptors" warning per this many seconds.
FD_WARNING_INTERVAL: Final = 10.0


@dataclass(frozen=True, slots=True)
class ClientTimeouts:
    """nginx's client timeouts, in seconds (each > 0; Kong keeps nginx's 60 s defaults).

    ``header``: the whole request head must arrive within it, counted from its first
    byte (``client_header_timeout``): else 408 and close. ``body``: between two reads of
    a request body (``client_body_timeout``): else 408 when no response has begun, or
    the connection is closed. ``send``: between two successful writes to a client whose
    buffer is full (``send_timeout``): else the client and its upstream connection are
    closed. They are checked by the proxy's sweep (every quarter of the smallest one, at
    most every 5 s), so one fires up to that much late.
    """

    header: float = 60.0
    body: float = 60.0
    send: float = 60.0

    def __post_init__(self) -> None:
        for name in ("header", "body", "send"):
            if not getattr(self, name) > 0:
                raise ValueError(f"client {name} timeout must be > 0 seconds")


class ProxyClient(Protocol):
    """What the server's sweep and stop call on each client connection: an HTTP/1.1
    ``_ClientConnection``, an HTTP/2 connection, or an ``http2`` listener's connection
    whose protocol is not known yet (:mod:`data_plane.proxy.http2`)."""

    def check_timeouts(self, now: float, timeouts: ClientTimeouts, keepalive: float) -> None: ...

    def shutdown(self) -> None: ...

    def abort(self) -> None: ...


class ProxyServer:
    """The proxy listener.

    ``holder.current`` is read once per request. ``via`` is the product token put in
    ``Via: 1.1 <via>`` on proxied responses and in ``Server`` on the proxy's own
    answers. Start with :meth:`start`, stop with :meth:`stop`; both on the loop that
    runs the proxy.
    """

    def __init__(
        self,
        holder: ConfigHolder,
        host: str,
        port: int,
        *,
        via: str = "ferry/0.1.0",
        max_idle_per_target: int = 256,
        upstream_idle_timeout: float = 60.0,
        client_keepalive_timeout: float = CLIENT_KEEPALIVE_TIMEOUT,
        client_timeouts: ClientTimeouts | None = None,
        reuse_port: bool = False,
        access_log: AccessLog | None = None,
        listen: Sequence[ListenAddress] | None = None,
        tls: TlsTermination | None = None,
    ) -> None:
        """``reuse_port``: bind with ``SO_REUSEPORT``, so that several processes (the
        workers of one node) accept on one port and the kernel spreads connections.
        ``client_timeouts``: nginx's header/body/send timeouts (60 s each by default).
        ``access_log``: log every request there (off by default).
        ``listen``: Kong's listen list (:func:`ferry_shared.listen.parse_listen_list`),
        instead of the one plaintext ``host``/``port``; its ``ssl`` entries need ``tls``
        (the certificates they serve)."""
        self.holder = holder
        self._reuse_port = reuse_port
        self._via_header = b"Via: 1.1 " + via.encode("ascii") + _CRLF
        self._server_header = b"Server: " + via.encode("ascii") + _CRLF
        self._errors = {key: _ErrorResponse(key, self._server_header) for key in _ALL_ERRORS}
        #: What this proxy counted (requests by route and status, latencies, connections).
        self.metrics = RequestMetrics()
        #: One record per request when set (``--access-log``); ``None`` costs one check.
        self.access_log = access_log
        self._max_idle = max_idle_per_target
        self._upstream_idle_timeout = upstream_idle_timeout
        self._client_keepalive_timeout = client_keepalive_timeout
        self.client_timeouts = client_timeouts or ClientTimeouts()
        self._fd_warned_at = -FD_WARNING_INTERVAL
        self.listen: tuple[ListenAddress, ...] = tuple(listen) if listen else (ListenAddress(host, port),)
        if tls is None and any(entry.ssl for entry in self.listen):
            raise ValueError("an 'ssl' listener needs the TLS certificates (tls=...)")
        self.tls = tls
        #: One server per entry of :attr:`listen`, in its order, while started.
        self._servers: list[asyncio.Server] = []
        self._clients: set[ProxyClient] = set()
        self._clients_empty: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        #: Writes of one loop iteration, made at its end (data_plane/proxy/write_batch.py).
        self.write_batch: WriteBatch = None  # type: ignore[assignment]
        # Keys separate TLS identities (each https service's context, compiled with
        # the config: data_plane/upstream_tls.py) and server names.
        self.pool: UpstreamPool[_UpstreamConnection] = None  # type: ignore[assignment]
        #: HTTP/2 connections to gRPC targets (data_plane/proxy/grpc_proxy.py), made on
        #: the first gRPC call.
        self.grpc_pool: H2UpstreamPool | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        for entry, port in self.bound():
            if not entry.ssl:
                return port
        raise RuntimeError("proxy has no plaintext listener")

    @property
    def tls_port(self) -> int:
        """The bound port of the first ``ssl`` listener."""
        for entry, port in self.bound():
            if entry.ssl:
                return port
        raise RuntimeError("proxy has no TLS listener")

    def bound(self) -> list[tuple[ListenAddress, int]]:
        """Each listener and the port it is bound to (the real one for port 0)."""
        if not self._servers:
            raise RuntimeError("proxy is not listening")
        return [
            (entry, int(server.sockets[0].getsockname()[1]))
            for entry, server in zip(self.listen, self._servers, strict=True)
            if server.sockets
        ]

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self._clients)

    async def start(self) -> None:
        """Bind and start accepting. Raises ``OSError`` when the address is unusable."""
        self._loop = asyncio.get_running_loop()
        self.write_batch = WriteBatch(self._loop)
        self.pool = UpstreamPool(
            max_idle_per_key=self._max_idle,
            idle_timeout=self._upstream_idle_timeout,
            loop=self._loop,
        )
        self._clients_empty = asyncio.Event()
        self._clients_empty.set()

        def factory() -> asyncio.Protocol:
            return _ClientConnection(self)  # type: ignore[return-value]  # a protocol by its methods

        def http2_factory() -> asyncio.Protocol:
            # Kong's `http2` flag: HTTP/2 (ALPN h2, or h2c with prior knowledge) or
            # HTTP/1.1, chosen per connection (data_plane/proxy/http2.py).
            return ProtocolSniffer(self)

        try:
            for entry in self.listen:
                tls = None
                if entry.ssl and self.tls is not None:
                    tls = self.tls.h2_context if entry.http2 else self.tls.context
                self._servers.append(await self._loop.create_server(
                    http2_factory if entry.http2 else factory,
                    entry.host,
                    entry.port,
                    reuse_address=True,
                    reuse_port=self._reuse_port or None,
                    backlog=entry.backlog or 1024,
                    ssl=tls,
                    # A handshake is a client wait like any other: bounded.
                    ssl_handshake_timeout=self.client_timeouts.header if tls is not None else None,
                ))
        except BaseException:
            for server in self._servers:
                server.close()
            self._servers = []
            raise
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep_idle_clients)

    async def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: stop accepting, let in-flight exchanges finish (up to
        ``timeout`` seconds), close idle connections, then abort what is left."""
        if not self._servers:
            return
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for client in list(self._clients):
            client.shutdown()
        assert self._clients_empty is not None
        try:
            async with asyncio.timeout(timeout):
                await self._clients_empty.wait()
        except TimeoutError:
            for client in list(self._clients):
                client.abort()
        self.pool.close()
        if self.grpc_pool is not None:
            self.grpc_pool.close()
            self.grpc_pool = None
        try:
            async with asyncio.timeout(1.0):
                for server in self._servers:
                    await server.wait_closed()
        except TimeoutError:
            pass
        self._servers = []
        if self.access_log is not None:
            self.access_log.flush()

    def _client_added(self, client: ProxyClient) -> None:
        self._clients.add(client)
        self.metrics.connections_accepted += 1
        if self._clients_empty is not None:
            self._clients_empty.clear()

    def _client_gone(self, client: ProxyClient) -> None:
        self._clients.discard(client)
        if not self._clients and self._clients_empty is not None:
            self._clients_empty.set()

    def _sweep_interval(self) -> float:
        t = self.client_timeouts
        shortest = min(self._client_keepalive_timeout, t.header, t.body, t.send)
        return max(0.05, min(shortest / 4, 5.0))

    def _sweep_idle_clients(self) -> None:
        """Enforce every client's timeouts, and notice when descriptors ran out."""
        now = self._loop.time()
        timeouts, keepalive = self.client_timeouts, self._client_keepalive_timeout
        for client in list(self._clients):
            client.check_timeouts(now, timeouts, keepalive)
        # The event loop's accept hides EMFILE (libuv accepts and drops the connection
        # with a reserved descriptor, and tries again later), so look for it here.
        try:
            os.close(os.open(os.devnull, os.O_RDONLY))
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                self.note_fd_exhaustion()
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep_idle_clients)

    def note_fd_exhaustion(self) -> None:
        """Warn (at most every :data:`FD_WARNING_INTERVAL` s) that descriptors ran out:
        new clients are refused and new upstream connections fail meanwhile."""
        now = self._loop.time()
        if now - self._fd_warned_at < FD_WARNING_INTERVAL:
            return
        self._fd_warned_at = now
        try:
            import resource

            limit = str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
        except (ImportError, OSError, ValueError):
            limit = "?"
        log.warning(
            "out of file descriptors (limit %s, %d client connections open): new clients "
            "are refused until some close; raise the limit (ulimit -n / LimitNOFILE) or "
            "lower the client timeouts", limit, len(self._clients),
        )
