"""Targets for the proxy to talk to, all real servers on free loopback ports.

* :class:`Backend`: an aiohttp echo server (plus upload, download, slow, status and
  WebSocket endpoints) recording every request; :func:`start_backend`.
* :class:`RawBackend`: raw asyncio, the same fixed bytes for every request;
  :func:`raw_backend`.
* :class:`ScriptedBackend`: raw asyncio, exact bytes chosen per :class:`SeenRequest`.
* :class:`FlipBackend`: aiohttp, with a ``/health`` whose status a test flips.
* :class:`TlsBackend`: aiohttp over TLS (``tests/fixtures/upstream-tls.*`` or any chain),
  recording SNI, handshakes and client certificates (optionally required).
* the ``backends`` fixture: Ferry's demo backend, by name.
* :func:`refused_port`: a port nothing listens on.

Each starter registers the server's stop on the test's :class:`AsyncExitStack` (or the
fixture's teardown), so nothing outlives a test.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web

from ferry.demo_backend import start_demo_backend
from ferry_shared.listen import free_port
from tests.support.tls import FIXTURES, Pair


class Backend:
    """A real aiohttp server that records what it saw."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: list[dict[str, Any]] = []
        self.transports: list[object] = []  # kept alive so ids stay distinct
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def connections(self) -> int:
        return len(self.transports)

    def _note(self, request: web.Request) -> None:
        if not any(t is request.transport for t in self.transports):
            self.transports.append(request.transport)
        self.requests.append(
            {"method": request.method, "path_qs": request.path_qs, "headers": dict(request.headers)}
        )

    async def echo(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        body = await request.read()
        return web.json_response(
            {
                "backend": self.name,
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": {k: v for k, v in request.headers.items()},
                "body_len": len(body),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "chunked": request.headers.get("Transfer-Encoding") == "chunked",
            }
        )

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """WebSocket echo: greets first, echoes text as ``echo:<text>`` and binary as
        is, pushes ``n`` server messages on ``push:<n>``, closes on ``bye``."""
        self._note(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str("hello from " + self.name)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "bye":
                    await ws.close()
                elif msg.data.startswith("push:"):
                    for i in range(int(msg.data[5:])):
                        await ws.send_str(f"push {i}")
                else:
                    await ws.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws

    async def upload(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_chunked(65536):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"size": size, "sha256": digest.hexdigest()})

    async def download(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        size = int(request.query["size"])
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            n = min(len(block), size - sent)
            await resp.write(block[:n])
            sent += n
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        await asyncio.sleep(float(request.query.get("s", "5")))
        return web.Response(text="late")

    async def status(self, request: web.Request) -> web.StreamResponse:
        self._note(request)
        return web.Response(status=int(request.match_info["code"]))

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/upload", self.upload)
        app.router.add_get("/download", self.download)
        app.router.add_route("*", "/slow", self.slow)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_get("/ws", self.websocket)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        # uvloop's server is not an asyncio.Server subclass; it has ``sockets`` too.
        server = cast(asyncio.Server, site._server)
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


class RawBackend:
    """A raw asyncio server answering every request with fixed bytes (then maybe closing)."""

    def __init__(self, response: bytes, *, close: bool = False) -> None:
        self.response = response
        self.close = close
        self.received: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.received.append(head)
                writer.write(self.response)
                await writer.drain()
                if self.close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def refused_port() -> int:
    """A port nothing listens on.

    From :func:`free_port`: below the kernel's ephemeral range, so a server started
    after this call on port 0 (a proxy, a backend) cannot be handed the same port, and
    never handed out twice in this process.
    """
    return free_port()


async def start_backend(stack: AsyncExitStack, name: str) -> Backend:
    backend = Backend(name)
    await backend.start()
    stack.push_async_callback(backend.stop)
    return backend


async def raw_backend(stack: AsyncExitStack, response: bytes, *, close: bool = False) -> RawBackend:
    backend = RawBackend(response, close=close)
    await backend.start()
    stack.push_async_callback(backend.stop)
    return backend


@dataclass
class SeenRequest:
    """One request as a :class:`ScriptedBackend` read it off the wire."""

    head: bytes
    body: bytes
    connection: int

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    @property
    def header_names(self) -> set[str]:
        return {
            line.partition(":")[0].strip().lower()
            for line in self.head.decode("latin-1").split("\r\n")[1:]
            if line
        }


Answer = Callable[[SeenRequest], tuple[bytes, bool]]


@dataclass
class ScriptedBackend:
    """A raw asyncio HTTP/1.1 server: per request, ``answer(request)`` returns the exact
    bytes to write and whether to close the connection afterwards. Request bodies are
    read by Content-Length or chunked framing (decoded into ``SeenRequest.body``)."""

    answer: Answer
    requests: list[SeenRequest] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None
    port: int = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = SeenRequest(head, b"", number)
                if (request.header("transfer-encoding") or "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        if size == 0:
                            while await reader.readuntil(b"\r\n") != b"\r\n":
                                pass  # trailers
                            break
                        body += await reader.readexactly(size)
                        await reader.readexactly(2)
                    request.body = body
                elif request.header("content-length"):
                    request.body = await reader.readexactly(int(request.header("content-length") or 0))
                self.requests.append(request)
                data, close = self.answer(request)
                writer.write(data)
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self, stack: AsyncExitStack) -> ScriptedBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        stack.push_async_callback(self.stop)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def fixed(response: bytes, close: bool = False) -> Answer:
    return lambda _request: (response, close)


class FlipBackend:
    """A backend that answers ``{"backend": name}`` on every path but ``/health``,
    which answers ``health_status`` (flip it) and records each probe's headers."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.health_status = 200
        self.status = 200  # for proxied requests
        #: Percent of proxied requests answered 500 instead of ``status``, spread evenly
        #: and deterministically: request n fails when ``n * percent // 100`` grows (30:
        #: requests 4, 7, 10, 14, ...; exactly 3 of every 10).
        self.failure_percent = 0
        self.failures = 0
        self.probes: list[dict[str, str]] = []
        self.requests = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _health(self, request: web.Request) -> web.Response:
        self.probes.append(dict(request.headers))
        return web.json_response({"ok": self.health_status == 200}, status=self.health_status)

    async def _serve(self, request: web.Request) -> web.Response:
        self.requests += 1
        n, percent = self.requests, self.failure_percent
        if percent and n * percent // 100 > (n - 1) * percent // 100:
            self.failures += 1
            return web.json_response({"backend": self.name}, status=500)
        return web.json_response({"backend": self.name}, status=self.status)

    async def start(self, stack: AsyncExitStack, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        stack.push_async_callback(self.stop)

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"


class TlsBackend:
    """An aiohttp server over TLS.

    ``certificate``: the chain it serves (leaf first, then any intermediates, in its
    ``cert`` file); the suite's self-signed fixture by default. ``client_ca``: when
    set, a client certificate signed by that CA is required (the handshake fails
    without one). Records every handshake's server name (``server_names``: one
    entry per TLS connection, ``None`` without SNI), every request's Host and the
    common name of the client certificate it came with (``client_names``; also in
    the JSON answer's ``client`` when client certificates are required).
    """

    def __init__(self, certificate: Pair | None = None, *, client_ca: Path | None = None) -> None:
        self.server_names: list[str | None] = []
        self.hosts: list[str] = []
        self.client_names: list[str | None] = []
        self.port = 0
        self._certificate = certificate or Pair(
            FIXTURES / "upstream-tls.crt", FIXTURES / "upstream-tls.key"
        )
        self._client_ca = client_ca

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.hosts.append(request.headers.get("Host", ""))
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        name: str | None = None
        for rdn in (peer or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    name = value
        self.client_names.append(name)
        body: dict[str, Any] = {"backend": "tls", "path": request.path}
        if self._client_ca is not None:
            body["client"] = name
        return web.json_response(body)

    def _sni(self, sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    async def start(self, stack: AsyncExitStack) -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._certificate.cert, self._certificate.key)
        if self._client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=self._client_ca)
        context.sni_callback = self._sni
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self.port = runner.addresses[0][1]


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[str], object]]:
    """Start named demo backends on free ports; all stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(name: str) -> int:
        runner, port = await start_demo_backend(name)
        runners.append(runner)
        return port

    try:
        yield start  # type: ignore[misc]
    finally:
        for runner in runners:
            await runner.cleanup()
