"""Request smuggling through the data-plane proxy, driven with raw sockets (issue 12).

Every test writes exact bytes from a raw TCP client and asserts two things: what the
client gets back, and what a recording target read off its sockets. The target
(:class:`RecordingBackend`) keeps *every* byte it read, per connection, not only the
requests it could parse, so "the target received nothing" is a real assertion; it
answers each request it can parse with ``200`` and the request line as the body, so the
client can tell which request an answer belongs to.

What a target receives is compared as exact bytes up to the order of header lines: the
request line is compared byte for byte, the header lines as a sorted list (see
:func:`messages`), and nothing may follow the blank line unless the test says so.

The contract of the proxy path (issue 12; RFC 9112 section 11 on request smuggling):
nothing the proxy refused ever reaches a target; no byte after an upgrade request reaches
the target before its ``101``; Host is validated; response framing is relayed correctly;
an upstream connection is pooled only after a complete exchange.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import pytest

from data_plane.proxy import ProxyServer
from data_plane.runtime import compile_config
from tests.support.backends import SeenRequest
from tests.support.polling import wait_for
from tests.support.proxy import (
    assert_closed,
    body_json,
    connect,
    proxy_to,
    read_response,
    start_proxy,
)

#: Upper bound for every read a test waits on (a hang fails the test, it does not stall it).
READ_TIMEOUT = 5.0
#: The "nothing (more) arrives" window.
QUIET = 0.3

CLEAN = b"GET /clean HTTP/1.1\r\nHost: t\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

PUB_ONLY = [{"id": "r1", "paths": ["/pub"], "strip_path": False, "service": {"id": "s1"}}]

UPGRADE_HEAD = (
    b"GET /pub/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
)
UNROUTED = (
    b"GET /internal/admin?delete=1 HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n"
)
SWITCHING = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
NO_ROUTE = {"message": "no Route matched with those values"}


# ------------------------------------------------------------------ recording target


class Peer:
    """One connection accepted by a :class:`RecordingBackend`.

    ``received`` is everything read off the socket, in order; the read helpers consume
    from an internal buffer, so what a script has not looked at yet is recorded too.
    """

    def __init__(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer
        self.received = bytearray()
        self._buffer = bytearray()
        self.eof = False

    async def _fill(self) -> bool:
        """Read once more off the socket; ``False`` at EOF."""
        if self.eof:
            return False
        try:
            data = await self.reader.read(65536)
        except ConnectionError:
            data = b""
        if not data:
            self.eof = True
            return False
        self.received += data
        self._buffer += data
        return True

    def _take(self, n: int) -> bytes:
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def read_until(self, separator: bytes) -> bytes | None:
        """Up to and including ``separator``; ``None`` at EOF before it."""
        while (at := self._buffer.find(separator)) < 0:
            if not await self._fill():
                return None
        return self._take(at + len(separator))

    async def read_exactly(self, n: int) -> bytes | None:
        while len(self._buffer) < n:
            if not await self._fill():
                return None
        return self._take(n)

    async def read_some(self) -> bytes:
        """What is buffered, else the next read (``b""`` at EOF)."""
        if not self._buffer:
            await self._fill()
        return self._take(len(self._buffer))

    async def read_within(self, seconds: float) -> bytes:
        """Everything that is buffered or arrives within ``seconds`` (a "nothing
        arrives" check returns ``b""``)."""
        try:
            async with asyncio.timeout(seconds):
                while await self._fill():
                    pass
        except TimeoutError:
            pass
        return self._take(len(self._buffer))

    async def read_request(self) -> SeenRequest | None:
        """One request (head and body, by Content-Length or chunked framing); ``None``
        at EOF. Raises ``ValueError`` on framing it cannot follow."""
        head = await self.read_until(b"\r\n\r\n")
        if head is None:
            return None
        request = SeenRequest(head, b"", self.number)
        if (request.header("transfer-encoding") or "").lower() == "chunked":
            body = b""
            while True:
                line = await self.read_until(b"\r\n")
                if line is None:
                    return None
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while await self.read_until(b"\r\n") not in (b"\r\n", None):
                        pass  # trailers
                    break
                data = await self.read_exactly(size + 2)
                if data is None:
                    return None
                body += data[:-2]
            request.body = body
        elif (length := request.header("content-length")) is not None:
            data = await self.read_exactly(int(length))
            if data is None:
                return None
            request.body = data
        return request

    async def drain_to_eof(self) -> None:
        while await self._fill():
            pass

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()


Serve = Callable[[Peer], Awaitable[None]]


def echo_request_line(request: SeenRequest) -> bytes:
    line = request.head.split(b"\r\n", 1)[0]
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(line) + line


def answering(answer: Callable[[SeenRequest], bytes] = echo_request_line) -> Serve:
    """A keep-alive HTTP/1.1 target answering every request it parses with ``answer``."""

    async def serve(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.write(answer(request))

    return serve


@dataclass
class RecordingBackend:
    """A raw asyncio target that records every byte it reads, per connection.

    ``serve`` scripts each connection (default: :func:`answering`). When a script cannot
    parse what it got, the rest of the connection is still read and recorded until EOF.
    """

    serve: Serve = field(default_factory=answering)
    peers: list[Peer] = field(default_factory=list)
    port: int = 0
    _server: asyncio.AbstractServer | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.append(task)
        peer = Peer(len(self.peers) + 1, reader, writer)
        self.peers.append(peer)
        try:
            await self.serve(peer)
        except ValueError:
            await peer.drain_to_eof()  # unparsable: keep recording what comes
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def start(self, stack: AsyncExitStack) -> RecordingBackend:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        stack.push_async_callback(self.stop)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for peer in self.peers:
            peer.writer.close()  # the scripts' reads end (EOF) and they return
        pending = [t for t in self._tasks if not t.done()]
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=2.0)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def received(self) -> bytes:
        """Every byte read, over all connections (in accept order)."""
        return b"".join(bytes(p.received) for p in self.peers)

    def messages(self) -> list[tuple[bytes, ...]]:
        """:func:`messages` of every connection, in accept order."""
        return [m for p in self.peers for m in messages(bytes(p.received))]


# ------------------------------------------------------------------------- helpers


def messages(data: bytes) -> list[tuple[bytes, ...]]:
    """``data`` as a list of request heads, each ``(request line, *sorted header
    lines)``; bytes after the last complete head (a body, half a head, garbage) become a
    last 1-tuple. Exact bytes, up to the order of header lines."""
    out: list[tuple[bytes, ...]] = []
    while data:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            out.append((data,))
            break
        lines = data[:end].split(b"\r\n")
        out.append((lines[0], *sorted(lines[1:])))
        data = data[end + 4 :]
    return out


def forwarded(
    request_line: bytes,
    backend: RecordingBackend,
    proxy: ProxyServer,
    *headers: bytes,
    host: bytes | None = b"t",
) -> bytes:
    """The head the proxy sends for a request from 127.0.0.1 carrying ``headers`` (other
    than Host) and Host ``host``: Host is the target's ``host:port`` (``preserve_host``
    off), the client's Host goes to ``X-Forwarded-Host``, plus the X-Forwarded set."""
    lines = [request_line, b"Host: 127.0.0.1:%d" % backend.port, *headers]
    if host is not None:
        lines.append(b"X-Forwarded-Host: " + host)
    lines += [
        b"X-Forwarded-Proto: http",
        b"X-Forwarded-Port: %d" % proxy.port,
        b"X-Real-IP: 127.0.0.1",
        b"X-Forwarded-For: 127.0.0.1",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.wait_for(read_response(reader), READ_TIMEOUT)


async def next_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes] | str:
    """The next response, or a description of why there is none (closed, timed out)."""
    try:
        return await response(reader)
    except asyncio.IncompleteReadError as exc:
        return f"connection closed (left: {exc.partial!r})"
    except ConnectionError as exc:
        return f"connection error {exc!r}"
    except TimeoutError:
        return "no response within the timeout"


async def client_read_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the client receives within ``seconds`` (``b""``: nothing)."""
    data = b""
    try:
        async with asyncio.timeout(seconds):
            while chunk := await reader.read(65536):
                data += chunk
    except TimeoutError:
        pass
    return data


async def read_until_eof_or_timeout(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """Everything until EOF (``True``) or :data:`READ_TIMEOUT` (``False``): unlike
    ``tests.support.proxy.read_to_eof``, no timeout fails here, so that the test's own
    assertion says what went on (a reset counts as EOF)."""
    data = b""
    try:
        async with asyncio.timeout(READ_TIMEOUT):
            while chunk := await reader.read(65536):
                data += chunk
        return data, True
    except TimeoutError:
        return data, False
    except ConnectionResetError:
        return data, True


async def quiet() -> None:
    """The "nothing more arrives" window: late bytes of a refused request would land now."""
    await asyncio.sleep(QUIET)


async def assert_clean_request_arrives_alone(
    stack: AsyncExitStack, backend: RecordingBackend, proxy: ProxyServer
) -> None:
    """The target has read nothing so far, and after a well-formed request from a new
    client connection, that request's head is the only thing it ever read, on any
    connection (so nothing of an earlier, refused request arrived late either)."""
    before = backend.received
    reader, writer = await connect(stack, proxy.port)
    writer.write(CLEAN)
    status, _, body = await response(reader)
    assert (status, body) == (200, b"GET /clean HTTP/1.1")
    await quiet()
    assert backend.messages() == messages(forwarded(b"GET /clean HTTP/1.1", backend, proxy)), (
        f"the target read more than the clean request (before it was sent: {before!r})"
    )
    assert before == b""


# --------------------------------------------------------------- upgrades (item 1)


async def test_bytes_pipelined_after_an_upgrade_request_are_not_sent_when_the_target_refuses_it(
    stack: AsyncExitStack,
) -> None:
    """A non-101 answer: the bytes held behind the upgrade request are the next
    pipelined request, routed on their own (no route: 404); the target never sees them."""
    backend = await RecordingBackend(
        answering(lambda _r: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    ).start(stack)
    proxy = await proxy_to(stack, backend.port, routes=PUB_ONLY)
    reader, writer = await connect(stack, proxy.port)
    writer.write(UPGRADE_HEAD + UNROUTED)
    status, _, body = await response(reader)
    assert (status, body) == (200, b"ok")
    second = await next_response(reader)
    await quiet()
    assert backend.messages() == messages(
        forwarded(
            b"GET /pub/x HTTP/1.1", backend, proxy, b"Upgrade: websocket", b"Connection: Upgrade"
        )
    ), "the target read more than the upgrade request's head"
    assert b"/internal/admin" not in backend.received
    assert not isinstance(second, str), f"no answer to the pipelined request: {second}"
    status, _, body = second
    assert (status, body_json(body)) == (404, NO_ROUTE)


def tunnel_target(early: list[bytes]) -> Serve:
    """Reads the upgrade head, records in ``early`` what arrives in the next
    :data:`QUIET` s (must be nothing), answers 101, then echoes upper-cased."""

    async def serve(peer: Peer) -> None:
        if await peer.read_until(b"\r\n\r\n") is None:
            return
        early.append(await peer.read_within(QUIET))
        await peer.write(SWITCHING)
        while data := await peer.read_some():
            await peer.write(data.upper())

    return serve


async def test_bytes_pipelined_after_an_upgrade_request_never_reach_the_target_before_101(
    stack: AsyncExitStack,
) -> None:
    early: list[bytes] = []
    backend = await RecordingBackend(tunnel_target(early)).start(stack)
    proxy = await proxy_to(stack, backend.port, routes=PUB_ONLY)
    reader, writer = await connect(stack, proxy.port)
    writer.write(UPGRADE_HEAD + UNROUTED)
    status, headers, _ = await asyncio.wait_for(read_response(reader, head_only=True), READ_TIMEOUT)
    assert status == 101 and headers["upgrade"].lower() == "websocket"
    assert early == [b""], "bytes after the upgrade head reached the target before its 101"
    # After the 101 the held bytes are tunnel payload, unchanged, then the tunnel relays
    # both ways.
    echoed = await asyncio.wait_for(reader.readexactly(len(UNROUTED)), READ_TIMEOUT)
    assert echoed == UNROUTED.upper()
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), READ_TIMEOUT) == b"PING"
    head = forwarded(
        b"GET /pub/x HTTP/1.1", backend, proxy, b"Upgrade: websocket", b"Connection: Upgrade"
    )
    await quiet()
    assert backend.messages() == messages(head + UNROUTED + b"ping")
    assert len(backend.peers) == 1


async def test_upgrade_token_other_than_websocket_is_removed_and_proxied_as_plain_http(
    stack: AsyncExitStack,
) -> None:
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port, routes=PUB_ONLY)
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        # What an h2c client sends: Connection names HTTP2-Settings (hop-by-hop).
        b"GET /pub/x HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings, keep-alive\r\n"
        b"Upgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET /pub/y HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first = await next_response(reader)
    second = await next_response(reader)
    await quiet()
    seen = backend.messages()
    assert seen[:1] == messages(forwarded(b"GET /pub/x HTTP/1.1", backend, proxy)), (
        "the h2c request reached the target with Upgrade / Connection / HTTP2-Settings"
    )
    assert not isinstance(first, str), f"the h2c request got no answer: {first}"
    assert (first[0], first[2]) == (200, b"GET /pub/x HTTP/1.1")
    assert not isinstance(second, str), f"the pipelined request got no answer: {second}"
    assert (second[0], second[2]) == (200, b"GET /pub/y HTTP/1.1")
    assert seen == messages(
        forwarded(b"GET /pub/x HTTP/1.1", backend, proxy)
        + forwarded(b"GET /pub/y HTTP/1.1", backend, proxy)
    )


async def test_websocket_upgrade_token_is_matched_case_insensitively(stack: AsyncExitStack) -> None:
    early: list[bytes] = []
    backend = await RecordingBackend(tunnel_target(early)).start(stack)
    proxy = await proxy_to(stack, backend.port, routes=PUB_ONLY)
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        b"GET /pub/ws HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: WebSocket\r\n\r\n"
    )
    status, _, _ = await asyncio.wait_for(read_response(reader, head_only=True), READ_TIMEOUT)
    assert status == 101 and early == [b""]
    writer.write(b"frame")
    assert await asyncio.wait_for(reader.readexactly(5), READ_TIMEOUT) == b"FRAME"
    (peer,) = backend.peers
    request = SeenRequest(bytes(peer.received).split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n", b"", 1)
    assert request.head.startswith(b"GET /pub/ws HTTP/1.1\r\n")
    assert (request.header("upgrade") or "").lower() == "websocket"
    assert (request.header("connection") or "").lower() == "upgrade"
    assert bytes(peer.received).endswith(b"\r\n\r\nframe")


# --------------------------------------------- a refused request never leaves (item 2)


async def test_refused_chunked_request_never_reaches_the_target_without_a_pooled_connection(
    stack: AsyncExitStack,
) -> None:
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n")
    status, _, _ = await response(reader)
    assert status == 400
    assert await assert_closed(reader) == b""
    await assert_clean_request_arrives_alone(stack, backend, proxy)


async def test_refused_chunked_request_never_reaches_the_target_over_a_pooled_connection(
    stack: AsyncExitStack,
) -> None:
    """A fast target whose connection is idle in the pool: the refused POST is not
    written on it (not even its head), and the connection the next request uses does
    not carry half a POST before it."""
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
    assert (await response(reader))[::2] == (200, b"GET /first HTTP/1.1")
    await wait_for(lambda: proxy.pool.idle_count() == 1, timeout=READ_TIMEOUT, message="pooled")

    reader, writer = await connect(stack, proxy.port)
    writer.write(b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\n")
    status, _, _ = await response(reader)
    assert status == 400
    assert await assert_closed(reader) == b""

    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
    second = await next_response(reader)
    await quiet()
    assert backend.messages() == messages(
        forwarded(b"GET /first HTTP/1.1", backend, proxy)
        + forwarded(b"GET /second HTTP/1.1", backend, proxy)
    ), "the target read something of the refused POST"
    assert not isinstance(second, str), second
    assert second[::2] == (200, b"GET /second HTTP/1.1")


# ------------------------------------------------------------ Host (item 5)


async def test_http10_request_without_host_is_proxied(stack: AsyncExitStack) -> None:
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /ten HTTP/1.0\r\n\r\n")
    status, _, body = await response(reader)
    assert (status, body) == (200, b"GET /ten HTTP/1.1")
    await quiet()
    assert backend.messages() == messages(
        forwarded(b"GET /ten HTTP/1.1", backend, proxy, host=None)
    )


async def test_absolute_form_request_is_routed_on_its_authority_not_on_host(
    stack: AsyncExitStack,
) -> None:
    a = await RecordingBackend().start(stack)
    b = await RecordingBackend().start(stack)
    config = compile_config(
        1,
        "h",
        {
            "services": [
                {"id": "sa", "host": "127.0.0.1", "port": a.port},
                {"id": "sb", "host": "127.0.0.1", "port": b.port},
            ],
            "routes": [
                {"id": "ra", "hosts": ["a.example"], "service": {"id": "sa"}},
                {"id": "rb", "hosts": ["b.example"], "service": {"id": "sb"}},
            ],
        },
    )
    proxy, _, _ = await start_proxy(stack, config)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET http://a.example/x HTTP/1.1\r\nHost: b.example\r\n\r\n")
    answer = await next_response(reader)
    await quiet()
    assert b.received == b"", "routed on the Host header instead of the request target"
    assert a.received.startswith(b"GET /x HTTP/1.1\r\n"), "request line not in origin-form"
    assert b"http://a.example" not in a.received
    assert not isinstance(answer, str), answer
    assert answer[::2] == (200, b"GET /x HTTP/1.1")
    # The authority replaced Host: the client's Host appears nowhere.
    assert a.messages() == messages(forwarded(b"GET /x HTTP/1.1", a, proxy, host=b"a.example"))


# ------------------------------------------------------- response framing (item 6)


async def test_response_with_a_final_coding_other_than_chunked_is_relayed_until_close(
    stack: AsyncExitStack,
) -> None:
    payload = gzip.compress(b"compressed, not chunked\r\n" * 50)

    async def serve(peer: Peer) -> None:
        if await peer.read_until(b"\r\n\r\n") is not None:
            await peer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n" + payload)
            # Returning closes the connection: the body is delimited by the close.

    backend = await RecordingBackend(serve).start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /g HTTP/1.1\r\nHost: t\r\n\r\n")
    data, eof = await read_until_eof_or_timeout(reader)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])
    }
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert headers.get(b"transfer-encoding") == b"gzip"
    assert b"chunked" not in head.lower() and b"content-length" not in headers
    assert body == payload
    assert eof, "the client connection was not closed after a close-delimited body"
    assert backend.messages() == messages(forwarded(b"GET /g HTTP/1.1", backend, proxy))


async def test_http10_client_gets_no_100_continue(stack: AsyncExitStack) -> None:
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"POST /e HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
    interim = await client_read_within(reader, QUIET)
    writer.write(b"abc")
    answer = await next_response(reader)
    assert interim == b"", "an HTTP/1.0 client got an interim response"
    assert not isinstance(answer, str), f"{answer}; the target read {backend.received!r}"
    assert answer[::2] == (200, b"POST /e HTTP/1.1")
    assert backend.messages() == messages(
        forwarded(b"POST /e HTTP/1.1", backend, proxy, b"Content-Length: 3", host=None) + b"abc"
    )


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(
            b"POST /b HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
            id="http11_connection_close",
        ),
        pytest.param(b"POST /b HTTP/1.0\r\nHost: t\r\nContent-Length: 3\r\n\r\n", id="http10"),
    ],
)
async def test_body_arriving_after_the_head_of_a_last_request_is_forwarded(
    stack: AsyncExitStack, head: bytes
) -> None:
    """The last request on a connection (``Connection: close``, HTTP/1.0) still has
    its body read when the body comes in a later read than the head."""
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(head)
    await wait_for(lambda: backend.received, timeout=READ_TIMEOUT, message="the head forwarded")
    writer.write(b"abc")
    answer = await next_response(reader)
    assert not isinstance(answer, str), f"{answer}; the target read {backend.received!r}"
    assert answer[::2] == (200, b"POST /b HTTP/1.1")
    assert backend.messages() == messages(
        forwarded(b"POST /b HTTP/1.1", backend, proxy, b"Content-Length: 3") + b"abc"
    )


# -------------------------------------------------------------- classic smuggling


@dataclass(frozen=True)
class Bad:
    request: bytes
    statuses: frozenset[int] = frozenset({400})


TE_OBFUSCATION = frozenset({400, 501})
CHUNKED_POST = b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKED_BODY = b"5\r\nhello\r\n0\r\n\r\n"


def te(field_lines: bytes) -> Bad:
    """A POST whose Transfer-Encoding is spelled by ``field_lines`` (obfuscated)."""
    return Bad(
        b"POST /x HTTP/1.1\r\nHost: t\r\n" + field_lines + b"\r\n" + CHUNKED_BODY, TE_OBFUSCATION
    )


BAD_REQUESTS = [
    # Both framings, or ambiguous Content-Length.
    pytest.param(
        Bad(
            b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        ),
        id="content_length_and_transfer_encoding",
    ),
    pytest.param(
        Bad(
            b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n"
        ),
        id="transfer_encoding_and_content_length",
    ),
    pytest.param(
        Bad(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        id="two_content_lengths_differing",
    ),
    pytest.param(
        Bad(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        id="two_content_lengths_identical",
    ),
    pytest.param(
        Bad(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: +3\r\n\r\nabc"),
        id="content_length_with_a_sign",
    ),
    # Transfer-Encoding obfuscations (400, or 501 for an unknown coding).
    pytest.param(te(b"Transfer-Encoding: xchunked\r\n"), id="te_xchunked"),
    pytest.param(te(b"Transfer-Encoding : chunked\r\n"), id="te_space_before_colon"),
    pytest.param(te(b"Transfer-Encoding: chunked, identity\r\n"), id="te_chunked_not_last"),
    pytest.param(te(b"Transfer-Encoding: identity, chunked\r\n"), id="te_identity_then_chunked"),
    pytest.param(te(b"Transfer-Encoding:\x0bchunked\r\n"), id="te_vertical_tab"),
    pytest.param(te(b"Transfer-Encoding:\r\n chunked\r\n"), id="te_obs_fold"),
    pytest.param(
        te(b"Transfer-Encoding: chunked\r\nTransfer-Encoding: cow\r\n"), id="te_two_fields"
    ),
    # Bad chunk sizes.
    pytest.param(Bad(CHUNKED_POST + b"ZZ\r\n"), id="chunk_size_not_hex"),
    pytest.param(Bad(CHUNKED_POST + b"-1\r\nhello\r\n0\r\n\r\n"), id="chunk_size_negative"),
    pytest.param(Bad(CHUNKED_POST + b"0x5\r\nhello\r\n0\r\n\r\n"), id="chunk_size_0x_prefix"),
    pytest.param(
        Bad(CHUNKED_POST + b"F" * 20 + b"\r\nhello\r\n0\r\n\r\n"), id="chunk_size_overflow"
    ),
    pytest.param(
        Bad(CHUNKED_POST + b"5 garbage\r\nhello\r\n0\r\n\r\n"), id="chunk_size_then_garbage"
    ),
    # Line endings, folding, bytes that have no place in a head.
    pytest.param(Bad(b"GET /lf HTTP/1.1\nHost: t\n\n"), id="bare_lf_line_endings"),
    pytest.param(Bad(b"GET /fold HTTP/1.1\r\nHost: t\r\nX-A: a\r\n b\r\n\r\n"), id="obs_fold"),
    pytest.param(
        Bad(b"GET /nul HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n"), id="nul_in_header_value"
    ),
    pytest.param(Bad(b"GET /sp HTTP/1.1\r\nHost: t\r\nX A: 1\r\n\r\n"), id="space_in_header_name"),
    pytest.param(Bad(b"GET /cr HTTP/1.1\rHost: t\r\n\r\n"), id="bare_cr_ending_request_line"),
    pytest.param(Bad(b"GET /a\rb HTTP/1.1\r\nHost: t\r\n\r\n"), id="bare_cr_in_request_target"),
    # Host (item 5) and HTTP/1.0 framing (item 6).
    pytest.param(Bad(b"GET /nohost HTTP/1.1\r\n\r\n"), id="http11_without_host"),
    pytest.param(Bad(b"GET /hh HTTP/1.1\r\nHost: t\r\nHost: evil\r\n\r\n"), id="two_host_fields"),
    pytest.param(
        Bad(b"GET /hh HTTP/1.1\r\nHost: t\r\nHost: t\r\n\r\n"), id="two_host_fields_identical"
    ),
    pytest.param(
        Bad(b"POST /ten HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_BODY),
        id="chunked_in_an_http10_request",
    ),
    pytest.param(Bad(b"GET /h HTTP/1.1\r\nHost: \r\n\r\n"), id="empty_host"),
    pytest.param(Bad(b"GET /h HTTP/1.1\r\nHost: a/b\r\n\r\n"), id="host_with_a_slash"),
    pytest.param(Bad(b"GET /h HTTP/1.1\r\nHost: a b\r\n\r\n"), id="host_with_a_space"),
    pytest.param(Bad(b"GET /h HTTP/1.1\r\nHost: u@a\r\n\r\n"), id="host_with_userinfo"),
    pytest.param(Bad(b"GET /h HTTP/1.1\r\nHost: a,b\r\n\r\n"), id="host_list"),
    pytest.param(Bad(b"GET /h HTTP/1.1\r\nHost: a:80x\r\n\r\n"), id="host_bad_port"),
    pytest.param(Bad(b"GET * HTTP/1.1\r\nHost: t\r\n\r\n"), id="asterisk_form"),
    pytest.param(Bad(b"GET x/y HTTP/1.1\r\nHost: t\r\n\r\n"), id="relative_request_target"),
]


@pytest.mark.parametrize("bad", BAD_REQUESTS)
async def test_malformed_request_is_refused_and_nothing_of_it_or_after_it_reaches_the_target(
    stack: AsyncExitStack, bad: Bad
) -> None:
    """400 (501 allowed for an unknown transfer-coding), the connection closes, the
    request pipelined behind it in the same write is neither answered nor forwarded,
    and the target reads nothing at all: a clean request from a new connection is the
    first and only thing it ever sees."""
    backend = await RecordingBackend().start(stack)
    proxy = await proxy_to(stack, backend.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(bad.request + SMUGGLED)
    answer = await next_response(reader)
    rest, eof = await read_until_eof_or_timeout(reader)
    assert not isinstance(answer, str), f"no answer: {answer}; target read {backend.received!r}"
    status, headers, _ = answer
    assert status in bad.statuses, f"answered {status}; target read {backend.received!r}"
    assert headers.get("connection") == "close"
    assert (rest, eof) == (b"", True), "the connection went on after the refusal"
    await assert_clean_request_arrives_alone(stack, backend, proxy)
