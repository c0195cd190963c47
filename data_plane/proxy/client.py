"""The client side: one protocol per client TCP connection, reading HTTP/1.1 requests.

Contract: a :class:`_ClientConnection` is made by :class:`~data_plane.proxy.server.ProxyServer`
for each accepted connection and lives until ``connection_lost``. It parses requests with
``HttpRequestParser``; each request head is classified (:meth:`_ClientConnection._read_head`:
framing, Host, hop-by-hop fields), routed (``_route``) and becomes an
:class:`~data_plane.proxy.exchange._Exchange` in a FIFO. Only the head of the FIFO is
active, so pipelined requests are answered in order (later ones are parsed and buffered,
and reading pauses until the head is done). Running an exchange against the upstream side
is the other half of this class, :class:`~data_plane.proxy.dispatch._Dispatch`. A request
the proxy refused (framing, Host, size, timeout) never reaches a target: it is answered
in its turn and the connection closes with a lingering drain. All on the proxy's one event
loop; nothing here is thread-safe.

Upgrades (WebSocket): a request with ``Connection: Upgrade`` + ``Upgrade: websocket`` is
forwarded with both headers and ends HTTP parsing on this connection; bytes the client
sends after it are held (reading paused) until the target answers. On ``101`` they go
into the tunnel; on any other answer they are parsed as the next request.

A read that is byte for byte the connection's last plain request is queued from a copy
of that exchange without parsing it again (:meth:`_ClientConnection._remember_plain` says
when that is the same thing).

Why this module is past 600 lines: it is one half of one class (see
:mod:`data_plane.proxy.dispatch`), and reading a request -- parser callbacks, head
classification, the repeated-request path, timeouts, the lingering close -- is one
sequence of steps on the same connection state.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Final, cast

import httptools

from data_plane.proxy.dispatch import (
    _PAUSE_BUFFER,
    _PAUSE_PIPELINE,
    _PAUSE_UPGRADE,
    _Dispatch,
)
from data_plane.proxy.errors import (
    E_BAD_REQUEST,
    E_HEADERS_TOO_LARGE,
    E_INTERNAL,
    E_NOT_IMPLEMENTED,
    E_REQUEST_TIMEOUT,
    _ErrorKey,
)
from data_plane.proxy.exchange import BODY_BUFFER_LIMIT, _Exchange, _now_ns
from data_plane.proxy.headers import (
    _CONNECTION_UPGRADE,
    _CRLF,
    _H_CONNECTION,
    _H_CONTENT_LENGTH,
    _H_EXPECT,
    _H_HOST,
    _H_TRANSFER_ENCODING,
    _H_UPGRADE,
    _H_XFF,
    _IDEMPOTENT,
    _LAST_CHUNK,
    _NOT_NAMEABLE,
    _REQUEST_HEADERS,
    _VALID_HOST,
    MAX_HEADER_BYTES,
    _tokens,
)
from data_plane.request_metrics import RouteSeries
from data_plane.tls_termination import server_name_of

if TYPE_CHECKING:
    from data_plane.proxy.seam import UpstreamSide
    from data_plane.proxy.server import ClientTimeouts, ProxyServer
    from data_plane.router import RouteMatch
    from data_plane.runtime import CompiledService

log = logging.getLogger(__name__)

#: Requests up to this long are remembered per connection (see _remember_plain).
_REPEAT_MAX: Final = 4096

#: Bytes a client sends after an upgrade request's head, held until the target answers
#: (reading pauses after each read, so this is one read at most); above it, close.
UPGRADE_HOLD_LIMIT: Final = 256 * 1024
#: After answering an unparsable request, keep reading (and dropping) what the client
#: still sends for up to this many seconds before closing, so that closing with unread
#: bytes does not reset the connection and destroy the answer (nginx's lingering close).
LINGER_TIMEOUT: Final = 2.0


class _ParseAbort(Exception):
    """Raised inside a parser callback to stop parsing with a given error answer."""

    def __init__(self, error: _ErrorKey) -> None:
        super().__init__(error[2])
        self.error = error


class _ClientConnection(_Dispatch):
    """Server side of one client TCP connection. See the module docstring; the
    exchange flow and the methods the upstream side calls are in :class:`_Dispatch`."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._loop = server._loop
        self._holder = server.holder
        self._transport: asyncio.Transport | None = None
        self._pending_out = None
        self._batch = server.write_batch
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        #: Inside a request head (message begun, headers not complete): a guard against
        #: a header line that never ends (llhttp hands over a header only once complete).
        self._in_head = False
        self._head_fed = -1
        self._t_begin = 0
        self._queue: deque[_Exchange] = deque()
        self._parsing: _Exchange | None = None
        self._read_paused = 0
        self._writing_paused = False
        self._closed = False
        #: No further requests are read (client asked to close, or a protocol error).
        self._no_more = False
        self._shutting_down = False
        self.last_active = self._loop.time()
        self._peer_ip = b""
        #: The TLS server name the client sent (``b""``: none), or ``None`` on a
        #: plaintext connection: what the router's ``snis`` and ``https_only`` look at.
        self._sni: bytes | None = None
        self._fwd_fixed = b""
        #: ``_fwd_fixed`` plus ``X-Forwarded-For`` for a request that sent none.
        self._fwd_own = b""
        #: The last Host header seen and its ``X-Forwarded-Host`` line (a client nearly
        #: always sends the same Host on one connection).
        self._fwd_host_for: bytes | None = None
        self._fwd_host_line = b""
        #: The route of this connection's last request and its metrics series.
        self._series_route: object = None
        self._series: RouteSeries | None = None
        #: The router's answer to the last request line (Host, method, target) of this
        #: connection, and the router it came from (see _Dispatch._route).
        self._match_router: object = None
        self._match_url = b""
        self._match_host: bytes | None = None
        self._match_method = b""
        self._last_match: RouteMatch[CompiledService] | None = None
        #: The last read that was one plain request, the config it was routed on and
        #: its exchange as routed (see _remember_plain); messages begun in this read.
        self._repeat_raw = b""
        self._repeat_config: object = None
        self._repeat_ex: _Exchange | None = None
        self._begun = 0
        #: The upgrade request waiting for its answer (reading paused meanwhile).
        self._upgrade_ex: _Exchange | None = None
        #: After a 101: the upstream connection raw bytes are piped to.
        self._tunnel: UpstreamSide | None = None
        #: Bytes after the upgrade request's head, held until the target answers.
        self._upgrade_held: list[bytes] = []
        self._upgrade_held_size = 0
        #: Close with a lingering drain (see :data:`LINGER_TIMEOUT`).
        self._linger = False
        self._linger_timer: asyncio.TimerHandle | None = None
        #: FIN sent to the client (lingering close): nothing more may be written.
        self._eof_sent = False
        #: A request head was parsed in the read being fed: start it once the whole read
        #: is parsed, so that nothing of a request is sent before what follows it in the
        #: same read is known to be valid.
        self._start_due = False
        #: Loop time the request head being read began (client_header_timeout), and the
        #: client's write buffer filled up (send_timeout; 0 = not full).
        self._head_since = 0.0
        self._write_full_since = 0.0
        #: The last Host value found valid on this connection (validated once per value).
        self._host_ok: bytes | None = None

    # ------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses; duck typing suffices.
        self._transport = cast(asyncio.Transport, transport)
        self._server._client_added(self)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self._peer_ip = str(peer[0]).encode() if peer else b""
        local_port = str(sock[1]).encode() if sock and len(sock) > 1 else b""
        # The event loop calls this after a TLS handshake, when the SNI callback has
        # recorded the name on the connection's SSLObject.
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self._sni = server_name_of(ssl_object)
        # Per-connection constant part of the X-Forwarded-* set.
        self._fwd_fixed = (
            (b"X-Forwarded-Proto: https" if ssl_object is not None else b"X-Forwarded-Proto: http")
            + b"\r\nX-Forwarded-Port: "
            + local_port
            + b"\r\nX-Real-IP: "
            + self._peer_ip
            + _CRLF
        )
        self._fwd_own = self._fwd_fixed + b"X-Forwarded-For: " + self._peer_ip + _CRLF

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._server._client_gone(self)
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        tunnel, self._tunnel = self._tunnel, None
        queue, self._queue = self._queue, deque()
        for ex in queue:
            conn = ex.conn
            if conn is not None and conn is tunnel:
                ex.conn = None
                conn.end_tunnel()  # graceful: what the client sent last still goes
            ex.abandon()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._write_full_since = self._loop.time()
        if self._queue:
            conn = self._queue[0].conn
            if conn is not None:
                conn.pause_reading_for_client()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._write_full_since = 0.0
        if self._queue:
            conn = self._queue[0].conn
            if conn is not None:
                conn.resume_reading_for_client()

    def data_received(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            tunnel.send_body(data)
            return
        self.last_active = self._loop.time()
        if self._no_more:
            # No further request is read; but the body of the last one still is.
            parsing = self._parsing
            if parsing is None or parsing.request_complete:
                if self._upgrade_ex is not None:
                    self._hold_upgrade_data(data)
                return
        if self._queue or self._parsing is not None or self._in_head:
            self._feed(data)  # mid-request, or behind one in flight
        elif (
            data == self._repeat_raw
            and self._holder.current is self._repeat_config
            and not self._shutting_down
        ):
            # Byte for byte the last plain request, on the same config: the same head,
            # the same checks passed, the same route (see _remember_plain).
            template = self._repeat_ex
            assert template is not None
            self._queue.append(template.repeat(_now_ns()))
            self._advance()
            return
        else:
            self._begun = 0
            self._feed(data)
            # (_parsing through a call: mypy narrowed it to None above, and the parser's
            # callbacks changed it since; compiled code trusts the narrowing.)
            if self._begun == 1 and len(self._queue) == 1 and self._parsing_now() is None:
                self._remember_plain(data, self._queue[0])
        if self._start_due:
            self._start_due = False
            self._advance()

    def _parsing_now(self) -> _Exchange | None:
        """``self._parsing`` as it is now (a parser callback may have changed it)."""
        return self._parsing

    def _remember_plain(self, data: bytes, ex: _Exchange) -> None:
        """``data`` was one whole request read from a message boundary, parsed into
        ``ex`` (routed, not started). If it is plain -- routed to a service without a
        hash key, no body, keep-alive, nothing to answer locally -- the same bytes next
        time on this connection, on the same config, give the same exchange: llhttp and
        the head checks would say the same, the router too (its answer depends on the
        method, Host, target and the connection's SNI only), and so would the
        ``X-Forwarded-*`` lines. They are then queued from a copy without parsing
        (``data_received``). A client (a load balancer's health check, an API poller, a
        benchmark) mostly repeats itself byte for byte on one connection."""
        service = ex.service
        if (
            len(data) <= _REPEAT_MAX
            and service is not None
            and service.hash_spec is None
            and ex.error is None
            and ex.request_complete
            and not ex.has_body
            and not ex.upgrade
            and not ex.close_after
            and not ex.discard
            and not self._shutting_down
        ):
            self._repeat_raw = data
            self._repeat_config = self._holder.current
            self._repeat_ex = ex.repeat(0)
        else:
            self._repeat_raw = b""
            self._repeat_config = None
            self._repeat_ex = None

    def _feed(self, data: bytes) -> None:
        """Parse one read. Request heads parsed here are started by the caller."""
        while True:
            try:
                self._parser.feed_data(data)
                if self._in_head:
                    # A head still open after a whole read: count the read (the one
                    # that began the head is not counted, so pipelined small requests
                    # in one read never trip this); complete headers are counted exactly.
                    if self._head_fed >= 0:
                        self._head_fed += len(data)
                        if self._head_fed > MAX_HEADER_BYTES:
                            self._in_head = False
                            self._protocol_error(E_HEADERS_TOO_LARGE)
                    else:
                        self._head_fed = 0
                return
            except httptools.HttpParserUpgrade as exc:
                # llhttp stops after a request with "Connection: upgrade" + "Upgrade"
                # (once its body, if any, is parsed).
                offset = int(exc.args[0]) if exc.args else len(data)
                if self._upgrade_ex is None:
                    if self._no_more:
                        return
                    # Not a WebSocket upgrade (h2c, ...): that request went out as plain
                    # HTTP/1.1 without Upgrade, so what follows is the next request.
                    self._parser = httptools.HttpRequestParser(self)
                    data = data[offset:]
                    if not data:
                        return
                    continue
                # A WebSocket upgrade: what follows is held until the target answers.
                self._pause_reading(_PAUSE_UPGRADE)
                if offset < len(data):
                    self._hold_upgrade_data(data[offset:])
                return
            except httptools.HttpParserError as exc:
                if self._no_more and not self._linger and self._parsing is None:
                    return  # bytes after the last request (llhttp: data after close)
                cause = exc.__context__
                if isinstance(cause, _ParseAbort):
                    self._protocol_error(cause.error)
                elif isinstance(exc, httptools.HttpParserCallbackError):
                    log.error("proxy bug while parsing a request", exc_info=cause or exc)
                    self._protocol_error(E_INTERNAL)
                else:
                    self._protocol_error(E_BAD_REQUEST)
                return

    def eof_received(self) -> bool | None:
        if self._tunnel is not None:
            return False  # closes; connection_lost closes the upstream side gracefully
        # The client closed its side. A request whose response is not complete is
        # abandoned at once, as nginx does (proxy_ignore_client_abort off): its upstream
        # connection is closed and the try counts as aborted, not as a target failure.
        # Answers already complete are still flushed before the transport closes.
        self._no_more = True
        for ex in self._queue:
            if not ex.response_complete:
                ex.abandon()
        return False

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        self._begun += 1
        self._t_begin = _now_ns()
        self._head_since = self.last_active
        self._url = b""
        self._headers = []
        self._header_bytes = 0
        self._in_head = True
        self._head_fed = -1

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _ParseAbort(E_HEADERS_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _ParseAbort(E_HEADERS_TOO_LARGE)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._no_more:
            # A request pipelined after one that closes the connection: never answered
            # (RFC 9112 9.6), so not routed either.
            self._parsing = None
            return
        ex, out, xff = self._read_head()
        self._route(ex, out, xff)
        ex.discard = ex.error is not None
        if ex.upgrade:
            self._upgrade_ex = ex
        self._parsing = ex
        self._queue.append(ex)
        if len(self._queue) == 1:
            self._start_due = True  # started once the whole read is parsed
        else:
            self._pause_reading(_PAUSE_PIPELINE)

    def _read_head(self) -> tuple[_Exchange, list[bytes], bytes | None]:
        """Classify the request head just parsed (framing, Host, hop-by-hop fields) into
        a new exchange, before any routing.

        Returns the exchange, the header lines to forward (each ending with CRLF) and the
        client's ``X-Forwarded-For`` value (``None`` without one). Raises
        :class:`_ParseAbort` for a head the proxy refuses: before any state of this
        connection changes but ``_url`` and ``_host_ok``, so the error is answered.
        """
        parser = self._parser
        method = parser.get_method()
        http10 = parser.get_http_version() == "1.0"
        host: bytes | None = None
        hosts = 0
        xff: bytes | None = None
        conn_tokens: list[bytes] | None = None
        content_length = -1
        lengths = 0
        chunked = False
        codings = 0
        expect = False
        upgrade_value: bytes | None = None
        out: list[bytes] = []
        for name, value in self._headers:
            kind = _REQUEST_HEADERS.get(name.lower(), 0)
            if kind == 0:
                out.append(name + b": " + value + _CRLF)
            elif kind == _H_CONTENT_LENGTH:
                content_length = int(value) if value.strip().isdigit() else 0
                lengths += 1
                out.append(name + b": " + value + _CRLF)
            elif kind == _H_HOST:
                host = value
                hosts += 1
            elif kind == _H_CONNECTION:
                conn_tokens = (conn_tokens or []) + _tokens(value)
            elif kind == _H_TRANSFER_ENCODING:
                chunked = True
                codings += 1
                if value.strip().lower() != b"chunked":
                    codings += 2  # a coding the proxy would have to undo: refused (501)
            elif kind == _H_XFF:
                xff = value if xff is None else xff + b", " + value
            elif kind == _H_EXPECT:
                expect = value.strip().lower() == b"100-continue"
            elif kind == _H_UPGRADE:
                upgrade_value = value
        # Framing and Host checks (RFC 9112 3.2, 6.1, 6.3): a request whose framing the
        # proxy and the target could read differently ends the connection (_ParseAbort
        # stops the parser: nothing after it is read as a request).
        if codings:
            if http10 or lengths or codings == 2:
                raise _ParseAbort(E_BAD_REQUEST)  # TE in 1.0, TE + CL, two TE fields
            if codings > 1:
                raise _ParseAbort(E_NOT_IMPLEMENTED)  # only "chunked" is relayed
        elif lengths > 1:
            raise _ParseAbort(E_BAD_REQUEST)
        url = self._url
        if url[:1] != b"/":
            # Absolute form routes on its authority, which replaces Host (RFC 9112 3.2.2).
            low = url[:8].lower()
            skip = 7 if low.startswith(b"http://") else 8 if low == b"https://" else 0
            if not skip:
                raise _ParseAbort(E_BAD_REQUEST)  # "*", authority form, garbage
            end = len(url)
            for stop in (b"/", b"?", b"#"):
                found = url.find(stop, skip)
                if 0 <= found < end:
                    end = found
            authority = url[skip:end]
            url = url[end:] if url[end : end + 1] == b"/" else b"/" + url[end:]
            if hosts > 1 or (hosts == 0 and not http10):
                raise _ParseAbort(E_BAD_REQUEST)
            host, hosts = authority, 1
            self._url = url
        if hosts != 1:
            if hosts or not http10:
                raise _ParseAbort(E_BAD_REQUEST)  # HTTP/1.1 needs exactly one Host
        elif host != self._host_ok:
            if _VALID_HOST.fullmatch(host) is None:  # type: ignore[arg-type]
                raise _ParseAbort(E_BAD_REQUEST)
            self._host_ok = host
        if conn_tokens:
            # Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
            extra = {t for t in conn_tokens if t not in _NOT_NAMEABLE}
            if extra:
                out = [line for line in out if line.split(b":", 1)[0].lower() not in extra]
        if http10:
            keep_alive = conn_tokens is not None and b"keep-alive" in conn_tokens
        else:
            keep_alive = not (conn_tokens and b"close" in conn_tokens)
        close_after = not keep_alive or self._shutting_down
        ex = _Exchange(method, http10, close_after, self._t_begin)
        ex.url = self._url
        # llhttp's own verdict (Connection: upgrade + Upgrade, or CONNECT): it stops
        # parsing after this request (and its body, if any) whatever we do.
        if parser.should_upgrade():
            if method == b"CONNECT":
                raise _ParseAbort(E_BAD_REQUEST)  # a reverse proxy offers no CONNECT tunnels
            if upgrade_value is not None and upgrade_value.strip().lower() == b"websocket":
                # Only WebSocket is forwarded (as Kong): HTTP ends here unless the target
                # refuses; bytes after this request are held until it answers (see
                # _hold_upgrade_data), so none reaches it before its 101.
                ex.upgrade = True
                self._no_more = True
                out.append(b"Upgrade: " + upgrade_value + _CRLF + _CONNECTION_UPGRADE)
            # Any other upgrade (h2c, ...): sent as plain HTTP/1.1, without Upgrade.
        ex.has_body = chunked or content_length > 0
        ex.chunked = chunked
        # No 1xx to an HTTP/1.0 client (RFC 9110 15.2).
        ex.expect_continue = expect and ex.has_body and not http10
        if ex.has_body and method in _IDEMPOTENT:
            ex.replay = []
        ex.host_header = host
        if close_after:
            self._no_more = True

        return ex, out, xff

    def on_body(self, data: bytes) -> None:
        ex = self._parsing
        if ex is None or ex.discard or not data:
            return
        frame: list[bytes] | bytes = (
            [b"%x\r\n" % len(data), data, _CRLF] if ex.chunked else data
        )
        replay = ex.replay
        if replay is not None:
            ex.replay_size += len(data)
            if ex.replay_size > BODY_BUFFER_LIMIT or ex.t_headers:
                ex.replay = None  # too big to keep, or a response is already coming
            elif isinstance(frame, list):
                replay.extend(frame)
            else:
                replay.append(frame)
        conn = ex.conn
        if conn is not None:
            conn.send_body(frame)
            ex.body_sent = True
        else:
            if isinstance(frame, list):
                ex.body.extend(frame)
            else:
                ex.body.append(frame)
            ex.body_size += len(data)
            if ex.body_size > BODY_BUFFER_LIMIT:
                self._pause_reading(_PAUSE_BUFFER)

    def on_message_complete(self) -> None:
        ex = self._parsing
        if ex is None:
            return
        self._parsing = None
        ex.request_complete = True
        conn = ex.conn
        if conn is not None and not ex.discard:
            if ex.chunked:
                conn.send_body(_LAST_CHUNK)
            conn.request_sent()
        elif ex.chunked and not ex.discard:
            ex.body.append(_LAST_CHUNK)
        if ex.chunked and ex.replay is not None:
            ex.replay.append(_LAST_CHUNK)
        if ex.response_complete and self._queue and self._queue[0] is ex:
            self._advance()

    def _protocol_error(self, error: _ErrorKey) -> None:
        """The request stream is unparsable (or timed out): answer in order and close
        (lingering). Nothing more of the request being read reaches a target."""
        self._no_more = True
        self._linger = True
        ex = self._parsing
        if ex is not None and not ex.request_complete:
            # Broken in the middle of a body: its upstream request cannot be completed.
            ex.request_complete = True
            ex.discard = True
            ex.body = []
            ex.close_after = True
            self._parsing = None
            if not ex.started:
                ex.error = error  # answered in its turn; never sent
                ex.service = None
            elif not ex.response_started:
                self._respond_error(ex, error)
                self._advance()
            else:
                ex.abandon()
                self._abort()
            return
        ex = _Exchange(b"GET", False, True)
        ex.error = error
        ex.request_complete = True
        ex.discard = True
        self._queue.append(ex)
        if len(self._queue) == 1:
            self._advance()

    # ------------------------------------------------------------------- upgrades

    def _hold_upgrade_data(self, data: bytes) -> None:
        """Bytes after an upgrade request, before the target answered it.

        None reaches the target before its ``101``: they are held, then written to the
        tunnel after the 101, or parsed as the next request when the target refuses.
        Reading stays paused until the answer, so at most a read or so is held.
        """
        self._upgrade_held.append(data)
        self._upgrade_held_size += len(data)
        if self._upgrade_held_size > UPGRADE_HOLD_LIMIT:
            self._abort()
            return
        self._pause_reading(_PAUSE_UPGRADE)

    # ------------------------------------------------------------------- utilities

    def _close(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        self.flush_output()
        if self._linger and self._linger_timer is None and transport.can_write_eof():
            # Send the answer and FIN, drain the client until it closes (or time is up).
            transport.write_eof()
            self._eof_sent = True
            transport.resume_reading()
            self._linger_timer = self._loop.call_later(LINGER_TIMEOUT, transport.close)
            return
        transport.close()

    def _abort(self) -> None:
        self._pending_out = None
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def check_timeouts(self, now: float, timeouts: ClientTimeouts, keepalive: float) -> None:
        """Enforce the client timeouts (called by the server's sweep; see ClientTimeouts)."""
        if self._closed:
            return
        if self._write_full_since and now - self._write_full_since > timeouts.send:
            # The client does not read what it asked for: give up on it and its request.
            for queued in self._queue:
                queued.abandon()
            self._abort()
            return
        if self._tunnel is not None or self._read_paused or self._eof_sent:
            return  # not reading the client (its own doing or ours): nothing to time
        if self._in_head:
            if now - self._head_since > timeouts.header:
                self._in_head = False
                self._protocol_error(E_REQUEST_TIMEOUT)
            return
        parsing = self._parsing
        if parsing is not None and not parsing.request_complete:
            if now - self.last_active > timeouts.body:
                self._protocol_error(E_REQUEST_TIMEOUT)
            return
        if not self._queue and now - self.last_active > keepalive:
            self._close()

    def shutdown(self) -> None:
        """Graceful stop: finish the request in progress (if any), read no more, close."""
        self._shutting_down = True
        self._no_more = True
        if not self._queue:
            self._close()
        else:
            for ex in self._queue:
                ex.close_after = True

    def abort(self) -> None:
        self._abort()
