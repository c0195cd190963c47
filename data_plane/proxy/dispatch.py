"""The exchange flow of a client connection, and the client side of the upstream seam.

:class:`_Dispatch` is the half of :class:`~data_plane.proxy.client._ClientConnection`
that runs exchanges once their request head is read (``client.py`` holds the half that
reads the client: asyncio and parser callbacks, head classification, timeouts). The two
halves are one object: ``_ClientConnection`` derives from ``_Dispatch``, so every call
between them is a plain method call, as when they were one class (no indirection on the
hot path). The attributes ``_Dispatch`` uses are set in ``_ClientConnection.__init__``
and declared below.

Contract: for each parsed request, :meth:`_Dispatch._route` picks the service on the
config current then; :meth:`_Dispatch._advance` starts exchanges strictly in FIFO order
and retires finished ones; a started exchange runs tries (balancer pick, pooled or new
upstream connection, request head and buffered body sent) until a response head comes,
its retries run out, or it is answered locally (:meth:`_Dispatch._respond_error`). The
upstream connection bound to the exchange calls back only the methods of
:class:`~data_plane.proxy.seam.ClientSide`, all defined here. All on the proxy's one
event loop; nothing here is thread-safe.

Upstream tries: each try of a balanced service is opened with ``upstream.begin_try``
and ended exactly once (:meth:`_Exchange.end_try`) when the response was relayed
completely (or the WebSocket tunnel closed), the try failed, or the client went away;
``failed`` is ``True`` exactly when no response head came (connect error, timeout, close
before the head, client gone before it). What that settles (balancer, health checker,
retry budget) is :mod:`data_plane.upstream_try`'s business, not the proxy's.

Why this module is past 600 lines: it is one half of one class (see above), and the
exchange flow it holds (routing, tries, retries, local answers, tunnels) is one state
machine whose steps call each other; TLS details live in :mod:`data_plane.upstream_tls`.
"""

from __future__ import annotations

import asyncio
import errno
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from data_plane.balancers import Address, BalancerHandle
from data_plane.overload import (
    CAP_MAX_CONNECTIONS,
    CAP_MAX_PENDING_REQUESTS,
    CAP_MAX_REQUESTS,
    OVERFLOW,
    WAIT,
    ConnectionSlot,
    PendingTicket,
    Recyclable,
    TargetLoad,
)
from data_plane.proxy.errors import (
    E_BAD_GATEWAY,
    E_BAD_REQUEST,
    E_GRPC_NEEDS_HTTP2,
    E_HEADERS_TOO_LARGE,
    E_HTTPS_ONLY,
    E_INTERNAL,
    E_NO_CONFIG,
    E_NO_PEER,
    E_NO_ROUTE,
    E_NO_SERVICE,
    E_NOT_GRPC,
    E_OVERLOADED,
    E_TIMEOUT,
    REDIRECTS,
    _ErrorKey,
    redirect_answer,
)
from data_plane.proxy.exchange import (
    _Exchange,
    _hash_key,
    _now_ns,
    _upstream_host,
)
from data_plane.proxy.headers import _CONTINUE, _CRLF, _IDEMPOTENT
from data_plane.proxy.upstream import _UpstreamConnection
from data_plane.proxy.write_batch import WriteBatch
from data_plane.request_metrics import RouteSeries
from data_plane.router import RouteMatch
from data_plane.runtime import CompiledService, ConfigHolder
from data_plane.upstream_tls import open_tls, server_name
from data_plane.upstream_try import allow_retry, begin_try, end_request

if TYPE_CHECKING:
    from data_plane.proxy.seam import UpstreamSide
    from data_plane.proxy.server import ProxyServer

# Reasons for pausing reads from the client (a bit set: reading resumes when none is left).
_PAUSE_UPSTREAM: Final = 1  # the upstream transport's write buffer is full
_PAUSE_BUFFER: Final = 2  # body buffered while not connected yet is over the limit
_PAUSE_PIPELINE: Final = 4  # a pipelined request waits behind the active one
_PAUSE_UPGRADE: Final = 8  # an Upgrade request waits for the target's answer


def _https_location(host: bytes | None, target: bytes) -> bytes:
    """Kong's redirect to TLS: ``https://`` + the Host without its port + the request
    target (the client's Host was validated, so it carries no CR or LF)."""
    bare = host or b""
    colon = bare.rfind(b":")
    if colon > bare.rfind(b"]"):
        bare = bare[:colon]
    return b"https://" + bare + target


def _recycle(conn: Recyclable) -> None:
    """Give back a connection handed to a pending try that no longer wants it."""
    cast(_UpstreamConnection, conn).recycle()


class _Dispatch:
    """Exchange flow and seam methods of :class:`_ClientConnection` (see the module
    docstring); never instantiated on its own. Not an ``asyncio.Protocol`` subclass:
    the compiled hot path (mypyc) makes a class native only when its bases are; the
    event loop needs only the protocol methods, which ``_ClientConnection`` has."""

    # The connection state used here (set and documented in _ClientConnection.__init__).
    _server: ProxyServer
    _loop: asyncio.AbstractEventLoop
    _holder: ConfigHolder
    _transport: asyncio.Transport | None
    #: Bytes for the client queued in this loop iteration (None: nothing queued), and
    #: the batch that writes them at its end (see data_plane.proxy.write_batch).
    _pending_out: list[bytes | memoryview] | None
    _batch: WriteBatch
    _parser: httptools.HttpRequestParser
    _url: bytes
    _headers: list[tuple[bytes, bytes]]
    _queue: deque[_Exchange]
    _read_paused: int
    _writing_paused: bool
    _closed: bool
    _no_more: bool
    _shutting_down: bool
    last_active: float
    _peer_ip: bytes
    _sni: bytes | None
    _fwd_fixed: bytes
    _fwd_own: bytes
    _fwd_host_for: bytes | None
    _fwd_host_line: bytes
    _series_route: object
    _series: RouteSeries | None
    #: The router's answer to this connection's last request line (see _route).
    _match_router: object
    _match_url: bytes
    _match_host: bytes | None
    _match_method: bytes
    _last_match: RouteMatch[CompiledService] | None
    _upgrade_ex: _Exchange | None
    _tunnel: UpstreamSide | None
    _upgrade_held: list[bytes]
    _upgrade_held_size: int
    _eof_sent: bool
    _head_since: float

    # Defined in _ClientConnection (real methods rather than TYPE_CHECKING stubs:
    # mypyc compiles no conditional class bodies).
    def _close(self) -> None:
        raise NotImplementedError

    def _abort(self) -> None:
        raise NotImplementedError

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError

    # --------------------------------------------------------------- exchange flow

    def _advance(self) -> None:
        """Start the head exchange and retire finished ones, in order.

        Iterative (not recursive) because a buffer full of small pipelined requests
        answered locally (404s) would otherwise recurse once per request.
        """
        queue = self._queue
        held: bytes | None = None
        while queue:
            ex = queue[0]
            if not ex.started:
                ex.started = True
                self._start(ex)
            if not (ex.request_complete and ex.response_complete):
                break
            queue.popleft()
            if ex is self._upgrade_ex:
                # The target refused the upgrade (no 101): HTTP goes on, and what the
                # client sent after the upgrade request is the next request.
                self._upgrade_ex = None
                held = b"".join(self._upgrade_held)
                self._upgrade_held = []
                self._upgrade_held_size = 0
                if not (ex.close_after or self._closed):
                    self._no_more = False
                    self._parser = httptools.HttpRequestParser(self)
                    self._resume_reading(_PAUSE_UPGRADE)
            if ex.close_after or self._closed:
                self._close()
                return
            self.last_active = self._loop.time()
        if len(queue) <= 1:
            if self._read_paused:
                self._resume_reading(_PAUSE_PIPELINE)
        if not queue and self._shutting_down:
            self._close()
        elif held:
            self.data_received(held)  # the queue is empty: nothing was parsed after it


    def _route(self, ex: _Exchange, out: list[bytes], xff: bytes | None) -> None:
        """Route ``ex`` (read by :meth:`_read_head`) on the config current now: set its
        service and the rest of its upstream head (``X-Forwarded-*``, the blank line), or
        the error it is answered with. ``out`` is the forwarded header lines so far.
        """
        host = ex.host_header
        config = self._holder.current  # read once: this request uses this config
        if config is None:
            ex.error = E_NO_CONFIG
        else:
            router = config.router
            match: RouteMatch[CompiledService] | None
            if router.uses_headers:
                route_headers: dict[bytes, bytes | list[bytes]] = {}
                for n, v in self._headers:
                    n = n.lower()
                    seen = route_headers.get(n)
                    if seen is None:
                        route_headers[n] = v
                    elif isinstance(seen, list):
                        seen.append(v)
                    else:
                        route_headers[n] = [seen, v]
                match = router.match(ex.method, host, self._url, route_headers, self._sni)
            elif (
                router is self._match_router
                and self._url == self._match_url
                and host == self._match_host
                and ex.method == self._match_method
            ):
                # A client mostly repeats one request line on a connection: the router
                # (immutable, one per config) gives the same answer to the same
                # method, Host and target (its own cache is keyed alike; the SNI is
                # the connection's), so the last answer is reused without calling it.
                match = self._last_match
            else:
                match = router.match(ex.method, host, self._url, None, self._sni)
                self._match_router = router
                self._match_url = self._url
                self._match_host = host
                self._match_method = ex.method
                self._last_match = match
            if match is not None:
                route = match.route
                if route is not self._series_route:
                    # Clients mostly repeat one route per connection: look it up once.
                    self._series_route = route
                    self._series = self._server.metrics.for_route(route)
                ex.series = self._series
            if match is None:
                ex.error = E_NO_ROUTE
            elif match.service is None:
                ex.error = E_NO_SERVICE
            elif match.route.grpc:
                # gRPC is proxied from HTTP/2 streams only (data_plane/proxy/grpc_proxy.py).
                ex.error = E_GRPC_NEEDS_HTTP2 if self._grpc_content() else E_NOT_GRPC
            elif match.route.https_only and self._sni is None:
                if match.route.https_redirect_status_code == 426:
                    ex.error = E_HTTPS_ONLY
                else:
                    ex.error = REDIRECTS[match.route.https_redirect_status_code]
                    ex.redirect = _https_location(host, self._url)
            else:
                ex.service = match.service
                ex.preserve_host = match.route.preserve_host
                ex.upstream_path = match.upstream_path
                if host is not None:
                    if host != self._fwd_host_for:
                        colon = host.rfind(b":")
                        fwd_host = host[:colon] if colon > host.rfind(b"]") else host
                        self._fwd_host_for = host
                        self._fwd_host_line = b"X-Forwarded-Host: " + fwd_host + _CRLF
                    out.append(self._fwd_host_line)
                if xff:
                    out.append(self._fwd_fixed)
                    out.append(b"X-Forwarded-For: " + xff + b", " + self._peer_ip + _CRLF)
                else:
                    out.append(self._fwd_own)
                if ex.chunked:
                    out.append(b"Transfer-Encoding: chunked\r\n")
                out.append(_CRLF)
                ex.head_tail = b"".join(out)
                # Hook for consistent hashing: the key is computed here, where the
                # request head is at hand, before the first pick (see exchange._hash_key).
                if match.service.hash_spec is not None:
                    _hash_key(ex, match, self._headers, self._url, self._peer_ip)

    def _grpc_content(self) -> bool:
        """Whether the request's content-type is gRPC's (``application/grpc...``)."""
        for name, value in self._headers:
            if name.lower() == b"content-type":
                return value.lower().startswith(b"application/grpc")
        return False

    def _start(self, ex: _Exchange) -> None:
        if ex.error is not None:
            self._respond_error(ex, ex.error)
            return
        if ex.expect_continue and not ex.request_complete:
            self._send(_CONTINUE)
        self._try_next(ex)

    def _try_next(self, ex: _Exchange) -> None:
        """Pick an address for the next try and connect (pooled or new).

        Opens a try through the upstream's door (``upstream.begin_try``, see
        :mod:`data_plane.upstream_try`); :meth:`_Exchange.end_try` settles it exactly once.
        """
        service = ex.service
        assert service is not None
        if ex.current_try is not None:
            ex.end_try(ex.t_headers == 0, aborted=True)  # defensive: never leak a try
        upstream = service.upstream
        if upstream is not None:
            handle = ex.handle
            if handle is None:
                handle = ex.handle = BalancerHandle()
            handle.retries = ex.retries
            current = begin_try(upstream, handle)
            if current is None:
                if handle.overloaded:
                    self._overloaded(ex, CAP_MAX_REQUESTS)
                else:
                    self._respond_error(ex, E_NO_PEER)
                return
            ex.current_try = current
            address = current.address
            ex.t_try = current.t_start
            sticky = upstream.sticky
            if sticky is not None:
                # After every pick (a retry picks again): the cookie names the address
                # whose answer the client gets.
                ex.set_cookie = sticky.header_for(upstream.balancer, handle.hash_key, address)
        else:
            fixed = service.address
            assert fixed is not None
            address = fixed
            ex.t_try = _now_ns()
        ex.address = address
        ex.t_headers = 0
        ex.status = 0
        self._connect(ex, address, pooled=True)

    def _connect(self, ex: _Exchange, address: Address, *, pooled: bool) -> None:
        service = ex.service
        assert service is not None
        tls = service.upstream_tls
        key, name = address.key, ""
        if tls is not None:  # reused only where made alike: same TLS identity and server name
            name = server_name(_upstream_host(ex, service, address).decode("ascii", "replace"))
            key = tls.pool_prefix + name + "/" + address.key
        upstream = service.upstream
        guard = upstream.overload if upstream is not None else None
        load: TargetLoad | None = None
        if guard is not None and guard.caps.max_connections:
            key = guard.pool_prefix + key  # counted connections are the upstream's own
            load = guard.load(address.key)
        conn = self._server.pool.acquire(key) if pooled else None
        if conn is not None:
            ex.reused = True
            self._attach(ex, conn)
            return
        ex.reused = False
        slot: ConnectionSlot | None = None
        ticket: PendingTicket | None = None
        wait_cap = 0
        if load is not None:
            assert guard is not None
            admission = guard.admit_connection(load)
            if admission == OVERFLOW:
                self._overloaded(ex, CAP_MAX_PENDING_REQUESTS)
                return
            # Both are counted now, before the task runs; the task's done callback gives
            # them back if it is cancelled before it ever ran.
            if admission == WAIT:
                ticket = PendingTicket(load)
                wait_cap = guard.caps.max_connections
            else:
                slot = ConnectionSlot(load)
        task = self._loop.create_task(self._open(ex, address, key, name, slot, ticket, wait_cap))
        if slot is not None:
            task.add_done_callback(slot.release)
        elif ticket is not None:
            task.add_done_callback(ticket.release)
        ex.connect_task = task

    def _overloaded(self, ex: _Exchange, cap: str) -> None:
        """Answer ``ex`` 503 ``X-Ferry-Overloaded: true``: its try was refused by
        ``cap`` of the upstream (nothing was sent; no verdict on the target)."""
        service = ex.service
        upstream = service.upstream if service is not None else None
        if upstream is not None:
            self._server.metrics.count_overflow(upstream.name, cap)
        self._respond_error(ex, E_OVERLOADED)

    async def _open(
        self, ex: _Exchange, address: Address, key: str, name: str,
        slot: ConnectionSlot | None = None, ticket: PendingTicket | None = None, wait_cap: int = 0,
    ) -> None:
        """Connect ``ex`` to ``address`` (TLS with server ``name`` for ``https``: a TLS
        failure, logged by ``open_tls``, fails the try as a refused connect does).

        With overload caps (``max_connections``): ``slot`` is the connection slot this
        task holds until the connection exists (then the connection owns it), given back
        if none comes; with ``ticket`` instead (``wait_cap`` = ``max_connections``,
        reached) the try first waits, as a pending try, for a connection to be handed
        over or a slot to free up, within the same ``connect_timeout`` (running out while
        pending answers 503 overloaded).
        """
        service = ex.service
        assert service is not None
        server = self._server
        tls = service.upstream_tls
        timed_out = False
        conn: _UpstreamConnection | None = None
        pending = False
        try:
            async with asyncio.timeout(service.connect_timeout):
                if ticket is not None:
                    load = ticket.load
                    pending = True
                    handed = await load.wait_turn(key, _recycle, wait_cap, ticket)
                    pending = False
                    if handed is not None:
                        conn = cast(_UpstreamConnection, handed)
                        ex.reused = True
                    else:
                        slot = ConnectionSlot(load)  # passed to this try by the wait
                if conn is None:
                    if tls is None:
                        _, conn = await self._loop.create_connection(  # type: ignore[type-var]  # a protocol by its methods (see _UpstreamConnection)
                            lambda: _UpstreamConnection(server, key), address.host, address.port
                        )
                    else:
                        conn = await open_tls(
                            self._loop, lambda: _UpstreamConnection(server, key), address, tls, name, service
                        )
                    if slot is not None:
                        conn.load = slot.take()  # the connection owns the slot now
        except TimeoutError:
            timed_out = True
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                server.note_fd_exhaustion()
        finally:
            if slot is not None:
                slot.release()  # no connection came (failed, timed out, cancelled)
        if ex.connect_task is not asyncio.current_task():
            # The client went away (or the exchange was answered) meanwhile; keep a new
            # connection for someone else.
            if conn is not None:
                conn.recycle()
            return
        ex.connect_task = None
        if conn is not None:
            self._attach(ex, conn)
            return
        if pending:
            # The target's connections stayed busy for the whole connect timeout.
            ex.end_try(True, aborted=True)
            self._overloaded(ex, CAP_MAX_CONNECTIONS)
            self._advance()
            return
        ex.end_try(True, timed_out)
        self._try_failed(ex, timed_out)
        self._advance()

    def _try_failed(self, ex: _Exchange, timed_out: bool) -> None:
        """A try failed before any request byte reached the upstream: retry or answer."""
        if self._may_retry(ex):
            self._try_next(ex)
        else:
            self._respond_error(ex, E_TIMEOUT if timed_out else E_BAD_GATEWAY)

    def _may_retry(self, ex: _Exchange) -> bool:
        """Whether ``ex`` gets another try; if so, counts it (retries, retry budget).

        Call after the failed try was ended (:meth:`_Exchange.end_try`), so that its own budget
        slot is already released. A refused retry leaves ``ex`` to be answered with the
        error of its last try, as when ``service.retries`` is exhausted.
        """
        service = ex.service
        assert service is not None
        if ex.retries >= service.retries or self._closed:
            return False
        upstream = service.upstream
        if upstream is not None and ex.handle is not None and not allow_retry(upstream, ex.handle):
            return False
        ex.retries += 1
        return True

    def _attach(self, ex: _Exchange, conn: _UpstreamConnection) -> None:
        """Bind ``conn`` to ``ex`` and send the request head plus any buffered body."""
        if ex.discard or ex.response_complete:
            conn.recycle()  # answered meanwhile: nothing of it is sent
            return
        service = ex.service
        address = ex.address
        assert service is not None and address is not None
        ex.conn = conn
        conn.bind(self, ex, service)
        host = _upstream_host(ex, service, address)
        head = b"".join(
            (ex.method, b" ", ex.upstream_path, b" HTTP/1.1\r\nHost: ", host, _CRLF, ex.head_tail)
        )
        ex.t_sent = _now_ns()
        if ex.body:
            body, ex.body = ex.body, []
            ex.body_size = 0
            ex.body_sent = True
            conn.send_head(head, body)
            self._resume_reading(_PAUSE_BUFFER)
        else:
            conn.send_head(head, None)
        if ex.request_complete:
            conn.request_sent()
        if self._writing_paused:
            conn.pause_reading_for_client()

    def upstream_failed(
        self,
        ex: _Exchange,
        conn: UpstreamSide,
        timed_out: bool,
        invalid: bool = False,
    ) -> None:
        """``conn`` (bound to ``ex``) closed, timed out or sent garbage (``invalid``)
        before the response ended.

        Before a response head, the request is tried again on another target when
        nginx's ``proxy_next_upstream error timeout`` would (what Kong runs): a
        connection error or timeout, an idempotent method (a POST or PATCH that may have
        reached the target is never sent twice) whose body, if any, is still held
        (:attr:`_Exchange.replay`), and a retry left in ``service.retries`` and the
        retry budget. Garbage from the target is answered 502 at once, as nginx's
        default leaves ``invalid_header`` out.
        """
        if ex.conn is conn:
            ex.conn = None
        if self._closed:
            return  # connection_lost already ended the try
        if conn is self._tunnel:
            # The target closed (or idled out) an upgraded connection: the tunnel ends;
            # close the client side after what was relayed so far.
            self._tunnel = None
            ex.end_try(False)
            self._close()
            return
        if ex.response_started:
            ex.end_try(False)
            self._count_cut_short(ex)
            # Part of the response is already out: the client can only learn of the
            # failure from the connection closing before the framing says it is done.
            self._abort()
            return
        if (
            not timed_out
            and not conn.got_response_bytes
            and ex.reused
            and not ex.stale_retried
            and not ex.body_sent
            and ex.method in _IDEMPOTENT
            and ex.address is not None
        ):
            # The upstream closed an idle keep-alive connection just as we reused it:
            # one more try on a fresh connection to the same address (the same try
            # for the balancer: nothing was sent for real).
            ex.stale_retried = True
            self._connect(ex, ex.address, pooled=False)
            return
        ex.end_try(ex.t_headers == 0, timed_out)
        if (
            not invalid
            and not ex.upgrade
            and ex.method in _IDEMPOTENT
            and (not ex.body_sent or ex.replay is not None)
            and self._may_retry(ex)
        ):
            if ex.body_sent:
                assert ex.replay is not None
                # Everything received so far goes to the next target, from the start.
                ex.body = list(ex.replay)
                ex.body_size = ex.replay_size
                ex.body_sent = False
            self._try_next(ex)
            return
        self._respond_error(ex, E_TIMEOUT if timed_out else E_BAD_GATEWAY)
        self._advance()

    def response_write(self, data: list[bytes | memoryview]) -> None:
        """Relay response bytes (head and/or body pieces): queued for the end of this
        loop iteration, and from there written in one call. Takes ``data`` over."""
        if self._transport is not None and not self._closed and not self._eof_sent:
            pending = self._pending_out
            if pending is None:
                self._pending_out = data
                self._batch.client(self)
            else:
                # A second write in one iteration: a body streaming in, not a burst
                # of answers. Written now, so that flow control sees it (uvloop reads
                # a socket up to 32 times per iteration): at most one read is held.
                pending.extend(data)
                self.flush_output()

    def _send(self, data: bytes) -> None:
        """Queue ``data`` for the client, after anything queued before it."""
        pending = self._pending_out
        if pending is None:
            self._pending_out = [data]
            self._batch.client(self)
        else:
            pending.append(data)

    def flush_output(self) -> None:
        """Write what is queued (the batch's call at the end of the iteration, or a
        close that must not leave it behind)."""
        pending = self._pending_out
        if pending is None:
            return
        self._pending_out = None
        transport = self._transport
        if transport is not None and not self._closed and not self._eof_sent:
            if len(pending) == 1:
                transport.write(pending[0])
            else:
                transport.writelines(pending)

    def response_done(self, ex: _Exchange) -> None:
        """The upstream response for ``ex`` has been relayed completely."""
        ex.conn = None
        ex.response_complete = True
        t_begin, t_sent = ex.t_begin, ex.t_sent
        (ex.series or self._server.metrics.unmatched).observe_proxied(
            ex.status,
            (t_sent - t_begin) // 1_000_000,
            (ex.t_headers - t_sent) // 1_000_000,
            (_now_ns() - t_begin) // 1_000_000,
        )
        if self._server.access_log is not None:
            self._log_access(ex, ex.status, "upstream")
        # ex.end_try(False) and ex.end_request(), inlined: once per request.
        current = ex.current_try
        if current is not None:
            ex.current_try = None
            current.end(False, ex.status, ex.t_headers)
        handle = ex.handle
        if handle is not None and handle.budget is not None:
            end_request(handle)
        if not ex.request_complete:
            # Answered before the whole request body arrived: drop the rest of it.
            ex.discard = True
            ex.body = []
            self._resume_reading(_PAUSE_BUFFER)
        if self._read_paused:
            self._resume_reading(_PAUSE_UPSTREAM)
        if self._queue and self._queue[0] is ex:
            self._advance()

    def _count_cut_short(self, ex: _Exchange) -> None:
        """Count a response whose head went out but whose end never will (the target
        failed mid-body): under the status the client was told, as Kong logs it."""
        if ex.status and not ex.upgrade:
            t_begin, t_sent = ex.t_begin, ex.t_sent
            (ex.series or self._server.metrics.unmatched).observe_proxied(
                ex.status,
                (t_sent - t_begin) // 1_000_000,
                (ex.t_headers - t_sent) // 1_000_000,
                (_now_ns() - t_begin) // 1_000_000,
            )
            if self._server.access_log is not None:
                self._log_access(ex, ex.status, "upstream")
            ex.status = 0  # counted (the try's health report is already made)

    def _log_access(self, ex: _Exchange, status: int, source: str) -> None:
        """One access-log record for ``ex`` (only called with ``--access-log``)."""
        access_log = self._server.access_log
        assert access_log is not None
        now = _now_ns()
        t_begin = ex.t_begin or now
        series = ex.series
        address = ex.address
        access_log.record(
            client_ip=self._peer_ip,
            method=ex.method,
            uri=ex.url,
            http10=ex.http10,
            status=status,
            source=source,
            # A DNS target's key also names its target; the log shows the address.
            upstream=(getattr(address, "endpoint", "") or address.key) if address is not None else None,
            service=series.service or None if series is not None else None,
            route=series.route or None if series is not None else None,
            tries=ex.retries + 1 if address is not None else 0,
            request_ms=(now - t_begin) // 1_000_000,
            upstream_ms=(ex.t_headers - ex.t_sent) // 1_000_000 if ex.t_headers and ex.t_sent else None,
            proxy_ms=(ex.t_try - t_begin) // 1_000_000 if ex.t_try else None,
        )

    def _respond_error(self, ex: _Exchange, error: _ErrorKey) -> None:
        """Answer ``ex`` with a JSON error (does not advance the queue).

        Nothing more of ``ex`` reaches a target: a connect in progress is cancelled and
        an upstream connection it holds is closed (never pooled half-sent)."""
        if ex.response_started:
            ex.abandon()
            self._count_cut_short(ex)
            self._abort()
            return
        ex.abandon()
        now = _now_ns()
        (ex.series or self._server.metrics.unmatched).observe_local(
            error[0], (now - (ex.t_begin or now)) // 1_000_000
        )
        if self._server.access_log is not None:
            self._log_access(ex, error[0], "ferry")
        close = ex.close_after or error in (E_BAD_REQUEST, E_HEADERS_TOO_LARGE, E_INTERNAL)
        if close:
            ex.close_after = True
            self._no_more = True
        if ex.redirect is not None:
            data = redirect_answer(error, ex.redirect, self._server._server_header, close)
        else:
            responses = self._server._errors[error]
            if ex.is_head:
                data = responses.head_close if close else responses.head_keep
            else:
                data = responses.close if close else responses.keep
        if self._transport is not None and not self._closed:
            self._send(data)
        ex.response_started = True
        ex.response_complete = True
        if not ex.request_complete:
            ex.discard = True
            ex.body = []
            self._resume_reading(_PAUSE_BUFFER)
        self._resume_reading(_PAUSE_UPSTREAM)

    # ------------------------------------------------------------------- upgrades

    def start_tunnel(self, ex: _Exchange, conn: UpstreamSide) -> None:
        """The target answered ``ex`` with 101 (relayed): pipe raw bytes from now on,
        beginning with those the client sent after its request."""
        self._upgrade_ex = None
        self._tunnel = conn
        ex.response_started = True
        held, self._upgrade_held = self._upgrade_held, []
        self._upgrade_held_size = 0
        if held:
            conn.send_body(held)
        self._resume_reading(_PAUSE_UPGRADE)

    def tunnel_write(self, data: bytes) -> None:
        """Relay raw tunnel bytes from the target."""
        if self._transport is not None and not self._closed and not self._eof_sent:
            self.response_write([data])

    # ------------------------------------------------------- reading the client

    def _pause_reading(self, reason: int) -> None:
        if not self._read_paused and self._transport is not None and not self._closed:
            self._transport.pause_reading()
        self._read_paused |= reason

    def _resume_reading(self, reason: int) -> None:
        if self._read_paused & reason:
            self._read_paused &= ~reason
            if not self._read_paused and self._transport is not None and not self._closed:
                self._transport.resume_reading()
                # The client was not read meanwhile: its timeouts count from now.
                self.last_active = self._head_since = self._loop.time()

    def upstream_write_paused(self, paused: bool) -> None:
        if paused:
            self._pause_reading(_PAUSE_UPSTREAM)
        else:
            self._resume_reading(_PAUSE_UPSTREAM)
