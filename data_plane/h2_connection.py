"""One HTTP/2 client connection to a target and its streams: multiplexed, flow-controlled
both ways, on the ``h2`` state machine (python-hyper) and the proxy's event loop.
:mod:`data_plane.h2_upstream` pools these connections per target.

What it is for: gRPC proxying (a ``grpc``/``grpcs`` service's requests go to targets
over HTTP/2, many streams on one connection) and gRPC health probes
(:mod:`data_plane.health.grpc_probe`, one connection per probe).

Contract
--------

- :func:`connect` opens one :class:`H2ClientConnection`: TCP, TLS when given an
  :class:`~data_plane.upstream_tls.UpstreamTls` whose context offers ALPN ``h2``
  (the target must select ``h2``; a verified chain longer than ``tls_verify_depth``
  allows is refused as the HTTP/1.1 path refuses it), the client preface, and the
  wait for the target's first SETTINGS (so its ``SETTINGS_MAX_CONCURRENT_STREAMS`` is
  known before the first stream). Cleartext is h2c with prior knowledge (gRPC's
  ``grpc`` scheme). Failures raise :class:`H2ConnectError` (no h2, a refused chain,
  a target that closed), ``OSError``/``ssl.SSLError`` as the socket raises them, or
  ``TimeoutError``.
- :class:`H2Stream` is one request/response exchange, owned by the task that opened
  it. Headers are ``(name, value)`` byte pairs, lowercase names, request
  pseudo-headers first (``:method``, ``:scheme``, ``:path``, ``:authority``), as
  HTTP/2 requires; ``h2`` validates what is sent. Data sizes are bytes.

  * :meth:`H2Stream.send` waits for flow-control window (the stream's and the
    connection's) and for the socket's write buffer to drain, so a producer faster
    than the target never buffers more than the window.
  * :meth:`H2Stream.end` ends the request, with trailers or without.
  * :meth:`H2Stream.response` returns the final response headers (1xx skipped);
    :meth:`H2Stream.read` the next data chunk, ``b""`` at the end. Window is given
    back to the target only as :meth:`read` hands chunks over, so an unread stream
    holds at most ``stream_window`` bytes and stalls its sender (bounded memory).
    :attr:`H2Stream.trailers` holds the trailers once :meth:`read` returned ``b""``
    (``None`` when none came: a gRPC "trailers-only" answer carries ``grpc-status``
    in the response headers instead).
  * :meth:`H2Stream.cancel` resets the stream (``RST_STREAM``, ``CANCEL`` by default)
    and gives its unread bytes' window back to the connection. A stream must end
    (response read to its end) or be cancelled; either frees its slot.
  * Failures raise :class:`H2StreamError` from the pending and every later call: the
    target reset the stream, the connection failed or was lost (all of its streams
    fail), or GOAWAY left the stream unprocessed (``retryable``: the target never saw
    it, so another target may take it even for a non-idempotent request).

Single event-loop thread; nothing here is thread-safe. Timeouts are the caller's
(``asyncio.timeout`` around the awaits), except the connect's.

Why this module is past 600 lines: one connection's protocol, its streams and h2's
events share one state machine (flow control, GOAWAY, failures reach every stream);
the pool is apart (``h2_upstream``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
from h2.errors import ErrorCodes

from data_plane.upstream_tls import UpstreamTls, chain_error

__all__ = [
    "H2ClientConnection",
    "H2ConnectError",
    "H2Stream",
    "H2StreamError",
    "Header",
    "connect",
]

log = logging.getLogger(__name__)

Header = tuple[bytes, bytes]

#: What this side lets a target send on one stream before it reads (bytes).
DEFAULT_STREAM_WINDOW = 256 * 1024
#: ... and on one connection, all streams together.
DEFAULT_CONNECTION_WINDOW = 1024 * 1024
#: The largest response header list accepted (bytes, HTTP/2's accounting).
MAX_HEADER_LIST_SIZE = 64 * 1024
#: RFC 9113's initial window, before any SETTINGS.
_DEFAULT_WINDOW = 65535
#: A connection whose next stream id passes this opens no more streams (ids are 31-bit).
_LAST_STREAM_ID = 2**31 - 1000


class H2ConnectError(ConnectionError):
    """No usable HTTP/2 connection: ALPN did not select ``h2``, the TLS chain was
    refused, or the target closed before its SETTINGS."""


class H2StreamError(Exception):
    """A stream failed. ``error_code``: the ``RST_STREAM``/GOAWAY code when the target
    sent one; ``retryable``: the target never processed the stream."""

    def __init__(self, reason: str, *, error_code: int | None = None, retryable: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_code = error_code
        self.retryable = retryable


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class H2Stream:
    """One request/response exchange on an :class:`H2ClientConnection` (see the
    module docstring for the contract)."""

    def __init__(self, connection: H2ClientConnection, stream_id: int, local_ended: bool) -> None:
        self.stream_id = stream_id
        self._connection = connection
        self._headers: list[Header] | None = None
        #: Response trailers, once the stream ended with some.
        self.trailers: list[Header] | None = None
        #: Received chunks not handed over yet, with their flow-controlled length.
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._remote_ended = False
        self._local_ended = local_ended
        self._error: H2StreamError | None = None
        self._reader: asyncio.Future[None] | None = None
        self._sender: asyncio.Future[None] | None = None

    @property
    def done(self) -> bool:
        """The exchange is over: the response ended (and the request), or it failed."""
        return self._error is not None or (self._remote_ended and self._local_ended)

    # ------------------------------------------------------------------ request side

    async def send(self, data: bytes | memoryview) -> None:
        """Send request body bytes; returns once they are handed to the socket."""
        view = memoryview(data)
        conn = self._connection
        while view:
            self._raise_if_failed()
            if self._local_ended:
                raise H2StreamError("request already ended")
            await conn.writable()
            self._raise_if_failed()
            window = conn.h2.local_flow_control_window(self.stream_id)
            if window <= 0:
                self._sender = conn.loop.create_future()
                try:
                    await self._sender
                finally:
                    self._sender = None
                continue
            size = min(len(view), window, conn.h2.max_outbound_frame_size)
            conn.h2.send_data(self.stream_id, view[:size])
            conn.flush()
            view = view[size:]

    async def end(self, trailers: Sequence[tuple[bytes | str, bytes | str]] | None = None) -> None:
        """End the request, with ``trailers`` when given."""
        self._raise_if_failed()
        if self._local_ended:
            return
        conn = self._connection
        await conn.writable()
        self._raise_if_failed()
        if trailers:
            conn.h2.send_headers(self.stream_id, list(trailers), end_stream=True)
        else:
            conn.h2.end_stream(self.stream_id)
        self._local_ended = True
        conn.flush()
        conn.stream_progressed(self)

    def cancel(self, error_code: int = ErrorCodes.CANCEL) -> None:
        """Reset the stream (no-op once it is done); frees its slot at once."""
        if self.done:
            return
        self._fail(H2StreamError("cancelled", error_code=error_code))
        self._connection.reset(self, error_code)

    # ----------------------------------------------------------------- response side

    async def response(self) -> list[Header]:
        """The final response headers (waits for them)."""
        while self._headers is None:
            self._raise_if_failed()
            await self._wait_readable()
        return self._headers

    async def read(self) -> bytes:
        """The next response body chunk; ``b""`` once the response ended."""
        while True:
            if self._chunks:
                data, flow = self._chunks.popleft()
                self._connection.acknowledge(self, flow)
                return data
            self._raise_if_failed()
            if self._remote_ended:
                return b""
            await self._wait_readable()

    async def read_all(self) -> bytes:
        """The rest of the response body (for small bodies: probes, tests)."""
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)

    # ----------------------------------------------------------- connection's calls

    def _wait_readable(self) -> asyncio.Future[None]:
        self._reader = self._connection.loop.create_future()
        return self._reader

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def _on_headers(self, headers: list[Header]) -> None:
        if self._headers is None:
            self._headers = headers
        else:
            self.trailers = headers
        _wake(self._reader)

    def _on_data(self, data: bytes, flow: int) -> None:
        self._chunks.append((data, flow))
        _wake(self._reader)

    def _on_end(self) -> None:
        self._remote_ended = True
        _wake(self._reader)

    def _on_window(self) -> None:
        _wake(self._sender)

    def _fail(self, error: H2StreamError) -> int:
        """Record ``error`` (the first one wins) and wake the waiters; returns the
        flow-controlled bytes of the chunks dropped, whose window goes back to the
        connection."""
        if self._error is None:
            self._error = error
        dropped = sum(flow for _, flow in self._chunks)
        self._chunks.clear()
        _wake(self._reader)
        _wake(self._sender)
        return dropped


class H2ClientConnection(asyncio.Protocol):
    """One HTTP/2 client connection (the protocol object of its transport)."""

    def __init__(
        self,
        *,
        stream_window: int = DEFAULT_STREAM_WINDOW,
        connection_window: int = DEFAULT_CONNECTION_WINDOW,
        max_streams: int | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: stream_window,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_SIZE,
            },
        )
        # A GOAWAY lets the streams it names (up to its last stream id) still complete
        # (RFC 9113 §6.8: gRPC servers send a graceful one at every max_connection_age,
        # and one with an error code before the UNAVAILABLE trailers of the calls they
        # cancel when stopping), but h2 closes its state machine on any GOAWAY and
        # refuses every later frame, also those already read with it. Its GOAWAY handler
        # is wrapped to reopen the machine; ``_goaway`` keeps new streams off the
        # connection, and the streams still open end with their frames or with the
        # connection's close.
        table = cast(dict[type, Callable[..., Any]], self.h2._frame_dispatch_table)
        receive_goaway = table[hyperframe.frame.GoAwayFrame]

        def graceful_goaway(frame: hyperframe.frame.GoAwayFrame) -> Any:
            result = receive_goaway(frame)
            self.h2.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
            return result

        table[hyperframe.frame.GoAwayFrame] = graceful_goaway
        self._connection_window = connection_window
        self._cap = max_streams
        self.transport: asyncio.Transport | None = None
        self._streams: dict[int, H2Stream] = {}
        self._settings_received: asyncio.Future[None] = self.loop.create_future()
        self._write_ready: asyncio.Future[None] | None = None
        self._goaway = False
        #: The error code of the target's GOAWAY (None: none came), for the streams
        #: still open when it then closes the connection.
        self._goaway_code: int | None = None
        self._closed = False
        self._idle: asyncio.TimerHandle | None = None
        #: Seconds without streams before the connection closes itself (``None``:
        #: never; the pool sets it).
        self.idle_timeout: float | None = None
        #: Called once when the connection closes (the pool forgets it).
        self._close_callbacks: list[Callable[[H2ClientConnection], None]] = []

    # ------------------------------------------------------------------ state

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    @property
    def max_streams(self) -> int:
        """How many streams may be open at once: the peer's limit, bounded by the
        pool's cap."""
        peer = self.h2.remote_settings.max_concurrent_streams
        return peer if self._cap is None else min(peer, self._cap)

    @property
    def usable(self) -> bool:
        """Takes new streams: open, no GOAWAY, stream ids left."""
        last = self.h2.highest_outbound_stream_id or 0
        return not self._closed and not self._goaway and last < _LAST_STREAM_ID

    @property
    def has_capacity(self) -> bool:
        return self.usable and len(self._streams) < self.max_streams

    def add_close_callback(self, callback: Callable[[H2ClientConnection], None]) -> None:
        self._close_callbacks.append(callback)

    # -------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        self.h2.initiate_connection()
        if self._connection_window > _DEFAULT_WINDOW:
            self.h2.increment_flow_control_window(self._connection_window - _DEFAULT_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued GOAWAY where the error is the peer's; send it, then fail all.
            self.flush()
            self._shutdown(H2StreamError(f"HTTP/2 protocol error: {exc}"))
            return
        for event in events:
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        code = self._goaway_code
        if code is not None and code != ErrorCodes.NO_ERROR:
            self._shutdown(H2StreamError(f"the target closed the connection ({_code_name(code)})", error_code=code))
        else:
            self._shutdown(H2StreamError("connection to the target was lost"))

    def pause_writing(self) -> None:
        if self._write_ready is None:
            self._write_ready = self.loop.create_future()

    def resume_writing(self) -> None:
        waiter, self._write_ready = self._write_ready, None
        _wake(waiter)

    # ------------------------------------------------------------------ events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            flow = event.flow_controlled_length or 0
            if stream is None:
                # A stream we already gave up: its bytes still count for the connection.
                if flow:
                    self.h2.acknowledge_received_data(flow, event.stream_id)
                return
            stream._on_data(event.data or b"", flow)
        elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None and event.headers is not None:
                stream._on_headers([(bytes(n), bytes(v)) for n, v in event.headers])
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                stream._on_end()
                self.stream_progressed(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id or 0)
            if stream is not None:
                code = int(event.error_code) if event.error_code is not None else None
                refused = code == ErrorCodes.REFUSED_STREAM
                self._drop(stream, H2StreamError(
                    f"the target reset the stream ({_code_name(code)})",
                    error_code=code, retryable=refused,
                ))
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream._on_window()
            else:
                for stream in list(self._streams.values()):
                    stream._on_window()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            _wake(self._settings_received)
            for stream in list(self._streams.values()):
                stream._on_window()  # the initial window may have grown
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._on_goaway(event)

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        self._goaway = True
        last = event.last_stream_id or 0
        code = int(event.error_code) if event.error_code is not None else 0
        for stream_id, stream in list(self._streams.items()):
            if stream_id > last:
                self._drop(stream, H2StreamError(
                    "the target closed the connection before this stream (GOAWAY)",
                    error_code=code, retryable=True,
                ))
        # The streams it names may still get their frames (a stopping gRPC server sends
        # their UNAVAILABLE trailers after its GOAWAY); any left when the target closes
        # the connection fail then, with the GOAWAY's code in the message.
        self._goaway_code = code
        if not self._streams:
            self.close()

    # --------------------------------------------------------------- streams' calls

    async def ready(self) -> None:
        """Wait for the target's first SETTINGS."""
        await asyncio.shield(self._settings_received)

    async def writable(self) -> None:
        while self._write_ready is not None and not self._closed:
            await asyncio.shield(self._write_ready)

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self._closed:
            self.transport.write(data)

    def open_stream(self, headers: Iterable[tuple[bytes | str, bytes | str]], *, end_stream: bool = False) -> H2Stream:
        """Send a request's headers on a new stream (caller checked :attr:`has_capacity`)."""
        if not self.usable:
            raise H2StreamError("connection takes no new streams", retryable=True)
        stream_id = self.h2.get_next_available_stream_id()
        try:
            self.h2.send_headers(stream_id, list(headers), end_stream=end_stream)
        except h2.exceptions.ProtocolError as exc:
            raise H2StreamError(f"invalid request headers: {exc}") from None
        stream = H2Stream(self, stream_id, end_stream)
        self._streams[stream_id] = stream
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self.flush()
        return stream

    def acknowledge(self, stream: H2Stream, flow: int) -> None:
        """The consumer took ``flow`` bytes: let the target send that much more."""
        if flow and not self._closed:
            self.h2.acknowledge_received_data(flow, stream.stream_id)
            self.flush()

    def reset(self, stream: H2Stream, error_code: int) -> None:
        if self._streams.pop(stream.stream_id, None) is None or self._closed:
            self._after_stream()
            return
        try:
            self.h2.reset_stream(stream.stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass  # it ended meanwhile
        self.flush()
        self._after_stream()

    def stream_progressed(self, stream: H2Stream) -> None:
        """Forget a stream both sides ended (its unread chunks stay with it)."""
        if stream.done and self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
            self._after_stream()

    def _drop(self, stream: H2Stream, error: H2StreamError) -> None:
        dropped = stream._fail(error)
        if self._streams.pop(stream.stream_id, None) is not None and dropped and not self._closed:
            # Unread bytes of a dead stream still hold the connection's window.
            self.h2.acknowledge_received_data(dropped, stream.stream_id)
        self._after_stream()

    def _after_stream(self) -> None:
        if self._streams or self._closed:
            return
        if self._goaway:
            self.close()
        elif self.idle_timeout is not None and self._idle is None:
            self._idle = self.loop.call_later(self.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        self._idle = None
        if not self._streams:
            self.close()

    # ------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close now: GOAWAY, then the socket; open streams fail."""
        if self._closed:
            return
        if self.transport is not None and not self.transport.is_closing():
            try:
                self.h2.close_connection()
            except h2.exceptions.ProtocolError:
                pass
            self.flush()
            self.transport.close()
        self._shutdown(H2StreamError("connection closed"))

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
        self._shutdown(H2StreamError("connection aborted"))

    def _shutdown(self, error: H2StreamError) -> None:
        if self._closed:
            return
        self._closed = True
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self._settings_received.done():
            self._settings_received.set_exception(
                H2ConnectError("the target closed the connection before its HTTP/2 SETTINGS")
            )
            self._settings_received.exception()  # retrieved: ready() raises it if awaited
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            stream._fail(error)
        _wake(self._write_ready)
        self._write_ready = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for callback in callbacks:
            callback(self)


def _code_name(code: int | None) -> str:
    if code is None:
        return "no error code"
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error code {code}"


async def connect(
    host: str,
    port: int,
    *,
    tls: UpstreamTls | None = None,
    server_name: str | None = None,
    timeout: float,
    stream_window: int = DEFAULT_STREAM_WINDOW,
    connection_window: int = DEFAULT_CONNECTION_WINDOW,
    max_streams: int | None = None,
) -> H2ClientConnection:
    """Open an HTTP/2 connection to ``host:port`` within ``timeout`` seconds (see the
    module docstring). ``tls``'s context must offer ALPN ``h2``; ``server_name`` is
    the SNI and the name verified (``None`` with TLS: ``host``)."""
    loop = asyncio.get_running_loop()
    protocol: H2ClientConnection | None = None

    def factory() -> H2ClientConnection:
        nonlocal protocol
        protocol = H2ClientConnection(
            stream_window=stream_window, connection_window=connection_window, max_streams=max_streams
        )
        return protocol

    try:
        async with asyncio.timeout(timeout):
            if tls is None:
                await loop.create_connection(factory, host, port)
            else:
                transport, _ = await loop.create_connection(
                    factory, host, port, ssl=tls.context, server_hostname=server_name or host
                )
                ssl_object = transport.get_extra_info("ssl_object")
                selected = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
                if selected != "h2":
                    raise H2ConnectError(f"the target did not select HTTP/2 (ALPN {selected!r})")
                problem = chain_error(transport, tls)
                if problem is not None:
                    raise H2ConnectError(problem)
            assert protocol is not None
            await protocol.ready()
    except BaseException:
        if protocol is not None:
            protocol.abort()
        raise
    assert protocol is not None
    return protocol
