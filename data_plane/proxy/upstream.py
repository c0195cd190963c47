"""The upstream side: one keep-alive protocol per upstream TCP connection.

Contract: an :class:`_UpstreamConnection` is opened by the client side
(``dispatch._Dispatch._open``) or taken from the server's
:class:`~data_plane.upstream_pool.UpstreamPool`; while bound to one exchange
(:meth:`_UpstreamConnection.bind`) it belongs to that exchange's client connection and
speaks to it only through :class:`~data_plane.proxy.seam.ClientSide`; after a complete,
reusable exchange it goes back to the pool, otherwise it is closed. It parses responses
with ``HttpResponseParser`` and relays them as they arrive: Content-Length bodies
straight from the read buffer, chunked and until-close bodies through a
:class:`_BodyRelay`. All on the proxy's one event loop; nothing here is thread-safe.

Why this module is past 600 lines: the response side of an exchange is one protocol
class (parsing, relay with flow control, keep-alive decision, tunnels) whose callbacks
share its state, compiled as one native class.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final, cast

import httptools

from data_plane.proxy.exchange import _now_ns
from data_plane.proxy.headers import (
    _CONNECTION_UPGRADE,
    _CRLF,
    _LAST_CHUNK,
    MAX_HEADER_BYTES,
    _response_fields,
    _ResponseFields,
)
from data_plane.proxy.write_batch import WriteBatch

if TYPE_CHECKING:
    from data_plane.overload import TargetLoad
    from data_plane.proxy.exchange import _Exchange
    from data_plane.proxy.seam import ClientSide
    from data_plane.proxy.server import ProxyServer
    from data_plane.runtime import CompiledService

log = logging.getLogger(__name__)

#: Response heads up to this long are remembered per connection (see
#: ``_UpstreamConnection.on_headers_complete``): a typical head is 200-400 bytes.
_HEAD_CACHE_MAX: Final = 2048
_NO_FIELDS: Final = _ResponseFields()

# How the response body is relayed to the client.
_BODY_NONE: Final = 0
_BODY_PASS: Final = 1  # as it comes (Content-Length framed, or raw until close)
_BODY_CHUNK: Final = 2  # re-chunked (upstream chunked or until-close, HTTP/1.1 client)

_LATENCY_HEADERS: Final = b"X-Ferry-Upstream-Latency: %d\r\nX-Ferry-Proxy-Latency: %d\r\n"
#: The latency pair for 0-3 ms each (nearly every request): no formatting per request.
_LATENCY_SMALL: Final = tuple(_LATENCY_HEADERS % (sent, begun) for sent in range(4) for begun in range(4))


class _BadUpstreamResponse(Exception):
    """Raised inside a response parser callback: the answer cannot be relayed (502)."""


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


def _same(a: object, b: object) -> bool:
    return a is b


class _UpstreamConnection:
    """Client side of one upstream TCP connection; pooled between requests.

    Bound to one :class:`_Exchange` while relaying its request and response; idle in
    the :class:`UpstreamPool` otherwise. Enforces the service's ``read_timeout``
    (no byte from the upstream for that long while a response is awaited) and
    ``write_timeout`` (the upstream not draining the request body for that long).

    An asyncio protocol by its methods, not by inheriting ``asyncio.Protocol``: the
    compiled hot path (mypyc) makes a class native (attributes in a C struct, C
    calls between methods) only when its bases are native too.
    """

    def __init__(self, server: ProxyServer, pool_key: str) -> None:
        self._server = server
        self._loop = server._loop
        self.pool_key = pool_key
        #: The overload count this connection's slot is in (its upstream caps
        #: ``max_connections``): released once, when the connection is lost.
        self.load: TargetLoad | None = None
        self.idle_since = 0.0
        self.transport: asyncio.Transport | None = None
        #: Bytes for the target queued in this loop iteration (None: nothing queued),
        #: written by the batch at its end (see data_plane.proxy.write_batch).
        self._pending_out: list[bytes] | None = None
        self._batch: WriteBatch = server.write_batch
        self._parser = httptools.HttpResponseParser(self)
        self._client: ClientSide | None = None
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
        #: The last final response head on this connection (up to _HEAD_CACHE_MAX bytes)
        #: and its split, reused for a head identical to it (see on_headers_complete).
        self._last_head = b""
        self._last_fields: _ResponseFields = _NO_FIELDS

    # ------------------------------------------------------------- pool interface

    def is_usable(self) -> bool:
        return not self._closed and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None and not self._closed:
            self.flush_output()
            self.transport.close()

    def recycle(self) -> None:
        """Idle again after a clean exchange: to a try waiting for a connection to its
        target (:meth:`TargetLoad.hand_over`), else to the pool (which may close it)."""
        load = self.load
        if load is not None and load.waiters and load.hand_over(self):
            return
        self._server.pool.release(self)

    def abandon(self) -> None:
        """The exchange no longer wants this connection (mid-request): drop it now."""
        self._unbind()
        self._pending_out = None
        if self.transport is not None and not self._closed:
            self.transport.abort()

    def end_tunnel(self) -> None:
        """The client side of a tunnel closed: close after writing what is buffered."""
        self._unbind()
        if self.transport is not None and not self._closed:
            self.flush_output()
            self.transport.close()

    # ------------------------------------------------------------- asyncio callbacks

    def _ex_now(self) -> _Exchange | None:
        """``self._ex`` as it is now (a callback of the parser may have changed it)."""
        return self._ex

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop transports are not asyncio.Transport subclasses; duck typing suffices.
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool | None:
        """The upstream closed its side: let the transport close (asyncio.Protocol's
        default, written out: this class does not inherit it, see the class docstring);
        ``connection_lost`` follows."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        load = self.load
        if load is not None:
            self.load = None
            load.release_connection()
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
                before: _Exchange | None = self._ex
                held = self._held
                self._buf = held + data if held else data
                self._parser.feed_data(data)
                if _same(self._ex_now(), before) and not self._head_done and self._relay is None:
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
            self._pending_out = None
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

    def bind(self, client: ClientSide, ex: _Exchange, service: CompiledService) -> None:
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
        """Queue the request head (and body pieces) for the end of this loop iteration."""
        pending = self._pending_out
        if pending is None:
            self._pending_out = [head, *body] if body else [head]
            self._batch.upstream(self)
        else:
            pending.append(head)
            if body:
                pending.extend(body)

    def send_body(self, data: bytes | list[bytes]) -> None:
        """Queue request body bytes after everything queued before them."""
        pending = self._pending_out
        if pending is None:
            self._pending_out = data if isinstance(data, list) else [data]
            self._batch.upstream(self)
        else:
            # A second write in one iteration: a body streaming in. Written now, so
            # that flow control sees it (see _Dispatch.response_write).
            if isinstance(data, list):
                pending.extend(data)
            else:
                pending.append(data)
            self.flush_output()
        self._last_activity = self._loop.time()

    def flush_output(self) -> None:
        """Write what is queued, in one call (the batch's flush, or a close first)."""
        pending = self._pending_out
        if pending is None:
            return
        self._pending_out = None
        transport = self.transport
        if transport is not None and not self._closed:
            if len(pending) == 1:
                transport.write(pending[0])
            else:
                transport.writelines(pending)

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
        self._pending_out = None
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
        last = self._last_head
        if last and buf.startswith(last, start):
            # Byte for byte the head of this connection's last response (a target
            # repeats its head, but for Date once a second): it ends where that one
            # did (its only blank line is its last), and splits the same.
            end = start + len(last)
            same = True
        else:
            same = False
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
        if same:
            head = last
            fields = self._last_fields
        else:
            head = buf[start:end] if start or end != len(buf) else buf
            fields = _response_fields(head, status == 204)  # the status is in the head
            if len(head) <= _HEAD_CACHE_MAX:
                self._last_head = head
                self._last_fields = fields
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
            self.recycle()
        elif not self._closed and self.transport is not None:
            self.flush_output()
            self.transport.close()
        client.response_done(ex)
