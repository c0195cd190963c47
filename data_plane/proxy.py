"""The data plane's HTTP/1.1 reverse proxy on ``asyncio.Protocol`` + ``httptools``.

Why not a web framework: on this project's hardware an aiohttp server + client proxy
spent ~200-250 us of CPU per request (0.12x nginx) while raw protocols with httptools'
llhttp parsers under uvloop spent ~22-28 us (0.85-1.0x nginx) -- see DESIGN.md.

Structure (all on one event loop; nothing here is thread-safe):

- :class:`ProxyServer` listens and owns the :class:`~data_plane.upstream_pool.UpstreamPool`.
- :class:`_ClientConnection` (one per client TCP connection) parses requests with
  ``HttpRequestParser``. Each parsed request head becomes an :class:`_Exchange` in a
  FIFO; only the head of the FIFO is active, so pipelined requests are answered in
  order (later ones are parsed and buffered, and reading pauses until the head is
  done).
- :class:`_UpstreamConnection` (one per upstream TCP connection) parses responses
  with ``HttpResponseParser`` and forwards them to the client as they arrive.

Bodies stream in both directions: request body chunks go straight to the upstream
transport once connected (buffered up to :data:`BODY_BUFFER_LIMIT` before), response
chunks straight to the client. Flow control uses the transports' write-buffer
watermarks: when one side's ``pause_writing`` fires, reading from the other side
pauses until ``resume_writing``. So a slow client or upstream costs bounded memory.

Upgrades (WebSocket): a request with ``Connection: Upgrade`` + ``Upgrade`` is forwarded
with both headers and ends HTTP parsing on that client connection. When the target
answers ``101 Switching Protocols`` the proxy relays the 101 and then pipes raw bytes
both ways (same flow control, the service's ``read_timeout`` as idle timeout) until
either side closes; that upstream connection is never pooled. Any other answer is
relayed normally, with ``Connection: close``.

Response headers added: ``Via: 1.1 <via>`` and Kong's latency pair, named
``X-Ferry-Upstream-Latency`` (ms from writing the request head to the target until its
response head arrived) and ``X-Ferry-Proxy-Latency`` (ms from the first byte of the
request until its head was written to the target: routing, balancing, connecting,
waiting behind pipelined requests). Both are whole milliseconds, rounded down.

Balancer callbacks: after every successful pick the proxy calls
``Balancer.on_request_start(address)`` and, exactly once per try, ``on_request_end(address,
elapsed, failed)`` when the try ends: the response was relayed completely (or the
WebSocket tunnel closed), the try failed, or the client went away. ``elapsed`` runs from
the pick (just before connecting) to the response head, or to the end of the try when no
head came; ``failed`` is ``True`` exactly when no response head came (connect error,
timeout, close before the head, client gone before it).

Hot path rules: no logging, no JSON, no per-request regex or string formatting beyond
joining precomputed byte strings; one ``transport.write`` per header block.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import json
import logging
import os
import re
import ssl
import time
from collections import deque
from dataclasses import dataclass
from typing import Final, cast

import httptools

from data_plane.access_log import AccessLog
from data_plane.balancers import Address, Balancer, BalancerHandle
from data_plane.hash_key import HashInputs
from data_plane.health_checker import HealthChecker
from data_plane.request_metrics import RequestMetrics, RouteSeries
from data_plane.retry_budget import RetryBudget
from data_plane.router import RouteMatch
from data_plane.runtime import CompiledService, ConfigHolder
from data_plane.upstream_pool import UpstreamPool

__all__ = ["BODY_BUFFER_LIMIT", "MAX_HEADER_BYTES", "ClientTimeouts", "ProxyServer"]

log = logging.getLogger(__name__)

#: Request line + headers larger than this get 431 (nginx's large_client_header_buffers
#: default allows 4 x 8 KiB; Kong's is the same).
MAX_HEADER_BYTES: Final = 32 * 1024
#: Request body bytes held while no upstream connection is ready (connect in progress,
#: or a pipelined request waiting for its turn); above it, reading the client pauses.
BODY_BUFFER_LIMIT: Final = 256 * 1024
#: Close a client connection idle (no request in progress) for this long, in seconds.
CLIENT_KEEPALIVE_TIMEOUT: Final = 60.0
#: Bytes a client sends after an upgrade request's head, held until the target answers
#: (reading pauses after each read, so this is one read at most); above it, close.
UPGRADE_HOLD_LIMIT: Final = 256 * 1024
#: At most one "out of file descriptors" warning per this many seconds.
FD_WARNING_INTERVAL: Final = 10.0
#: After answering an unparsable request, keep reading (and dropping) what the client
#: still sends for up to this many seconds before closing, so that closing with unread
#: bytes does not reset the connection and destroy the answer (nginx's lingering close).
LINGER_TIMEOUT: Final = 2.0

# Reasons for pausing reads from the client (a bit set: reading resumes when none is left).
_PAUSE_UPSTREAM: Final = 1  # the upstream transport's write buffer is full
_PAUSE_BUFFER: Final = 2  # body buffered while not connected yet is over the limit
_PAUSE_PIPELINE: Final = 4  # a pipelined request waits behind the active one
_PAUSE_UPGRADE: Final = 8  # an Upgrade request waits for the target's answer

_now_ns: Final = time.monotonic_ns

# Request header classes (by lower-case name).
_H_DROP: Final = 1  # hop-by-hop, or replaced by the proxy
_H_CONNECTION: Final = 2
_H_HOST: Final = 3
_H_CONTENT_LENGTH: Final = 4
_H_TRANSFER_ENCODING: Final = 5
_H_XFF: Final = 6
_H_EXPECT: Final = 7
_H_UPGRADE: Final = 8

_REQUEST_HEADERS: Final[dict[bytes, int]] = {
    b"connection": _H_CONNECTION,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    # Connection-specific (RFC 9113 3.2.1): meaningless once Upgrade is dropped.
    b"http2-settings": _H_DROP,
    # Forwarded only on an upgrade request (``Connection: upgrade`` as well).
    b"upgrade": _H_UPGRADE,
    b"transfer-encoding": _H_TRANSFER_ENCODING,
    b"host": _H_HOST,
    b"content-length": _H_CONTENT_LENGTH,
    b"x-forwarded-for": _H_XFF,
    # The proxy states these itself (no trusted-proxy list yet, so client-sent values
    # are not believed -- Kong's behaviour with the default trusted_ips).
    b"x-forwarded-proto": _H_DROP,
    b"x-forwarded-host": _H_DROP,
    b"x-forwarded-port": _H_DROP,
    b"x-real-ip": _H_DROP,
    # Answered by the proxy itself (it sends "100 Continue" when it starts reading the
    # body), so upstream interim responses are not relayed.
    b"expect": _H_EXPECT,
}

_R_DROP: Final = 1
_R_CONNECTION: Final = 2
_R_CONTENT_LENGTH: Final = 3
_R_TRANSFER_ENCODING: Final = 4
_R_UPGRADE: Final = 5

_RESPONSE_HEADERS: Final[dict[bytes, int]] = {
    b"connection": _R_CONNECTION,
    b"keep-alive": _R_DROP,
    b"proxy-connection": _R_DROP,
    b"te": _R_DROP,
    b"trailer": _R_DROP,
    b"upgrade": _R_UPGRADE,
    b"transfer-encoding": _R_TRANSFER_ENCODING,
    b"content-length": _R_CONTENT_LENGTH,
}

#: ``Connection`` tokens that name no field to drop: its own options, and the framing
#: fields the proxy relays by itself (dropping Content-Length while relaying the body
#: as framed by it would leave the next hop unable to find the message's end).
_NOT_NAMEABLE: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"content-length", b"transfer-encoding"})

_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# How the response body is relayed to the client.
_BODY_NONE: Final = 0
_BODY_PASS: Final = 1  # as it comes (Content-Length framed, or raw until close)
_BODY_CHUNK: Final = 2  # re-chunked (upstream chunked or until-close, HTTP/1.1 client)

_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONNECTION_UPGRADE: Final = b"Connection: Upgrade\r\n"
_LATENCY_HEADERS: Final = b"X-Ferry-Upstream-Latency: %d\r\nX-Ferry-Proxy-Latency: %d\r\n"
#: The latency pair for 0-3 ms each (nearly every request): no formatting per request.
_LATENCY_SMALL: Final = tuple(_LATENCY_HEADERS % (sent, begun) for sent in range(4) for begun in range(4))
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"

# Error answers: (status, reason, message).
E_BAD_REQUEST: Final = (400, "Bad Request", "Bad request")
E_REQUEST_TIMEOUT: Final = (408, "Request Timeout", "Request timeout")
E_NO_ROUTE: Final = (404, "Not Found", "no Route matched with those values")
E_HTTPS_ONLY: Final = (426, "Upgrade Required", "Please use HTTPS protocol")
E_HEADERS_TOO_LARGE: Final = (431, "Request Header Fields Too Large", "Request header fields too large")
E_INTERNAL: Final = (500, "Internal Server Error", "An unexpected error occurred")
E_NOT_IMPLEMENTED: Final = (501, "Not Implemented", "Transfer-Encoding not implemented")
E_BAD_GATEWAY: Final = (502, "Bad Gateway", "An invalid response was received from the upstream server")
E_NO_PEER: Final = (503, "Service Unavailable", "failure to get a peer from the ring-balancer")
E_NO_CONFIG: Final = (503, "Service Unavailable", "no configuration loaded yet")
E_NO_SERVICE: Final = (503, "Service Unavailable", "no Service found with those values")
E_TIMEOUT: Final = (504, "Gateway Timeout", "The upstream server is timing out")
_ErrorKey = tuple[int, str, str]

_ALL_ERRORS: Final = (
    E_BAD_REQUEST,
    E_REQUEST_TIMEOUT,
    E_NOT_IMPLEMENTED,
    E_NO_ROUTE,
    E_HTTPS_ONLY,
    E_HEADERS_TOO_LARGE,
    E_INTERNAL,
    E_BAD_GATEWAY,
    E_NO_PEER,
    E_NO_CONFIG,
    E_NO_SERVICE,
    E_TIMEOUT,
)


class _ErrorResponse:
    """Precomputed bytes of one JSON error answer in its four variants."""

    __slots__ = ("keep", "close", "head_keep", "head_close")

    def __init__(self, key: _ErrorKey, server_header: bytes) -> None:
        status, reason, message = key
        body = json.dumps({"message": message}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode() + server_header
        self.head_keep = head + _CRLF
        self.head_close = head + b"Connection: close\r\n\r\n"
        self.keep = self.head_keep + body
        self.close = self.head_close + body


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


#: A Host value (nginx's ngx_http_validate_host in spirit): a reg-name or IP literal
#: with an optional port; no whitespace, controls, path or userinfo characters.
_VALID_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[^\x00-\x20\x7f/\\@?#\[\]:,\"]+)(?::[0-9]{1,5})?")


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


class _Exchange:
    """One request/response pair on a client connection. Owned by that connection."""

    __slots__ = (
        "method",
        "is_head",
        "http10",
        "close_after",
        "host_header",
        "upstream_path",
        "head_tail",
        "service",
        "preserve_host",
        "error",
        "has_body",
        "chunked",
        "expect_continue",
        "body",
        "body_size",
        "body_sent",
        "request_complete",
        "started",
        "response_started",
        "response_complete",
        "discard",
        "conn",
        "connect_task",
        "address",
        "handle",
        "retries",
        "reused",
        "stale_retried",
        "upgrade",
        "t_begin",
        "t_try",
        "t_sent",
        "t_headers",
        "try_balancer",
        "set_cookie",
        "replay",
        "replay_size",
        "budget",
        "budget_retry",
        "try_health",
        "status",
        "series",
        "url",
    )

    def __init__(self, method: bytes, http10: bool, close_after: bool, t_begin: int = 0) -> None:
        self.method = method
        self.is_head = method == b"HEAD"
        self.http10 = http10
        #: Close the client connection once this exchange is done.
        self.close_after = close_after
        self.host_header: bytes | None = None
        self.upstream_path = b"/"
        #: Upstream request headers after Host, ending with the blank line.
        self.head_tail = b""
        self.service: CompiledService | None = None
        self.preserve_host = False
        self.error: _ErrorKey | None = None
        self.has_body = False
        self.chunked = False
        self.expect_continue = False
        #: Request body received but not yet written upstream (already framed).
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_sent = False
        self.request_complete = False
        self.started = False
        self.response_started = False
        self.response_complete = False
        #: Drop further request body bytes (answered already, or upstream gone).
        self.discard = False
        self.conn: _UpstreamConnection | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.address: Address | None = None
        self.handle: BalancerHandle | None = None
        self.retries = 0
        self.reused = False
        self.stale_retried = False
        #: An upgrade request (``Connection: upgrade`` + ``Upgrade``): tunnel on a 101.
        self.upgrade = False
        # Monotonic ns: first request byte parsed, pick of the current try, request head
        # written to the target, response head received (0 = not yet, for this try).
        self.t_begin = t_begin
        self.t_try = 0
        self.t_sent = 0
        self.t_headers = 0
        #: The balancer owed an ``on_request_end`` for the current try (``None`` when
        #: no try is open or the service has no balancer).
        self.try_balancer: Balancer | None = None
        #: A ``Set-Cookie`` header line (with CRLF) to add to the response, from
        #: cookie-based consistent hashing.
        self.set_cookie: bytes | None = None
        #: Every framed request body piece received so far, kept so that an idempotent
        #: request can be sent again to another target after a failed try; ``None`` when
        #: not replayable (no body, a non-idempotent method, or more than
        #: :data:`BODY_BUFFER_LIMIT` bytes).
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        #: The upstream's retry budget once this request is counted in it (first try).
        self.budget: RetryBudget | None = None
        #: The current try is a retry counted in ``budget`` (released when it ends).
        self.budget_retry = False
        #: The health checker owed a passive report for the current try, if any.
        self.try_health: HealthChecker | None = None
        #: The status of the current try's response head (0 until it arrives).
        self.status = 0
        #: Where this request is counted (its route's; ``None``: no route matched).
        self.series: RouteSeries | None = None
        #: The request target as the client sent it (for the access log).
        self.url = b""


class _BadUpstreamResponse(Exception):
    """Raised inside a response parser callback: the answer cannot be relayed (502)."""


class _ParseAbort(Exception):
    """Raised inside a parser callback to stop parsing with a given error answer."""

    def __init__(self, error: _ErrorKey) -> None:
        super().__init__(error[2])
        self.error = error


class _ClientConnection(asyncio.Protocol):
    """Server side of one client TCP connection. See the module docstring."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._loop = server._loop
        self._holder = server.holder
        self._transport: asyncio.Transport | None = None
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
        #: The upgrade request waiting for its answer (reading paused meanwhile).
        self._upgrade_ex: _Exchange | None = None
        #: After a 101: the upstream connection raw bytes are piped to.
        self._tunnel: _UpstreamConnection | None = None
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
        # Per-connection constant part of the X-Forwarded-* set.
        self._fwd_fixed = (
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Port: "
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
            _abandon(ex)

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
        self._feed(data)
        if self._start_due:
            self._start_due = False
            self._advance()

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
                _abandon(ex)
        return False

    # ------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
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

        config = self._holder.current  # read once: this request uses this config
        if ex.error is not None:
            pass
        elif config is None:
            ex.error = E_NO_CONFIG
        else:
            router = config.router
            route_headers: dict[bytes, bytes | list[bytes]] | None = None
            if router.uses_headers:
                route_headers = {}
                for n, v in self._headers:
                    n = n.lower()
                    seen = route_headers.get(n)
                    if seen is None:
                        route_headers[n] = v
                    elif isinstance(seen, list):
                        seen.append(v)
                    else:
                        route_headers[n] = [seen, v]
            match = router.match(method, host, self._url, route_headers)
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
            elif match.route.https_only:
                ex.error = E_HTTPS_ONLY
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
                if chunked:
                    out.append(b"Transfer-Encoding: chunked\r\n")
                out.append(_CRLF)
                ex.head_tail = b"".join(out)
                # Hook for consistent hashing: the key is computed here, where the
                # request head is at hand, before the first pick (see _hash_key).
                if match.service.hash_spec is not None:
                    self._hash_key(ex, match)
        ex.discard = ex.error is not None
        if ex.upgrade:
            self._upgrade_ex = ex
        self._parsing = ex
        self._queue.append(ex)
        if len(self._queue) == 1:
            self._start_due = True  # started once the whole read is parsed
        else:
            self._pause_reading(_PAUSE_PIPELINE)

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

    def _start(self, ex: _Exchange) -> None:
        if ex.error is not None:
            self._respond_error(ex, ex.error)
            return
        if ex.expect_continue and not ex.request_complete:
            assert self._transport is not None
            self._transport.write(_CONTINUE)
        self._try_next(ex)

    def _hash_key(self, ex: _Exchange, match: RouteMatch[CompiledService]) -> None:
        """Compute the consistent-hashing key of ``ex`` before its first pick.

        Runs in ``on_headers_complete``, while the request head (``self._headers``,
        ``self._url``, ``self._peer_ip``) and the route match (regex captures) are at
        hand. Stores the key in a fresh ``ex.handle`` and, when a cookie was generated,
        the ``Set-Cookie`` line in ``ex.set_cookie``. Only what the upstream's
        :class:`HashSpec` reads is gathered; nothing happens without a spec.
        """
        service = match.service
        upstream = service.upstream if service is not None else None
        spec = upstream.hash_spec if upstream is not None else None
        if spec is None:
            return
        needs = spec.needs
        inputs = HashInputs()
        if "client_ip" in needs:
            inputs.client_ip = self._peer_ip.decode("ascii", "surrogateescape")
        if "path" in needs or "query" in needs:
            url = self._url
            q = url.find(b"?")
            if q >= 0:
                inputs.path, inputs.query = url[:q], url[q + 1 :]
            else:
                inputs.path = url
        if "headers" in needs:
            headers: dict[bytes, bytes] = {}
            cookie: bytes | None = None
            for name, value in self._headers:
                lname = name.lower()
                if lname == b"cookie":
                    # Several Cookie headers are one list (RFC 6265 5.4), joined by "; ".
                    cookie = value if cookie is None else cookie + b"; " + value
                elif lname in headers:
                    headers[lname] += b", " + value
                else:
                    headers[lname] = value
            inputs.headers = headers
            inputs.cookie_header = cookie
        if "captures" in needs:
            inputs.captures = match.captures
        key, set_cookie = spec.key_for(inputs)
        ex.handle = BalancerHandle(key)
        if set_cookie is not None:
            ex.set_cookie = b"Set-Cookie: " + set_cookie + _CRLF

    def _try_next(self, ex: _Exchange) -> None:
        """Pick an address for the next try and connect (pooled or new).

        Opens a try: ``on_request_start`` is called on the balancer after a successful
        pick, and :func:`_end_try` owes it exactly one ``on_request_end``.
        """
        service = ex.service
        assert service is not None
        if ex.try_balancer is not None:
            _end_try(ex, ex.t_headers == 0, aborted=True)  # defensive: never leak a try
        balancer = service.balancer
        if balancer is not None:
            if balancer.below_threshold:
                self._respond_error(ex, E_NO_PEER)  # Kong: the balancer is unhealthy
                return
            handle = ex.handle
            if handle is None:
                handle = ex.handle = BalancerHandle()
            handle.retries = ex.retries
            address = balancer.pick(handle)
            if address is None:
                self._respond_error(ex, E_NO_PEER)
                return
            if balancer.tracks_requests:
                balancer.on_request_start(address)
            ex.try_balancer = balancer
            upstream = service.upstream
            health = upstream.health if upstream is not None else None
            if health is not None:
                if health.trial_waiting:
                    health.on_pick(address)  # a half-open address: one request only
                if health.passive_on:
                    ex.try_health = health
            if ex.budget is None:
                upstream = service.upstream
                budget = upstream.retry_budget if upstream is not None else None
                if budget is not None:
                    budget.request_started()
                    ex.budget = budget
        else:
            address = service.address
            assert address is not None
        ex.address = address
        ex.t_try = _now_ns()
        ex.t_headers = 0
        ex.status = 0
        self._connect(ex, address, pooled=True)

    def _connect(self, ex: _Exchange, address: Address, *, pooled: bool) -> None:
        service = ex.service
        assert service is not None
        key = address.key if not service.tls else "tls/" + address.key
        conn = self._server.pool.acquire(key) if pooled else None
        if conn is not None:
            ex.reused = True
            self._attach(ex, conn)
        else:
            ex.reused = False
            ex.connect_task = self._loop.create_task(self._open(ex, address, key))

    async def _open(self, ex: _Exchange, address: Address, key: str) -> None:
        service = ex.service
        assert service is not None
        server = self._server
        timed_out = False
        conn: _UpstreamConnection | None = None
        try:
            async with asyncio.timeout(service.connect_timeout):
                _, conn = await self._loop.create_connection(
                    lambda: _UpstreamConnection(server, key),
                    address.host,
                    address.port,
                    ssl=server._ssl_context if service.tls else None,
                    server_hostname=_sni(_upstream_host(ex, service, address))
                    if service.tls
                    else None,
                )
        except TimeoutError:
            timed_out = True
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                server.note_fd_exhaustion()
        if ex.connect_task is not asyncio.current_task():
            # The client went away (or the exchange was answered) meanwhile; keep a new
            # connection for someone else.
            if conn is not None:
                server.pool.release(conn)
            return
        ex.connect_task = None
        if conn is not None:
            self._attach(ex, conn)
            return
        _end_try(ex, True, timed_out)
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

        Call after the failed try was ended (:func:`_end_try`), so that its own budget
        slot is already released. A refused retry leaves ``ex`` to be answered with the
        error of its last try, as when ``service.retries`` is exhausted.
        """
        service = ex.service
        assert service is not None
        if ex.retries >= service.retries or self._closed:
            return False
        budget = ex.budget
        if budget is not None:
            if not budget.try_start_retry():
                return False
            ex.budget_retry = True
        ex.retries += 1
        return True

    def _attach(self, ex: _Exchange, conn: _UpstreamConnection) -> None:
        """Bind ``conn`` to ``ex`` and send the request head plus any buffered body."""
        if ex.discard or ex.response_complete:
            self._server.pool.release(conn)  # answered meanwhile: nothing of it is sent
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
        conn: _UpstreamConnection,
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
            _end_try(ex, False)
            self._close()
            return
        if ex.response_started:
            _end_try(ex, False)
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
        _end_try(ex, ex.t_headers == 0, timed_out)
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
        """Relay response bytes (head and/or body pieces) in one write."""
        if self._transport is not None and not self._closed and not self._eof_sent:
            self._transport.writelines(data)

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
        if ex.try_balancer is not None:
            _end_try(ex, False)
        if ex.budget is not None:
            _end_budget(ex)
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
            _abandon(ex)
            self._count_cut_short(ex)
            self._abort()
            return
        _abandon(ex)
        responses = self._server._errors[error]
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
        if ex.is_head:
            data = responses.head_close if close else responses.head_keep
        else:
            data = responses.close if close else responses.keep
        if self._transport is not None and not self._closed:
            self._transport.write(data)
        ex.response_started = True
        ex.response_complete = True
        if not ex.request_complete:
            ex.discard = True
            ex.body = []
            self._resume_reading(_PAUSE_BUFFER)
        self._resume_reading(_PAUSE_UPSTREAM)

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
                _abandon(ex)
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

    def start_tunnel(self, ex: _Exchange, conn: _UpstreamConnection) -> None:
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
            self._transport.write(data)

    # ------------------------------------------------------------------- utilities

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

    def _close(self) -> None:
        transport = self._transport
        if transport is None or self._closed:
            return
        if self._linger and self._linger_timer is None and transport.can_write_eof():
            # Send the answer and FIN, drain the client until it closes (or time is up).
            transport.write_eof()
            self._eof_sent = True
            transport.resume_reading()
            self._linger_timer = self._loop.call_later(LINGER_TIMEOUT, transport.close)
            return
        transport.close()

    def _abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def check_timeouts(self, now: float, timeouts: ClientTimeouts, keepalive: float) -> None:
        """Enforce the client timeouts (called by the server's sweep; see ClientTimeouts)."""
        if self._closed:
            return
        if self._write_full_since and now - self._write_full_since > timeouts.send:
            # The client does not read what it asked for: give up on it and its request.
            for queued in self._queue:
                _abandon(queued)
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



def _upstream_host(ex: _Exchange, service: CompiledService, address: Address) -> bytes:
    """The Host header sent to ``address``: the client's (``preserve_host``), else the
    upstream's ``host_header``, else the target's name (with its port unless it is the
    scheme's default), as Kong sends."""
    if ex.preserve_host and ex.host_header is not None:
        return ex.host_header
    if service.host_header is not None:
        return service.host_header
    if address.port == service.default_port:
        return address.host_bytes
    return address.key_bytes


def _sni(host: bytes) -> str:
    """The TLS server name for an upstream Host header (Kong: ``proxy_ssl_name
    $upstream_host``): the host without port; empty (no SNI) for an IP literal."""
    text = host.decode("ascii", "replace")
    if text.startswith("["):
        return ""  # IPv6 literal
    name = text.rsplit(":", 1)[0] if ":" in text else text
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return ""


def _abandon(ex: _Exchange) -> None:
    """Nothing more of ``ex`` goes to a target: cancel its connect, close its upstream
    connection (it may hold part of the request, so it is never pooled), and end its
    try as aborted (no verdict on the target) and its retry-budget slot. Idempotent."""
    task = ex.connect_task
    if task is not None:
        ex.connect_task = None
        task.cancel()
    conn = ex.conn
    if conn is not None:
        ex.conn = None
        conn.abandon()
    if ex.try_balancer is not None:
        _end_try(ex, ex.t_headers == 0, aborted=True)
    if ex.budget is not None:
        _end_budget(ex)


def _end_budget(ex: _Exchange) -> None:
    """``ex`` is finished: release its request (and any open retry) in the retry budget."""
    budget = ex.budget
    if budget is None:
        return
    ex.budget = None
    if ex.budget_retry:
        ex.budget_retry = False
        budget.retry_ended()
    budget.request_ended()


def _end_try(ex: _Exchange, failed: bool, timed_out: bool = False, aborted: bool = False) -> None:
    """Report the end of ``ex``'s current try to its balancer (once; no-op otherwise).

    ``elapsed`` runs from the pick to the response head, or to now when no head came.
    A try that was a retry also gives its slot back to the retry budget. With passive
    health checks on, the outcome also goes to the health checker: ``timed_out`` /
    other failure / the response status; an ``aborted`` try without a response head
    (the client went away, or the proxy answered itself) is no verdict on the target.
    """
    if ex.budget_retry:
        ex.budget_retry = False
        if ex.budget is not None:
            ex.budget.retry_ended()
    balancer = ex.try_balancer
    if balancer is None:
        return
    ex.try_balancer = None
    address = ex.address
    assert address is not None
    if balancer.tracks_requests:
        end = ex.t_headers or _now_ns()
        balancer.on_request_end(address, (end - ex.t_try) / 1e9, failed)
    health = ex.try_health
    if health is not None:
        ex.try_health = None
        if failed and aborted:
            health.report_aborted(address)
        else:
            health.report_passive(address, failed, timed_out, ex.status)


#: In a lower-cased head: a hop-by-hop field other than Connection and Content-Length
#: (``\r\nt`` covers TE, Trailer and Transfer-Encoding, and sends the rare other
#: field starting with "t" down the field-by-field path).
_RARE_HOP_BY_HOP: Final = re.compile(rb"\r\n(?:t|keep-alive:|proxy-connection:|upgrade:)")


class _ResponseFields:
    """What a response head says that the proxy acts on, and what it relays."""

    __slots__ = ("prefix", "content_length", "chunked", "coded", "connection", "upgrade")

    def __init__(self) -> None:
        #: ``HTTP/1.1 <status> <reason>`` and every end-to-end header line, each ending
        #: with CRLF (no blank line yet): the relayed head before the proxy's own lines.
        self.prefix = b""
        #: The Content-Length value; -1 when absent.
        self.content_length = -1
        self.chunked = False
        #: A Transfer-Encoding whose last coding is not chunked (e.g. gzip): the body
        #: ends at close (RFC 9112 6.3), and the field is relayed as it is.
        self.coded = False
        #: The ``Connection`` tokens (lower case), ``None`` without that header.
        self.connection: list[bytes] | None = None
        self.upgrade: bytes | None = None


def _response_fields(head: bytes, drop_content_length: bool) -> _ResponseFields:
    """Split a response head validated by llhttp (``status line CRLF *(field CRLF) CRLF``).

    Hop-by-hop fields (RFC 9110 7.6.1: ``Connection`` and what it names, ``Keep-Alive``,
    ``Proxy-Connection``, ``TE``, ``Trailer``, ``Upgrade``, ``Transfer-Encoding``) are
    left out of ``prefix``; so is ``Content-Length`` when ``drop_content_length`` (a
    204). The common head (at most one simple ``Connection``, one ``Content-Length``, no
    other hop-by-hop field) is handled with a few searches over the bytes; any other
    goes field by field.
    """
    low = head.lower()
    cl = low.find(b"\r\ncontent-length:")
    conn = low.find(b"\r\nconnection:")
    if (
        _RARE_HOP_BY_HOP.search(low) is None
        and not (cl >= 0 and (drop_content_length or low.find(b"\r\ncontent-length:", cl + 17) >= 0))
        and not (conn >= 0 and low.find(b"\r\nconnection:", conn + 13) >= 0)
    ):
        fields = _ResponseFields()
        if cl >= 0:
            value = head[cl + 17 : head.index(b"\r\n", cl + 2)].strip()
            if not value.isdigit():
                return _response_fields_by_line(head, drop_content_length)
            fields.content_length = int(value)
        if conn < 0:
            fields.prefix = b"HTTP/1.1" + head[8:-2]
            return fields
        eol = head.index(b"\r\n", conn + 2)
        value = low[conn + 13 : eol].strip()
        if value == b"keep-alive" or value == b"close":
            fields.connection = [value]
            fields.prefix = b"HTTP/1.1" + head[8:conn] + head[eol:-2]
            return fields
    return _response_fields_by_line(head, drop_content_length)


def _response_fields_by_line(head: bytes, drop_content_length: bool) -> _ResponseFields:
    """:func:`_response_fields` for any head: one field at a time."""
    fields = _ResponseFields()
    first = head.index(b"\r\n")
    kept = [b"HTTP/1.1" + head[8 : first + 2]]
    block = head[first + 2 : -4]
    tokens: list[bytes] | None = None
    for line in block.split(b"\r\n") if block else ():
        colon = line.index(b":")
        kind = _RESPONSE_HEADERS.get(line[:colon].lower(), 0)
        if kind == 0:
            kept.append(line + _CRLF)
        elif kind == _R_CONTENT_LENGTH:
            value = line[colon + 1 :].strip()
            fields.content_length = int(value) if value.isdigit() else -1
            if not drop_content_length:
                kept.append(line + _CRLF)
        elif kind == _R_TRANSFER_ENCODING:
            codings = _tokens(line[colon + 1 :])
            if codings and codings[-1] == b"chunked":
                fields.chunked = True
            else:
                fields.coded = True
                kept.append(line + _CRLF)
        elif kind == _R_CONNECTION:
            tokens = (tokens or []) + _tokens(line[colon + 1 :])
        elif kind == _R_UPGRADE:
            fields.upgrade = line[colon + 1 :].strip()
    if tokens:
        # Fields named in Connection are hop-by-hop too.
        extra = {t for t in tokens if t not in _NOT_NAMEABLE}
        if extra:
            kept = kept[:1] + [p for p in kept[1:] if p.split(b":", 1)[0].lower() not in extra]
    fields.connection = tokens
    fields.prefix = b"".join(kept)
    return fields


class _UseRelay(Exception):
    """Raised in the response parser's ``on_headers_complete``: the body needs a
    :class:`_BodyRelay` (chunked, or read until close). Stops that parser."""


class _BodyRelay:
    """Parses one response whose body cannot pass through as read.

    The upstream connection's own parser has no body callback (Content-Length bodies are
    relayed straight from the read buffer); for a chunked or read-until-close body this
    object re-parses the head with a parser that has one, and hands each body piece to
    the connection (which re-chunks it for the client, or de-chunks it for HTTP/1.0).
    """

    __slots__ = ("_conn", "parser", "done", "keep_alive", "extra")

    def __init__(self, conn: _UpstreamConnection) -> None:
        self._conn = conn
        self.parser = httptools.HttpResponseParser(self)
        #: The response ended (the connection finishes it once the read is parsed).
        self.done = False
        self.keep_alive = False
        #: Something began after the response's end: the connection is not reused.
        self.extra = False

    def on_message_begin(self) -> None:
        if self.done:
            self.extra = True

    def on_body(self, data: bytes) -> None:
        if not self.done:
            self._conn.relay_body(data)

    def on_message_complete(self) -> None:
        if not self.done:
            self.done = True
            self.keep_alive = self.parser.should_keep_alive()


class _UpstreamConnection(asyncio.Protocol):
    """Client side of one upstream TCP connection; pooled between requests.

    Bound to one :class:`_Exchange` while relaying its request and response; idle in
    the :class:`UpstreamPool` otherwise. Enforces the service's ``read_timeout``
    (no byte from the upstream for that long while a response is awaited) and
    ``write_timeout`` (the upstream not draining the request body for that long).
    """

    def __init__(self, server: ProxyServer, pool_key: str) -> None:
        self._server = server
        self._loop = server._loop
        self.pool_key = pool_key
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._client: _ClientConnection | None = None
        self._ex: _Exchange | None = None
        self._closed = False
        #: Bytes of a response head that began in an earlier read; ``_buf``: those plus
        #: the read being parsed; ``_scan``: where in ``_buf`` the head being parsed begins.
        self._held = b""
        self._buf = b""
        self._scan = 0
        #: Content-Length body bytes still to relay (the fast path).
        self._remaining = 0
        #: The parser of a chunked or until-close body (see :class:`_BodyRelay`), with
        #: the head it re-parses and where that head ended in ``_buf``.
        self._relay: _BodyRelay | None = None
        self._relay_head = b""
        self._head_end = 0
        #: Bytes came after the response's end: the connection is not reused.
        self._extra = False
        self._interim = False
        self._body_mode = _BODY_NONE
        self._until_close = False
        self._head_done = False
        self._request_done = False
        #: A 101 head for an upgrade request was parsed; the tunnel starts once llhttp
        #: reports where the raw bytes begin. ``_tunnel``: raw piping is on.
        self._tunnel_pending = False
        self._tunnel = False
        self.got_response_bytes = False
        self._paused_for_client = False
        self._write_paused_at: float | None = None
        self._last_activity = 0.0
        self._read_timeout = 60.0
        self._write_timeout = 60.0
        #: The read/write timeout timer and when it fires. Kept across exchanges on a
        #: pooled connection (a timer that fires early just re-arms itself for the
        #: current deadline), so most requests schedule no timer at all.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        #: Response bytes for the client gathered while parsing one read from the
        #: upstream; flushed as one write at the end of it (head and first body bytes
        #: usually arrive together: one syscall instead of two).
        self._out: list[bytes | memoryview] = []

    # ------------------------------------------------------------- pool interface

    def is_usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.transport.close()

    def abandon(self) -> None:
        """The exchange no longer wants this connection (mid-request): drop it now."""
        self._unbind()
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def end_tunnel(self) -> None:
        """The client side of a tunnel closed: close after writing what is buffered."""
        self._unbind()
        if self.transport is not None and not self._closed:
            self.transport.close()

    # ------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses; duck typing suffices.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        ex, client = self._ex, self._client
        if ex is None or client is None:
            self._server.pool.discard(self)
            return
        if self._head_done and self._until_close and not ex.response_complete:
            # "Read until close" framing: the close is the end of the body.
            self._finish(keep_alive=False)
            return
        self._unbind()
        client.upstream_failed(ex, self, timed_out=False)

    def data_received(self, data: bytes) -> None:
        if self._tunnel:
            if self._client is not None:
                self._last_activity = self._loop.time()
                self._client.tunnel_write(data)
            return
        if self._ex is None:
            # Bytes on an idle connection (e.g. an unsolicited 408): unusable now.
            self.close()
            return
        self._last_activity = self._loop.time()
        self.got_response_bytes = True
        relay = self._relay
        try:
            if relay is not None:
                relay.parser.feed_data(data)
                self._relay_fed(relay)
            elif self._head_done:
                # The rest of a Content-Length body: relayed as read (the parser only
                # keeps count, it has no body callback).
                remaining = self._remaining
                if len(data) <= remaining:
                    self._out.append(data)
                    self._remaining = remaining - len(data)
                else:
                    # Bytes after the body: the connection is not reused.
                    self._extra = True
                    if remaining > 0:
                        self._out.append(memoryview(data)[:remaining])
                        self._remaining = 0
                self._parser.feed_data(data)
            else:
                ex = self._ex
                held = self._held
                self._buf = held + data if held else data
                self._parser.feed_data(data)
                if self._ex is ex and not self._head_done and self._relay is None:
                    # The head goes on in the next read: keep its bytes so far.
                    held = self._buf[self._scan :]
                    self._scan = 0
                    if len(held) > MAX_HEADER_BYTES:
                        raise _BadUpstreamResponse("response head too large")
                    self._held = held
                self._buf = b""
        except httptools.HttpParserUpgrade as exc:
            if not self._tunnel_pending:
                self._bad_response(None)
                return
            offset = int(exc.args[0]) if exc.args else len(data)
            if offset < len(data):
                self._out.append(data[offset:])
            self._start_tunnel()
            return
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _UseRelay):
                self._start_relay()
            else:
                self._bad_response(exc)
                return
        except (httptools.HttpParserError, _BadUpstreamResponse) as exc:
            if relay is not None and relay.done:
                # Garbage after a complete chunked response: relay it, drop the link.
                relay.extra = True
                self._relay_fed(relay)
                return
            self._bad_response(exc)
            return
        if self._out:
            self._flush()

    def _start_relay(self) -> None:
        """Parse the rest of this response with a :class:`_BodyRelay` (see there)."""
        relay = _BodyRelay(self)
        self._relay = relay
        rest, self._buf = self._buf[self._head_end :], b""
        head, self._held = self._relay_head, b""
        self._relay_head = b""
        # The main parser stopped inside this response; it starts afresh after it.
        self._parser = httptools.HttpResponseParser(self)
        try:
            relay.parser.feed_data(head)
            if rest:
                relay.parser.feed_data(rest)
        except httptools.HttpParserError as exc:
            if not relay.done:
                self._bad_response(exc)
                return
            relay.extra = True
        self._relay_fed(relay)

    def _bad_response(self, exc: Exception | None) -> None:
        """Unparsable bytes from the target: fail the exchange (502) and drop the connection."""
        self._out = []
        self._relay = None
        ex, client = self._ex, self._client
        if isinstance(exc, httptools.HttpParserCallbackError) and not isinstance(
            exc.__context__, _BadUpstreamResponse
        ):
            log.error("proxy bug while parsing a response", exc_info=exc.__context__ or exc)
        if ex is not None and client is not None:
            self._unbind()
            if self.transport is not None:
                self.transport.abort()
            client.upstream_failed(ex, self, timed_out=False, invalid=True)
        else:
            # E.g. garbage after a finished response on a connection now in the pool.
            self.close()

    def _start_tunnel(self) -> None:
        """Relay the 101 head (and any bytes after it) and switch to raw piping."""
        ex, client = self._ex, self._client
        self._tunnel_pending = False
        if ex is None or client is None:
            self._out = []
            self.close()
            return
        self._tunnel = True
        self._request_done = True
        self._flush()
        client.start_tunnel(ex, self)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._client is not None:
            self._client.response_write(out)

    def pause_writing(self) -> None:
        self._write_paused_at = self._loop.time()
        if self._client is not None:
            self._client.upstream_write_paused(True)
        if self._timer is not None and self._write_timeout < self._read_timeout:
            self._arm(self._write_paused_at + self._write_timeout)

    def resume_writing(self) -> None:
        self._write_paused_at = None
        self._last_activity = self._loop.time()
        if self._client is not None:
            self._client.upstream_write_paused(False)

    # ------------------------------------------------------- exchange (client) side

    def bind(self, client: _ClientConnection, ex: _Exchange, service: CompiledService) -> None:
        self._client = client
        self._ex = ex
        self._held = b""
        self._scan = 0
        self._remaining = 0
        self._relay = None
        self._extra = False
        self._interim = False
        self._head_done = False
        self._until_close = False
        self._request_done = False
        self.got_response_bytes = False
        self._read_timeout = service.read_timeout
        self._write_timeout = service.write_timeout
        self._last_activity = now = self._loop.time()
        deadline = now + self._read_timeout
        if self._timer is None or self._timer_at > deadline:
            self._arm(deadline)

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._on_timer)
        self._timer_at = deadline

    def _unbind(self) -> None:
        # The timer stays armed: it finds no exchange and ends, or serves the next one.
        self._out = []
        self._relay = None
        client = self._client
        self._client = None
        self._ex = None
        if client is not None and self._write_paused_at is not None:
            client.upstream_write_paused(False)
        if self._paused_for_client:
            self._paused_for_client = False
            if self.transport is not None and not self._closed:
                self.transport.resume_reading()

    def send_head(self, head: bytes, body: list[bytes] | None) -> None:
        assert self.transport is not None
        if body:
            self.transport.writelines([head, *body])
        else:
            self.transport.write(head)

    def send_body(self, data: bytes | list[bytes]) -> None:
        assert self.transport is not None
        if isinstance(data, list):
            self.transport.writelines(data)
        else:
            self.transport.write(data)
        self._last_activity = self._loop.time()

    def request_sent(self) -> None:
        """The whole request is written (buffered) upstream."""
        self._request_done = True
        self._last_activity = self._loop.time()

    def pause_reading_for_client(self) -> None:
        if not self._paused_for_client and self.transport is not None and not self._closed:
            self._paused_for_client = True
            self.transport.pause_reading()

    def resume_reading_for_client(self) -> None:
        if self._paused_for_client:
            self._paused_for_client = False
            self._last_activity = self._loop.time()
            if self.transport is not None and not self._closed:
                self.transport.resume_reading()

    def _on_timer(self) -> None:
        self._timer = None
        if self._ex is None:
            return
        now = self._loop.time()
        if self._paused_for_client:
            # We stopped reading because the client is slow: not the upstream's fault.
            deadline = now + self._read_timeout
        elif self._write_paused_at is not None:
            deadline = self._write_paused_at + self._write_timeout
        else:
            deadline = self._last_activity + self._read_timeout
        if now < deadline:
            self._arm(deadline)
            return
        ex, client = self._ex, self._client
        self._unbind()
        if self.transport is not None:
            self.transport.abort()
        if client is not None:
            client.upstream_failed(ex, self, timed_out=True)

    # ------------------------------------------------------------ parser callbacks

    def on_headers_complete(self) -> None:
        ex, client = self._ex, self._client
        if ex is None or client is None:
            return
        # llhttp has validated the head (CRLF line ends, no folding, no space before a
        # colon), so its raw bytes are rewritten directly: no callback per header.
        buf = self._buf
        start = self._scan
        if not buf.startswith(b"HTTP/", start):
            # llhttp skips empty lines before a status line; so does the head's copy.
            while buf[start : start + 1] in (b"\r", b"\n"):
                start += 1
        end = buf.find(b"\r\n\r\n", start) + 4
        if end < 4:
            raise _BadUpstreamResponse("response head without its end")  # cannot happen
        if end - start > MAX_HEADER_BYTES:
            raise _BadUpstreamResponse("response head too large")
        self._scan = end
        status = self._parser.get_status_code()
        if status < 200 and not (status == 101 and ex.upgrade):
            # 1xx interim answers are not relayed: "100 Continue" was sent to the client
            # by the proxy. (A 101 to anything but an upgrade request ends in a 502:
            # llhttp stops parsing at any 101.)
            self._interim = True
            return
        ex.t_headers = now = _now_ns()
        ex.status = status
        head = buf[start:end] if start or end != len(buf) else buf
        fields = _response_fields(head, status == 204)
        content_length = fields.content_length
        parts = [fields.prefix, self._server._via_header]
        sent, begun = (now - ex.t_sent) // 1_000_000, (ex.t_sent - ex.t_begin) // 1_000_000
        if sent < 4 and begun < 4:
            parts.append(_LATENCY_SMALL[sent * 4 + begun])
        else:
            parts.append(_LATENCY_HEADERS % (sent, begun))
        if ex.set_cookie is not None:
            parts.append(ex.set_cookie)
        if status == 101:
            # Switching protocols (llhttp agrees only with "Connection: upgrade" and
            # "Upgrade" in the answer; otherwise the raw bytes would be misparsed).
            if fields.upgrade is None or not self._parser.should_upgrade():
                raise _BadUpstreamResponse("101 without Upgrade/Connection: upgrade")
            parts.append(b"Upgrade: " + fields.upgrade + _CRLF + _CONNECTION_UPGRADE + _CRLF)
            self._out.append(b"".join(parts))
            self._body_mode = _BODY_NONE
            self._tunnel_pending = True
            return
        relay = False
        self._until_close = False
        if ex.is_head or status == 204 or status == 304:
            self._body_mode = _BODY_NONE
        elif fields.coded:
            # Transfer-Encoding without chunked last: the body runs until the target
            # closes; relayed as it is, with its Transfer-Encoding, and the client's
            # connection closes after it (the only framing left for it).
            relay = True
            self._until_close = True
            self._body_mode = _BODY_PASS
            ex.close_after = True
        elif content_length >= 0 and not fields.chunked:
            self._body_mode = _BODY_PASS
        else:
            relay = True
            self._until_close = not fields.chunked
            if ex.http10:
                # An HTTP/1.0 client knows no chunked coding: the body ends at close.
                self._body_mode = _BODY_PASS
                ex.close_after = True
            else:
                self._body_mode = _BODY_CHUNK
                parts.append(b"Transfer-Encoding: chunked\r\n")
        if ex.close_after:
            parts.append(b"Connection: close\r\n\r\n")
        elif ex.http10:
            parts.append(b"Connection: keep-alive\r\n\r\n")
        else:
            parts.append(_CRLF)
        self._head_done = True
        ex.response_started = True
        self._out.append(b"".join(parts))
        if ex.is_head:
            # llhttp cannot be told that a response to HEAD has no body, and it would
            # wait for Content-Length bytes; finish here and give the next response on
            # this connection a fresh parser.
            http11 = self._parser.get_http_version() == "1.1"
            tokens = fields.connection
            keep_alive = (http11 and not (tokens and b"close" in tokens)) or (
                not http11 and tokens is not None and b"keep-alive" in tokens
            )
            self._parser = httptools.HttpResponseParser(self)
            if len(buf) > end:
                self._extra = True  # a HEAD answer has no body: anything more is garbage
            self._finish(keep_alive)
            return
        if relay:
            # Chunked or read-until-close: a parser with a body callback takes over.
            self._head_end = end
            self._relay_head = head
            raise _UseRelay()
        available = len(buf) - end
        if self._body_mode == _BODY_PASS:
            # Content-Length: the body bytes of this read go out as they are (no copy).
            take = content_length if content_length < available else available
            if take > 0:
                self._out.append(memoryview(buf)[end : end + take])
            self._remaining = content_length - take
            if available > content_length:
                self._extra = True
        elif available > 0:
            self._extra = True

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._ex is None or self._tunnel_pending or self._relay is not None:
            return
        # Read here: should_keep_alive() is only meaningful inside on_message_complete.
        self._finish(self._parser.should_keep_alive())

    def relay_body(self, data: bytes) -> None:
        """A body piece from the :class:`_BodyRelay` (chunked or until-close framing)."""
        if self._client is None or not data:
            return
        if self._body_mode == _BODY_CHUNK:
            self._out += (b"%x\r\n" % len(data), data, _CRLF)
        else:
            self._out.append(data)

    def _relay_fed(self, relay: _BodyRelay) -> None:
        """After a read went to ``relay``: finish the response if it ended in it."""
        if relay.done and self._relay is relay:
            self._relay = None
            if relay.extra:
                self._extra = True
            if self._ex is not None:
                self._finish(relay.keep_alive)

    def _finish(self, keep_alive: bool) -> None:
        ex, client = self._ex, self._client
        if ex is None or client is None:
            return
        out = self._out
        if self._body_mode == _BODY_CHUNK:
            out.append(_LAST_CHUNK)
        if out:
            self._out = []
            client.response_write(out)
        # An upgrade request's connection is never reused: the target may have read the
        # bytes after the head as the start of a tunnel.
        reusable = (
            keep_alive
            and self._request_done
            and not self._until_close
            and not ex.upgrade
            and not self._extra
        )
        self._unbind()
        if reusable:
            self._server.pool.release(self)
        elif not self._closed and self.transport is not None:
            self.transport.close()
        client.response_done(ex)


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
    ) -> None:
        """``reuse_port``: bind with ``SO_REUSEPORT``, so that several processes (the
        workers of one node) accept on one port and the kernel spreads connections.
        ``client_timeouts``: nginx's header/body/send timeouts (60 s each by default).
        ``access_log``: log every request there (off by default)."""
        self.holder = holder
        self._host = host
        self._requested_port = port
        self._reuse_port = reuse_port
        self._via_header = b"Via: 1.1 " + via.encode("ascii") + _CRLF
        server_header = b"Server: " + via.encode("ascii") + _CRLF
        self._errors = {key: _ErrorResponse(key, server_header) for key in _ALL_ERRORS}
        #: What this proxy counted (requests by route and status, latencies, connections).
        self.metrics = RequestMetrics()
        #: One record per request when set (``--access-log``); ``None`` costs one check.
        self.access_log = access_log
        self._max_idle = max_idle_per_target
        self._upstream_idle_timeout = upstream_idle_timeout
        self._client_keepalive_timeout = client_keepalive_timeout
        self.client_timeouts = client_timeouts or ClientTimeouts()
        self._fd_warned_at = -FD_WARNING_INTERVAL
        self._server: asyncio.Server | None = None
        self._clients: set[_ClientConnection] = set()
        self._clients_empty: asyncio.Event | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self.pool: UpstreamPool[_UpstreamConnection] = None  # type: ignore[assignment]
        # Kong does not verify upstream certificates unless a service asks for it
        # (tls_verify, not supported yet).
        self._ssl_context = ssl.create_default_context()
        self._ssl_context.check_hostname = False
        self._ssl_context.verify_mode = ssl.CERT_NONE

    @property
    def port(self) -> int:
        """The bound port (the real one when started with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("proxy is not listening")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Open client connections."""
        return len(self._clients)

    async def start(self) -> None:
        """Bind and start accepting. Raises ``OSError`` when the address is unusable."""
        self._loop = asyncio.get_running_loop()
        self.pool = UpstreamPool(
            max_idle_per_key=self._max_idle,
            idle_timeout=self._upstream_idle_timeout,
            loop=self._loop,
        )
        self._clients_empty = asyncio.Event()
        self._clients_empty.set()

        def factory() -> asyncio.Protocol:
            return _ClientConnection(self)

        self._server = await self._loop.create_server(
            factory,
            self._host,
            self._requested_port,
            reuse_address=True,
            reuse_port=self._reuse_port or None,
            backlog=1024,
        )
        self._sweeper = self._loop.call_later(self._sweep_interval(), self._sweep_idle_clients)

    async def stop(self, timeout: float = 5.0) -> None:
        """Graceful stop: stop accepting, let in-flight exchanges finish (up to
        ``timeout`` seconds), close idle connections, then abort what is left."""
        if self._server is None:
            return
        self._server.close()
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
        try:
            async with asyncio.timeout(1.0):
                await self._server.wait_closed()
        except TimeoutError:
            pass
        self._server = None
        if self.access_log is not None:
            self.access_log.flush()

    def _client_added(self, client: _ClientConnection) -> None:
        self._clients.add(client)
        self.metrics.connections_accepted += 1
        if self._clients_empty is not None:
            self._clients_empty.clear()

    def _client_gone(self, client: _ClientConnection) -> None:
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
