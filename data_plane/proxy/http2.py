"""HTTP/2 from clients: :class:`Http2Connection` (one per HTTP/2 client connection, on
the ``h2`` state machine) and :class:`ProtocolSniffer` (what an ``http2`` listener
accepts: it chooses HTTP/2 or HTTP/1.1 per connection).

Contract:

- A listener with Kong's ``http2`` flag makes a :class:`ProtocolSniffer` per
  connection. On TLS the ALPN choice decides (``h2`` → HTTP/2, anything else or none →
  HTTP/1.1); in plaintext the first bytes do: the HTTP/2 connection preface (h2c with
  prior knowledge, RFC 9113 3.3) → HTTP/2, anything else → HTTP/1.1 as on any listener.
  The sniffer then hands the transport to the chosen protocol (``set_protocol``), so
  it costs nothing per request. Listeners without ``http2`` never see this module.
- Each request stream drives one ``_ClientConnection`` through an in-memory transport
  (:mod:`data_plane.proxy.http2_stream`): requests are routed, balanced, retried,
  health-accounted, metered and logged by the HTTP/1.1 code, to HTTP/1.1 targets.
  Except gRPC: a stream that matches a ``grpc``/``grpcs`` route (or none, with a gRPC
  content-type) is a :class:`~data_plane.proxy.grpc_proxy.GrpcCall`, proxied over
  HTTP/2 to the target with its trailers (:mod:`data_plane.proxy.grpc_proxy`).
- Limits (SETTINGS): :data:`MAX_CONCURRENT_STREAMS`, :data:`MAX_HEADER_LIST_SIZE`,
  :data:`INITIAL_WINDOW_SIZE` per stream and :data:`CONNECTION_WINDOW`; no server push.
- Guards (docs/http2-grpc.md): rapid reset (client RST_STREAMs per window), SETTINGS and
  PING floods (frames per window), control answers the client does not read (the
  write buffer while it sends only control frames), CONTINUATION floods (header block
  bytes and frames). Each ends the connection with GOAWAY ENHANCE_YOUR_CALM.
- ``shutdown`` (graceful stop) sends GOAWAY naming the last stream taken: those finish,
  later ones are refused (REFUSED_STREAM), and the connection closes when none is left.
- Timeouts: the streams' own (nginx's header/body/send, through their connections), an
  idle connection (no stream) closes after the keep-alive timeout, a client that reads
  nothing for the send timeout is dropped, the preface must come within the header
  timeout.

All on the proxy's one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Final, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame

from data_plane.proxy.client import _ClientConnection
from data_plane.proxy.grpc_proxy import GrpcCall, grpc_call_for
from data_plane.proxy.headers import MAX_HEADER_BYTES
from data_plane.proxy.http2_stream import MalformedRequest, StreamTransport, request_head
from data_plane.tls_termination import server_name_of

if TYPE_CHECKING:
    from data_plane.proxy.server import ClientTimeouts, ProxyServer

log = logging.getLogger(__name__)

#: The connection preface of a client speaking HTTP/2 (RFC 9113 3.4).
PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

#: SETTINGS_MAX_CONCURRENT_STREAMS: h2's and Envoy's 100 (nginx's is 128; RFC 9113
#: asks for no less than 100).
MAX_CONCURRENT_STREAMS: Final = 100
#: SETTINGS_MAX_HEADER_LIST_SIZE: a hard cap at twice the HTTP/1.1 head limit
#: (HTTP/2 counts 32 bytes more per field); a head over the HTTP/1.1 limit itself is
#: answered 431 by the stream's connection, as over HTTP/1.1.
MAX_HEADER_LIST_SIZE: Final = 2 * MAX_HEADER_BYTES
#: SETTINGS_INITIAL_WINDOW_SIZE (per stream) and the connection's receive window: at
#: most this much request body is held per stream / per connection.
INITIAL_WINDOW_SIZE: Final = 256 * 1024
CONNECTION_WINDOW: Final = 1024 * 1024
#: CONTINUATION flood: a header block (HEADERS + CONTINUATIONs) larger than this many
#: encoded bytes, or in more frames than this, ends the connection.
MAX_HEADER_BLOCK_BYTES: Final = MAX_HEADER_LIST_SIZE
MAX_HEADER_BLOCK_FRAMES: Final = 16
#: Frame floods, counted per connection over :data:`FLOOD_WINDOW` seconds.
FLOOD_WINDOW: Final = 10.0
MAX_RESETS_PER_WINDOW: Final = 200  # rapid reset, CVE-2023-44487
MAX_SETTINGS_PER_WINDOW: Final = 100
MAX_PINGS_PER_WINDOW: Final = 500
#: Bytes of our own answers (SETTINGS/PING ACKs, RST_STREAMs) waiting in the write
#: buffer of a client that does not read them: past this, the connection is dropped.
MAX_CONTROL_BACKLOG: Final = 1024 * 1024


class _GuardedFrameBuffer(h2.frame_buffer.FrameBuffer):
    """h2's frame buffer with a cap on a header block's bytes and frames (CONTINUATION
    flood: h2 alone allows 64 frames of up to 16 KiB buffered per block)."""

    def _update_header_buffer(self, f: Frame | None) -> Frame | None:
        result = super()._update_header_buffer(f)
        pending = self._headers_buffer
        if pending and (
            len(pending) > MAX_HEADER_BLOCK_FRAMES
            or sum(len(frame.data) for frame in pending) > MAX_HEADER_BLOCK_BYTES
        ):
            raise h2.exceptions.DenialOfServiceError("header block too large (CONTINUATION flood)")
        return result


class _FloodCounter:
    """Events per fixed window of :data:`FLOOD_WINDOW` seconds."""

    __slots__ = ("count", "since")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.since = now

    def add(self, now: float) -> int:
        if now - self.since > FLOOD_WINDOW:
            self.count, self.since = 0, now
        self.count += 1
        return self.count


def _settings() -> h2.settings.Settings:
    return h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: INITIAL_WINDOW_SIZE,
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    })


class Http2Connection(asyncio.Protocol):
    """One client connection speaking HTTP/2 (see the module docstring)."""

    def __init__(self, server: ProxyServer) -> None:
        self.server = server
        self.loop = server._loop
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self._h2 = h2.connection.H2Connection(config)
        self._h2.local_settings = _settings()
        self._h2.decoder.max_header_list_size = MAX_HEADER_LIST_SIZE
        self._h2.incoming_buffer = _GuardedFrameBuffer(server=True)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, StreamTransport | GrpcCall] = {}
        #: The TLS server name the client sent (``b""``: none), ``None`` in plaintext.
        self.sni: bytes | None = None
        self._closed = False
        self._write_paused = False
        self._write_full_since = 0.0
        #: GOAWAY sent (graceful stop): streams above this id are refused.
        self._goaway_last: int | None = None
        self._last_stream = 0
        self.last_active = self.loop.time()
        #: Since when no stream is open (idle and preface timeouts count from it, not
        #: from the last frame: PINGs do not keep a connection without requests).
        self._idle_since = self.last_active
        self._got_request = False
        now = self.loop.time()
        self._resets = _FloodCounter(now)
        self._settings_frames = _FloodCounter(now)
        self._pings = _FloodCounter(now)

    # ------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.sni = server_name_of(ssl_object)
        self.server._client_added(self)
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server._client_gone(self)
        for stream in list(self._streams.values()):
            stream.client_reset()
        self._streams.clear()

    def pause_writing(self) -> None:
        self._write_paused = True
        self._write_full_since = self.loop.time()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._write_full_since = 0.0
        for stream in list(self._streams.values()):
            self.send_pending(stream)

    def eof_received(self) -> bool | None:
        # The client closed its side: nothing more can be asked; what is in flight is
        # abandoned (as HTTP/1.1 does on a half-close).
        return False

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self.last_active = self.loop.time()
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 queued GOAWAY with the error's code (ENHANCE_YOUR_CALM for DoS).
            log.info("HTTP/2 client %s: %s; closing", self.transport_info("peername"), exc)
            self._fail()
            return
        for event in events:
            self._on_event(event)
            if self._closed:
                return
        self.flush()
        if self._transport is not None and self._transport.get_write_buffer_size() > MAX_CONTROL_BACKLOG:
            # The client sends and does not read our answers: outstanding ACKs pile up.
            self._calm("control frames not read")

    # --------------------------------------------------------------------- events

    def _on_event(self, event: h2.events.Event) -> None:
        now = self.last_active
        if isinstance(event, h2.events.RequestReceived):
            self._request(event)
        elif isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is None:
                self.acknowledge(event.stream_id, event.flow_controlled_length)
            else:
                stream.request_data(event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.request_ended = True
                stream.request_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.end_sent = True
                stream.client_reset()
                if not self._streams:
                    self._idle_since = now
            if event.remote_reset and self._resets.add(now) > MAX_RESETS_PER_WINDOW:
                self._calm("rapid reset")
                return
            self._close_when_idle()
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                for stream in list(self._streams.values()):
                    self.send_pending(stream)
            else:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    self.send_pending(stream)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if self._settings_frames.add(now) > MAX_SETTINGS_PER_WINDOW:
                self._calm("SETTINGS flood")
                return
            for stream in list(self._streams.values()):
                self.send_pending(stream)
        elif isinstance(event, h2.events.PingReceived):
            if self._pings.add(now) > MAX_PINGS_PER_WINDOW:
                self._calm("PING flood")
        elif isinstance(event, h2.events.ConnectionTerminated):
            # The client's GOAWAY: it opens no more streams; finish those in flight.
            self._goaway_last = self._goaway_last if self._goaway_last is not None else self._last_stream
            self._close_when_idle()

    def _request(self, event: h2.events.RequestReceived) -> None:
        stream_id = event.stream_id
        if self._goaway_last is not None and stream_id > self._goaway_last:
            self.reset(stream_id, refused=True)
            return
        self._last_stream = max(self._last_stream, stream_id)
        self._got_request = True
        has_body = event.stream_ended is None
        headers = list(event.headers or ())
        try:
            head, method, chunked = request_head(headers, has_body)
        except MalformedRequest:
            self.reset(stream_id)
            return
        call = grpc_call_for(self, stream_id, headers, has_body)
        if call is not None:
            self._streams[stream_id] = call
            call.start()
            return
        stream = StreamTransport(self, stream_id, method, chunked, has_body)
        self._streams[stream_id] = stream
        stream.start(head)

    # ------------------------------------------------------- called by the streams

    def transport_info(self, name: str, default: object = None) -> object:
        transport = self._transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def acknowledge(self, stream_id: int, size: int) -> None:
        """``size`` flow-controlled bytes of ``stream_id`` were consumed: the client's
        windows open again (h2 sends WINDOW_UPDATE once enough is consumed)."""
        if size and not self._closed:
            try:
                self._h2.acknowledge_received_data(size, stream_id)
            except h2.exceptions.StreamClosedError:
                pass

    def send_headers(self, stream: StreamTransport | GrpcCall, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        if self._closed:
            return
        try:
            self._h2.send_headers(stream.stream_id, fields, end_stream=end)
        except h2.exceptions.StreamClosedError:
            return  # the client reset it meanwhile
        except h2.exceptions.ProtocolError:
            # A field HTTP/2 cannot carry (the target's): the stream fails, as a
            # garbled response would end an HTTP/1.1 connection.
            log.warning("HTTP/2 stream %d: the response head cannot be sent over HTTP/2", stream.stream_id)
            self.reset(stream.stream_id, internal=True)
            stream.abort()
            return
        if end:
            self._stream_finished(stream)
        self.flush()

    def send_pending(self, stream: StreamTransport | GrpcCall) -> None:
        """Send what the windows admit of ``stream``'s response DATA (and its end)."""
        if self._closed or self._write_paused:
            return
        h2c = self._h2
        sid = stream.stream_id
        sent = False
        try:
            while stream.pending:
                window = min(h2c.local_flow_control_window(sid), h2c.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = stream.pending[0]
                if len(chunk) > window:
                    stream.pending[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    stream.pending.popleft()
                stream.pending_size -= len(chunk)
                h2c.send_data(sid, chunk)
                sent = True
            if not stream.pending and stream.response_ended and stream.headers_sent and not stream.end_sent:
                if stream.trailers:
                    h2c.send_headers(sid, stream.trailers, end_stream=True)  # gRPC's status
                else:
                    h2c.end_stream(sid)
                self._stream_finished(stream)
                sent = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            stream.pending.clear()
            stream.pending_size = 0
        if sent:
            self.flush()
            stream.sent()

    def _stream_finished(self, stream: StreamTransport | GrpcCall) -> None:
        stream.end_sent = True
        if not stream.request_ended:
            # Answered before the client finished its body: stop it sending (RFC 9113 8.1).
            self.reset(stream.stream_id, no_error=True)
        self._forget(stream)

    def reset(self, stream_id: int, *, internal: bool = False, refused: bool = False, no_error: bool = False) -> None:
        """RST_STREAM ``stream_id`` (PROTOCOL_ERROR unless told otherwise)."""
        if self._closed:
            return
        code = (
            ErrorCodes.INTERNAL_ERROR if internal
            else ErrorCodes.REFUSED_STREAM if refused
            else ErrorCodes.NO_ERROR if no_error
            else ErrorCodes.PROTOCOL_ERROR
        )
        try:
            self._h2.reset_stream(stream_id, code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        stream = self._streams.get(stream_id)
        if stream is not None and not stream.end_sent:
            stream.end_sent = True
            stream.pending.clear()
            stream.pending_size = 0
            self._forget(stream)
        self.flush()

    def stream_gone(self, stream: StreamTransport | GrpcCall) -> None:
        """The stream's connection is done; the stream goes once its end is sent."""
        if stream.end_sent:
            self._forget(stream)

    def _forget(self, stream: StreamTransport | GrpcCall) -> None:
        if stream.end_sent and stream.closing:
            if self._streams.get(stream.stream_id) is stream:
                del self._streams[stream.stream_id]
                if not self._streams:
                    self._idle_since = self.loop.time()
            self._close_when_idle()

    def flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._closed:
            self._transport.write(data)

    # ---------------------------------------------------------------- ending it

    def _close_when_idle(self) -> None:
        if self._goaway_last is not None and not self._streams and not self._closed:
            self._close()

    def _close(self) -> None:
        self.flush()
        if self._transport is not None and not self._closed:
            self._transport.close()

    def _fail(self) -> None:
        """h2 found a protocol error and queued its GOAWAY: send it and close."""
        self._close()
        self._closed = True
        for stream in list(self._streams.values()):
            stream.client_reset()
        self._streams.clear()

    def _calm(self, why: str) -> None:
        """An attack guard tripped: GOAWAY ENHANCE_YOUR_CALM, then close."""
        log.warning("HTTP/2 client %s: %s; closing with ENHANCE_YOUR_CALM", self.transport_info("peername"), why)
        try:
            self._h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, last_stream_id=self._last_stream)
        except h2.exceptions.ProtocolError:
            pass
        self._fail()

    def _goaway(self) -> None:
        """GOAWAY NO_ERROR naming the last stream taken, written beside h2's state
        machine (h2's own GOAWAY closes its state: the streams in flight could not end)."""
        if self._goaway_last is None:
            self._goaway_last = self._last_stream
        self.flush()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self._goaway_last, error_code=ErrorCodes.NO_ERROR)
        if self._transport is not None and not self._closed:
            self._transport.write(frame.serialize())

    # ------------------------------------------------------ the server's surface

    def shutdown(self) -> None:
        """Graceful stop: GOAWAY; the streams taken finish, then the connection closes."""
        if self._closed:
            return
        self._goaway()
        self._close_when_idle()

    def abort(self) -> None:
        if self._transport is not None and not self._closed:
            self._transport.abort()

    def check_timeouts(self, now: float, timeouts: ClientTimeouts, keepalive: float) -> None:
        """The server's sweep: each stream's own timeouts (through its connection), a
        client that reads nothing for ``timeouts.send``, a preface that does not come
        within ``timeouts.header``, and no stream for ``keepalive`` seconds."""
        if self._closed:
            return
        if self._write_full_since and now - self._write_full_since > timeouts.send:
            self.abort()
            return
        for stream in list(self._streams.values()):
            if not stream.closing and isinstance(stream, StreamTransport):
                # (A gRPC call keeps its own time: its deadline and the service's timeouts.)
                stream.client.check_timeouts(now, timeouts, keepalive)
        if self._streams:
            return
        if now - self._idle_since > (keepalive if self._got_request else timeouts.header):
            self._goaway()
            self._close()


class ProtocolSniffer(asyncio.Protocol):
    """The protocol of an ``http2`` listener's new connection, until it knows which
    protocol the client speaks (see the module docstring)."""

    def __init__(self, server: ProxyServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._seen = b""
        self._since = server._loop.time()
        self._handed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            # uvloop calls this after the handshake: ALPN has chosen.
            self._hand_over(ssl_object.selected_alpn_protocol() == "h2", b"")
            return
        # Plaintext: the first bytes decide; meanwhile the server times the wait.
        self._server._clients.add(self)
        if self._server._clients_empty is not None:
            self._server._clients_empty.clear()

    def data_received(self, data: bytes) -> None:
        self._seen += data
        seen = self._seen
        if len(seen) >= len(PREFACE) or not PREFACE.startswith(seen):
            self._server._client_gone(self)
            self._hand_over(seen.startswith(PREFACE), seen)

    def _hand_over(self, http2: bool, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._handed = True
        protocol: Any = Http2Connection(self._server) if http2 else _ClientConnection(self._server)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._handed:
            self._server._client_gone(self)

    # What the server's sweep and stop call on a client.
    def check_timeouts(self, now: float, timeouts: ClientTimeouts, keepalive: float) -> None:
        if not self._handed and now - self._since > timeouts.header:
            self.abort()

    def shutdown(self) -> None:
        if not self._handed and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if not self._handed and self._transport is not None:
            self._transport.abort()
