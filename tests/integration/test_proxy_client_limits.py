"""Hostile and vanishing clients: nginx's client timeouts, a client that goes away
before its answer, and a proxy out of file descriptors (issue 12, items 3 and 4).

Real sockets on both sides: raw TCP clients, raw asyncio targets that record what they
read, and, for the descriptor limit, a proxy process with a low ``RLIMIT_NOFILE``.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from contextlib import AsyncExitStack
from pathlib import Path

from data_plane.proxy import ClientTimeouts, ProxyServer
from data_plane.runtime import ConfigHolder
from tests.support.backends import start_backend
from tests.support.polling import wait_for
from tests.support.proxy import (
    HealthGateway,
    connect,
    make_config,
    read_response,
    read_to_eof,
    upstream_config,
)

ALL = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]


class HoldingBackend:
    """A raw target that reads requests and answers only when told; records every read
    and whether (and when) each connection saw its peer close."""

    def __init__(self) -> None:
        self.received = b""
        self.connections = 0
        self.closed_by_peer = 0
        self.answer: bytes | None = None
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while data := await reader.read(65536):
                self.received += data
                if self.answer is not None:
                    writer.write(self.answer)
            self.closed_by_peer += 1
        except ConnectionError:
            self.closed_by_peer += 1
        finally:
            writer.close()

    async def start(self, stack: AsyncExitStack) -> HoldingBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        stack.callback(self.server.close)
        return self


async def proxy_with(stack: AsyncExitStack, port: int, timeouts: ClientTimeouts) -> ProxyServer:
    proxy = ProxyServer(
        ConfigHolder(make_config(1, direct=("127.0.0.1", port), routes=ALL)),
        "127.0.0.1", 0, client_timeouts=timeouts,
    )
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    return proxy


SHORT = ClientTimeouts(header=0.5, body=0.5, send=0.5)


async def test_a_request_head_trickled_a_byte_at_a_time_gets_408_after_the_header_timeout(
    stack: AsyncExitStack,
) -> None:
    target = await HoldingBackend().start(stack)
    proxy = await proxy_with(stack, target.port, SHORT)
    reader, writer = await connect(stack, proxy.port)
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 200
    answer = b""

    async def trickle() -> None:
        for byte in head:  # every byte well within any idle timer: slowloris
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    trickling = asyncio.create_task(trickle())
    try:
        answer = await read_to_eof(reader)
    finally:
        trickling.cancel()
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answer.endswith(b'{"message": "Request timeout"}')
    assert target.connections == 0 and target.received == b""
    await wait_for(lambda: proxy.connections == 0, message="client closed")


async def test_a_stalled_request_body_gets_408_and_its_upstream_connection_is_closed(
    stack: AsyncExitStack,
) -> None:
    target = await HoldingBackend().start(stack)
    proxy = await proxy_with(stack, target.port, SHORT)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly-this")
    answer = await read_to_eof(reader)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    # The head was streamed to the target; its connection is closed, never reused.
    await wait_for(lambda: target.closed_by_peer == 1, message="upstream connection closed")
    assert target.received.endswith(b"only-this")
    assert proxy.pool.idle_count() == 0


async def test_a_client_that_does_not_read_is_closed_after_the_send_timeout_with_its_upstream(
    stack: AsyncExitStack,
) -> None:
    closed_upstream = asyncio.Event()

    async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            closed_upstream.set()
        finally:
            writer.close()

    server = await asyncio.start_server(firehose, "127.0.0.1", 0)
    stack.callback(server.close)
    proxy = await proxy_with(stack, server.sockets[0].getsockname()[1], SHORT)
    sock = socket.socket()
    stack.callback(sock.close)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", proxy.port))
    sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")  # and never read
    await wait_for(lambda: proxy.connections == 0, message="non-reading client closed")
    await asyncio.wait_for(closed_upstream.wait(), 10)


async def test_a_client_that_closes_before_its_answer_releases_the_upstream_at_once(
    stack: AsyncExitStack,
) -> None:
    target = await HoldingBackend().start(stack)
    proxy = await proxy_with(stack, target.port, ClientTimeouts())
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    await wait_for(lambda: b"GET /slow" in target.received, message="request at the target")
    writer.write_eof()  # FIN: the client is gone (read_timeout is 60 s)
    await wait_for(lambda: target.closed_by_peer == 1, message="upstream connection closed")
    assert await read_to_eof(reader) == b""
    await wait_for(lambda: proxy.connections == 0, message="client closed")


async def test_a_client_gone_before_its_answer_is_no_failure_of_the_target(
    stack: AsyncExitStack,
) -> None:
    target = await HoldingBackend().start(stack)
    key = f"127.0.0.1:{target.port}"
    gw = HealthGateway()
    # One failure would eject the only target: an abort must not count as one.
    passive = {"passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1, "http_failures": 1}}}
    await gw.start(stack, upstream_config([key], passive))
    for n in range(1, 4):
        reader, writer = await connect(stack, gw.proxy.port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        await wait_for(lambda n=n: target.received.count(b"GET /x") == n, message="request in flight")
        writer.write_eof()
        assert await read_to_eof(reader) == b""
        await wait_for(lambda n=n: target.closed_by_peer == n, message="upstream closed")
    assert gw.state(key) == "HEALTHY"
    target.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    reader, writer = await connect(stack, gw.proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n")
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"ok")


def test_client_timeouts_must_be_positive() -> None:
    for bad in ({"header": 0.0}, {"body": -1.0}, {"send": 0.0}):
        try:
            ClientTimeouts(**bad)
        except ValueError as exc:
            assert "timeout must be > 0" in str(exc)
        else:
            raise AssertionError(f"{bad} accepted")


_LIMITED_PROXY = """
import asyncio, json, resource, sys
import uvloop
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, compile_config

resource.setrlimit(resource.RLIMIT_NOFILE, (48, 48))

async def main() -> None:
    holder = ConfigHolder(compile_config(1, "h", json.loads(sys.argv[1])))
    # A short keep-alive makes the sweep (which looks for EMFILE) run every 0.1 s.
    proxy = ProxyServer(holder, "127.0.0.1", 0, client_keepalive_timeout=0.4)
    await proxy.start()
    print(proxy.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await proxy.stop(1.0)

uvloop.run(main())
"""


async def test_running_out_of_descriptors_is_logged_and_the_proxy_recovers(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "a")
    entities = {
        "services": [{"id": "s1", "host": "127.0.0.1", "port": backend.port}],
        "routes": ALL,
    }
    root = Path(__file__).resolve().parents[2]
    log_path = tmp_path / "proxy.log"
    log_file = stack.enter_context(log_path.open("wb"))
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LIMITED_PROXY, json.dumps(entities),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log_file,
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
    )

    async def stop() -> None:
        if process.returncode is None:
            process.kill()
        await process.wait()

    stack.push_async_callback(stop)
    assert process.stdout is not None
    port = int(await asyncio.wait_for(process.stdout.readline(), 30))
    # Slow clients that hold their descriptors (each inside a request head).
    held: list[socket.socket] = []
    for _ in range(80):
        s = socket.socket()
        held.append(s)
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\n")
    try:
        await wait_for(lambda: b"out of file descriptors" in log_path.read_bytes(),
                       message="the proxy says it is out of descriptors")
    finally:
        for s in held:
            s.close()
    assert b"limit 48" in log_path.read_bytes()

    async def served() -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        try:
            writer.write(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
            status, _, body = await read_response(reader)
            return status == 200 and json.loads(body)["path_qs"] == "/after"
        except (OSError, asyncio.IncompleteReadError):
            return False
        finally:
            writer.close()

    await wait_for(served, message="the proxy serves again once descriptors are free")
