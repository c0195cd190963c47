"""A raw HTTP/2 client on the ``h2`` state machine, for tests of the proxy's HTTP/2 side.

:class:`H2Client` opens a connection (h2c with prior knowledge, or TLS with ALPN
``h2``), sends what its ``h2`` connection queues (:meth:`H2Client.flush`), and reads
frames into per-stream :class:`StreamState` records until a condition holds
(:meth:`H2Client.until`). :meth:`H2Client.request` is one whole request. The ``conn``
attribute is the ``h2`` connection itself, and :meth:`H2Client.send_raw` writes raw
frames, for the misbehaving clients of the attack tests. Flow control is the test's:
received DATA is acknowledged only when ``auto_ack`` is set (the default).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


@dataclass
class StreamState:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class H2Client:
    """One HTTP/2 client connection (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, auto_ack: bool) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.streams: dict[int, StreamState] = {}
        self.auto_ack = auto_ack
        #: The GOAWAY received (its error code), and whether the server closed.
        self.goaway: int | None = None
        self.goaway_last_stream: int | None = None
        self.closed = False
        self.pings_acked = 0
        self.settings_acked = 0

    @classmethod
    async def open(
        cls, stack: AsyncExitStack, port: int, *, tls: ssl.SSLContext | None = None,
        server_name: str | None = None, auto_ack: bool = True, window: int | None = None,
    ) -> H2Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=tls, server_hostname=server_name if tls is not None else None
        )
        stack.callback(writer.close)
        client = cls(reader, writer, auto_ack=auto_ack)
        if window is not None:
            client.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        client.conn.initiate_connection()
        client.flush()
        return client

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def start(
        self, method: str, path: str, *, authority: str = "api.test",
        headers: Sequence[tuple[str, str]] = (), end: bool = True,
    ) -> int:
        """Send a request's HEADERS; returns its stream id."""
        sid = self.conn.get_next_available_stream_id()
        self.streams[sid] = StreamState()
        self.conn.send_headers(sid, [
            (":method", method), (":path", path), (":scheme", "http"), (":authority", authority), *headers,
        ], end_stream=end)
        self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        """Send ``body`` on ``sid`` as the windows allow (waits for WINDOW_UPDATEs)."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                await self.read_some()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        if end:
            self.conn.end_stream(sid)
            self.flush()

    async def read_some(self, timeout: float = 10.0) -> None:
        """Read once and process what came (raises TimeoutError after ``timeout``)."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            self.closed = True
            return
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            self.closed = True
            return
        for event in events:
            self._on_event(event)
        self.flush()

    def _on_event(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        state = self.streams.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and state is not None:
            headers = {k: v for k, v in event.headers}  # type: ignore[misc]
            state.status = int(headers.pop(":status"))
            state.headers = headers
        elif isinstance(event, h2.events.DataReceived) and state is not None:
            state.body += event.data or b""
            if self.auto_ack and event.flow_controlled_length:
                self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
        elif isinstance(event, h2.events.StreamEnded) and state is not None:
            state.ended = True
        elif isinstance(event, h2.events.StreamReset) and state is not None:
            state.reset = int(event.error_code or 0)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = int(event.error_code or 0)
            self.goaway_last_stream = event.last_stream_id
            if self.goaway == 0:
                # h2 closes its whole state on any GOAWAY; a graceful one lets the
                # streams up to last_stream_id finish (RFC 9113 6.8): keep reading them.
                self.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acked += 1

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Read until ``condition()`` holds; AssertionError when the server closes first."""
        async with asyncio.timeout(timeout):
            while not condition():
                if self.closed:
                    raise AssertionError("the server closed the connection")
                await self.read_some()

    async def read_to_close(self, timeout: float = 10.0) -> None:
        """Read until the server closes the connection (a reset counts as closed)."""
        async with asyncio.timeout(timeout):
            while not self.closed:
                try:
                    await self.read_some()
                except (ConnectionResetError, BrokenPipeError):
                    self.closed = True

    async def request(
        self, method: str, path: str, *, authority: str = "api.test",
        headers: Sequence[tuple[str, str]] = (), body: bytes | None = None,
    ) -> Response:
        sid = self.start(method, path, authority=authority, headers=headers, end=body is None)
        if body is not None:
            await self.send_body(sid, body)
        state = self.streams[sid]
        await self.until(lambda: state.ended or state.reset is not None)
        if state.reset is not None:
            raise AssertionError(f"stream {sid} reset with code {state.reset}")
        return Response(state.status, state.headers, bytes(state.body))


def h2_tls_context() -> ssl.SSLContext:
    """A client context offering ALPN ``h2`` and ``http/1.1``, verifying nothing."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2", "http/1.1"])
    return context
