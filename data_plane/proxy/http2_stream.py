"""One HTTP/2 stream as an HTTP/1.1 client connection: :class:`StreamTransport`.

Contract: each request stream of an :class:`~data_plane.proxy.http2.Http2Connection`
drives one :class:`~data_plane.proxy.client._ClientConnection` through a
:class:`StreamTransport`, an in-memory transport. The stream's request (pseudo-headers,
headers, DATA) is written into the connection as HTTP/1.1 bytes (:func:`request_head`,
then the body as ``Content-Length`` bytes or chunks), so routing, balancing, retries,
health accounting, metrics and the access log are exactly those of HTTP/1.1. What the
connection writes back (an HTTP/1.1 response) is parsed with httptools'
``HttpResponseParser`` and sent as HEADERS + DATA frames, hop-by-hop fields dropped
(RFC 9113 8.2.2). Each request is sent with ``Connection: close``, so the per-stream
connection ends with its one exchange.

Flow control, both ways, with bounded memory:

- request body: DATA is fed to the connection only while it reads (its
  ``pause_reading`` holds further DATA here, unacknowledged), and acknowledged to the
  h2 state machine as it is fed, so the client's windows (stream and connection) bound
  what is held;
- response body: what the client's windows do not admit waits here; past
  :data:`STREAM_HIGH_WATER` bytes the connection is told ``pause_writing`` (it stops
  reading the target), under :data:`STREAM_LOW_WATER` ``resume_writing``.

All on the proxy's one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast

import httptools

from data_plane.proxy.client import _ClientConnection

if TYPE_CHECKING:
    from data_plane.proxy.http2 import Http2Connection

#: Response bytes held per stream before the connection is paused (and resumed under
#: the low mark): the target is read no further while the client's window is closed.
STREAM_HIGH_WATER: Final = 64 * 1024
STREAM_LOW_WATER: Final = 16 * 1024

#: RFC 9113 8.2.2: connection-specific fields never go into an HTTP/2 message.
HOP_BY_HOP: Final = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade",
    b"te", b"http2-settings",
})
#: A header name as HTTP/2 allows it (a lower-case token), and a value without the
#: bytes that would end or split a line of the HTTP/1.1 head it is written into.
_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9a-z]+")
_VALUE_BAD: Final = re.compile(rb"[\x00\r\n]")
#: A method token, and a request target: no control bytes, spaces or DEL.
_METHOD: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET: Final = re.compile(rb"[\x21-\x7e\x80-\xff]+")


class MalformedRequest(ValueError):
    """A request HTTP/2 calls malformed (RFC 9113 8.1.1): the stream is reset with
    PROTOCOL_ERROR and nothing of it reaches the proxy."""


def request_head(headers: list[tuple[bytes, bytes]], has_body: bool) -> tuple[bytes, bytes, bool]:
    """The HTTP/1.1 head for an HTTP/2 request's header list (h2 has checked the
    pseudo-header rules; the bytes that would break the HTTP/1.1 framing are checked
    here). Returns ``(head, method, chunked)``: a body of unknown length is sent
    chunked. Raises :class:`MalformedRequest`."""
    method = path = authority = b""
    fields: list[bytes] = []
    cookies: list[bytes] = []
    host: bytes | None = None
    has_length = False
    for name, value in headers:
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name != b":scheme":
                raise MalformedRequest(f"pseudo-header {name!r}")
            continue
        if _NAME.fullmatch(name) is None or _VALUE_BAD.search(value) is not None:
            raise MalformedRequest("a header field HTTP/1.1 cannot carry")
        if name in HOP_BY_HOP and name != b"te":
            raise MalformedRequest(f"connection-specific field {name!r}")
        if name == b"host":
            host = value
        elif name == b"cookie":
            cookies.append(value)  # RFC 9113 8.2.3: crumbs joined for HTTP/1.1
        elif name in (b"te", b"expect"):
            continue  # TE: trailers is HTTP/2's own; 100-continue has no meaning here
        else:
            if name == b"content-length":
                has_length = True
            fields.append(name + b": " + value + b"\r\n")
    if _METHOD.fullmatch(method) is None or method == b"CONNECT":
        raise MalformedRequest("no usable :method (CONNECT is not proxied)")
    if _TARGET.fullmatch(path) is None:
        raise MalformedRequest("no usable :path")
    host_value = authority or host
    if cookies:
        fields.append(b"cookie: " + b"; ".join(cookies) + b"\r\n")
    chunked = has_body and not has_length
    head = b"".join((
        method, b" ", path, b" HTTP/1.1\r\n",
        b"Host: " + host_value + b"\r\n" if host_value is not None else b"",
        *fields,
        b"Transfer-Encoding: chunked\r\n" if chunked else b"",
        b"Connection: close\r\n\r\n",
    ))
    return head, method, chunked


class StreamTransport:
    """The in-memory transport between one HTTP/2 stream and its ``_ClientConnection``
    (see the module docstring). The connection sees it as its TCP transport: its
    ``get_extra_info`` answers the real connection's (peer, local address, TLS object).
    """

    def __init__(self, owner: Http2Connection, stream_id: int, method: bytes, chunked: bool, has_body: bool) -> None:
        self._owner = owner
        self.stream_id = stream_id
        self._chunked = chunked
        #: The client ended its request (END_STREAM), and the response's END_STREAM
        #: (or a RST_STREAM) went out: the stream is over for h2 when both are true.
        self.request_ended = not has_body
        self.end_sent = False
        self._bodyless = method == b"HEAD"
        self._parser = httptools.HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []
        self._in_head = True
        #: The final response's HEADERS are sent; its end (END_STREAM) is queued or sent.
        self.headers_sent = False
        self.response_ended = False
        #: Response DATA the client's windows have not admitted yet, and their size.
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        #: Trailers sent after the DATA (never for an HTTP/1.1 exchange; the attribute
        #: is the surface the connection shares with a gRPC call).
        self.trailers: list[tuple[bytes, bytes]] | None = None
        #: Request DATA held while the connection does not read: (bytes, flow-controlled size).
        self._held: deque[tuple[bytes, int]] = deque()
        self._held_end = False
        self._read_paused = False
        self._write_paused = False
        self._high, self._low = STREAM_HIGH_WATER, STREAM_LOW_WATER
        self.closing = False
        self._lost = False
        self.client = _ClientConnection(owner.server)

    def start(self, head: bytes) -> None:
        """Open the stream's connection and write the request head into it."""
        client = self.client
        server = self._owner.server
        client.connection_made(cast(asyncio.BaseTransport, self))
        # A stream is not a connection: the HTTP/2 connection stands for it in the
        # proxy's set of clients and in connections_accepted (its timeouts are checked
        # through it, see Http2Connection.check_timeouts).
        server._clients.discard(client)
        server.metrics.connections_accepted -= 1
        client.data_received(head)

    # -------------------------------------------------- request: h2 → connection

    def request_data(self, data: bytes, flow_size: int) -> None:
        """DATA of the request (``flow_size`` counts padding too)."""
        if self._read_paused or self._held:
            self._held.append((data, flow_size))
            return
        self._feed(data, flow_size)

    def request_end(self) -> None:
        if self._read_paused or self._held:
            self._held_end = True
            return
        self._feed_end()

    def _feed(self, data: bytes, flow_size: int) -> None:
        if data and not self._lost:
            self.client.data_received(
                b"%x\r\n" % len(data) + data + b"\r\n" if self._chunked else data
            )
        self._owner.acknowledge(self.stream_id, flow_size)

    def _feed_end(self) -> None:
        if self._chunked and not self._lost:
            self.client.data_received(b"0\r\n\r\n")

    def pause_reading(self) -> None:
        self._read_paused = True

    def resume_reading(self) -> None:
        self._read_paused = False
        while self._held and not self._read_paused:
            data, flow_size = self._held.popleft()
            self._feed(data, flow_size)
        if self._held_end and not self._held and not self._read_paused:
            self._held_end = False
            self._feed_end()
        self._owner.flush()

    # ------------------------------------------------ response: connection → h2

    def write(self, data: bytes | memoryview) -> None:
        if self.response_ended or self._lost:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass  # a 101 cannot happen: Upgrade is never sent upstream from a stream
        except httptools.HttpParserError:
            # Cannot happen with the proxy's own output; end the stream, loudly.
            self._owner.reset(self.stream_id, internal=True)
            self.abort()

    def writelines(self, pieces: Any) -> None:
        for piece in pieces:
            self.write(piece)

    def on_message_begin(self) -> None:
        self._fields = []
        self._in_head = True

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._fields.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        status = self._parser.get_status_code()
        if status < 200:
            return  # interim (the proxy relays none to HTTP/2 clients)
        named = {t.strip().lower() for n, v in self._fields if n == b"connection" for t in v.split(b",")}
        fields = [(b":status", b"%d" % status)] + [
            (n, v) for n, v in self._fields if n not in HOP_BY_HOP and n not in named
        ]
        end = self._bodyless or status in (204, 304)
        self.headers_sent = True
        self._owner.send_headers(self, fields, end)
        if end:
            self.response_ended = True

    def on_body(self, body: bytes) -> None:
        if self.response_ended:
            return
        self.pending.append(bytes(body))
        self.pending_size += len(body)
        self._owner.send_pending(self)
        if self.pending_size > self._high and not self._write_paused:
            self._write_paused = True
            self.client.pause_writing()

    def on_message_complete(self) -> None:
        if self._parser.get_status_code() < 200 or self.response_ended:
            return
        self.response_ended = True
        self._owner.send_pending(self)

    def sent(self) -> None:
        """Called by the connection after it sent pending DATA: resume under the low mark."""
        if self._write_paused and self.pending_size <= self._low and not self._lost:
            self._write_paused = False
            self.client.resume_writing()

    # ---------------------------------------------------------- transport surface

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._owner.transport_info(name, default)

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:  # never called: can_write_eof says no
        self.close()

    def get_write_buffer_size(self) -> int:
        return self.pending_size

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = STREAM_HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low

    def close(self) -> None:
        """The connection is done with the stream: a response it did not end is cut
        short (RST_STREAM), as a closed TCP connection would cut it."""
        if self.closing:
            return
        self.closing = True
        if not self.response_ended:
            self._owner.reset(self.stream_id, internal=True)
        self._owner.loop.call_soon(self.connection_lost)

    def abort(self) -> None:
        if self.closing:
            return
        self.closing = True
        if not self.response_ended:
            self._owner.reset(self.stream_id, internal=True)
        self.connection_lost()

    def client_reset(self) -> None:
        """The client reset the stream: what is in flight for it is abandoned (its
        upstream connection closed, never pooled), nothing more is sent."""
        self.response_ended = True
        self.pending.clear()
        self.pending_size = 0
        self._held.clear()
        self.closing = True
        self.connection_lost()

    def connection_lost(self) -> None:
        if self._lost:
            return
        self._lost = True
        self.closing = True
        self.client.connection_lost(None)
        self._owner.stream_gone(self)
