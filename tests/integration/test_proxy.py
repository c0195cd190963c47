"""The proxy end to end over real sockets: real aiohttp / raw asyncio backends,
aiohttp as the client, raw sockets for pipelining and malformed requests."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config
from tests.support import wait_for

# ----------------------------------------------------------------------- backends


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
        app.router.add_get("/slow", self.slow)
        app.router.add_route("*", "/status/{code}", self.status)
        app.router.add_get("/ws", self.websocket)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
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
    """A port nothing listens on (bound then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------- config


def make_config(
    version: int,
    targets: list[tuple[str, int]] | None = None,
    *,
    direct: tuple[str, int] | None = None,
    service: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None,
    previous: RuntimeConfig | None = None,
) -> RuntimeConfig:
    """One service ("svc") over upstream "backends" (or direct), route /api by default."""
    upstreams: list[dict[str, Any]] = []
    target_entities: list[dict[str, Any]] = []
    svc: dict[str, Any] = {"id": "s1", "name": "svc", "protocol": "http", "retries": 5}
    if direct is not None:
        svc.update(host=direct[0], port=direct[1])
    else:
        upstreams.append({"id": "u1", "name": "backends", "algorithm": "round-robin"})
        for i, (target, weight) in enumerate(targets or []):
            target_entities.append(
                {"id": f"t{i}", "target": target, "weight": weight, "upstream": {"id": "u1"}}
            )
        svc.update(host="backends", port=80)
    svc.update(service or {})
    if routes is None:
        routes = [{"id": "r1", "name": "api", "paths": ["/api"], "service": {"id": "s1"}}]
    return compile_config(
        version,
        f"hash-{version}",
        {"upstreams": upstreams, "targets": target_entities, "services": [svc], "routes": routes},
        previous=previous,
    )


Env = Callable[..., Awaitable[tuple[ProxyServer, ConfigHolder, str]]]


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as s:
        yield s


async def start_backend(stack: AsyncExitStack, name: str) -> Backend:
    backend = Backend(name)
    await backend.start()
    stack.push_async_callback(backend.stop)
    return backend


async def start_proxy(stack: AsyncExitStack, config: RuntimeConfig | None) -> tuple[ProxyServer, ConfigHolder, str]:
    holder = ConfigHolder(config)
    proxy = ProxyServer(holder, "127.0.0.1", 0)
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    return proxy, holder, f"http://127.0.0.1:{proxy.port}"


async def client(stack: AsyncExitStack, **kwargs: Any) -> aiohttp.ClientSession:
    session = aiohttp.ClientSession(**kwargs)
    stack.push_async_callback(session.close)
    return session


async def read_response(reader: asyncio.StreamReader, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """Parse one HTTP/1.1 response from a raw stream (Content-Length or chunked)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    if head_only or status in (204, 304) or 100 <= status < 200:
        return status, headers, b""
    if headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return status, headers, body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    if "content-length" in headers:
        return status, headers, await reader.readexactly(int(headers["content-length"]))
    return status, headers, await asyncio.wait_for(reader.read(), 10)


# -------------------------------------------------------------------------- tests


async def test_round_robin_over_two_backends(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    b = await start_backend(stack, "b")
    config = make_config(1, [(f"127.0.0.1:{a.port}", 100), (f"127.0.0.1:{b.port}", 100)])
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    seen = []
    for _ in range(6):
        async with session.get(url + "/api/x") as resp:
            assert resp.status == 200
            assert resp.headers["Via"] == "1.1 ferry/0.1.0"
            seen.append((await resp.json())["backend"])
    assert seen in (["a", "b"] * 3, ["b", "a"] * 3)


async def test_strip_path_and_service_path(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [
        {"id": "r1", "paths": ["/api"], "service": {"id": "s1"}},
        {"id": "r2", "paths": ["/keep"], "strip_path": False, "service": {"id": "s1"}},
        {"id": "r3", "paths": [r"~/users/\d+"], "service": {"id": "s1"}},
    ]
    config = make_config(1, direct=("127.0.0.1", a.port), service={"path": "/svc"}, routes=routes)
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    expectations = {
        "/api/rest?q=1&r=%20": "/svc/rest?q=1&r=%20",
        "/api": "/svc",
        "/keep/x": "/svc/keep/x",
        "/users/42/profile": "/svc/profile",
    }
    for path, upstream in expectations.items():
        async with session.get(url + path) as resp:
            assert resp.status == 200, path
            assert (await resp.json())["path_qs"] == upstream, path


async def test_no_route_404(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    _, _, url = await start_proxy(stack, make_config(1, [(f"127.0.0.1:{a.port}", 100)]))
    session = await client(stack)
    async with session.get(url + "/nothing") as resp:
        assert resp.status == 404
        assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
        assert await resp.json() == {"message": "no Route matched with those values"}
    # The connection stays usable after a local answer.
    async with session.get(url + "/api") as resp:
        assert resp.status == 200


async def test_no_config_503(stack: AsyncExitStack) -> None:
    _, _, url = await start_proxy(stack, None)
    session = await client(stack)
    async with session.get(url + "/api") as resp:
        assert resp.status == 503
        assert "no configuration" in (await resp.json())["message"]


async def test_no_usable_target_503(stack: AsyncExitStack) -> None:
    config = make_config(1, [("127.0.0.1:1", 0), ("127.0.0.1:2", 0)])
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    async with session.get(url + "/api") as resp:
        assert resp.status == 503
        assert await resp.json() == {"message": "failure to get a peer from the ring-balancer"}
    empty = make_config(2, [])
    _, _, url2 = await start_proxy(stack, empty)
    async with session.get(url2 + "/api") as resp:
        assert resp.status == 503


async def test_refused_single_target_502(stack: AsyncExitStack) -> None:
    config = make_config(1, [(f"127.0.0.1:{refused_port()}", 100)], service={"retries": 2})
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    async with session.get(url + "/api") as resp:
        assert resp.status == 502
        assert await resp.json() == {
            "message": "An invalid response was received from the upstream server"
        }


async def test_retry_goes_to_the_live_target(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    dead = refused_port()
    config = make_config(1, [(f"127.0.0.1:{a.port}", 100), (f"127.0.0.1:{dead}", 100)])
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    for _ in range(6):
        async with session.post(url + "/api/r", data=b"payload") as resp:
            assert resp.status == 200
            body = await resp.json()
            assert body["backend"] == "a" and body["body_len"] == 7


async def test_retries_zero_means_one_try(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    dead = refused_port()
    # Sorted by key, so the dead one (lower port or not) is picked first half the time.
    config = make_config(
        1, [(f"127.0.0.1:{a.port}", 100), (f"127.0.0.1:{dead}", 100)], service={"retries": 0}
    )
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    statuses = []
    for _ in range(4):
        async with session.get(url + "/api") as resp:
            statuses.append(resp.status)
    assert sorted(statuses) == [200, 200, 502, 502]


async def test_read_timeout_504(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    config = make_config(1, [(f"127.0.0.1:{a.port}", 100)], service={"read_timeout": 200}, routes=[
        {"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}
    ])
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    async with session.get(url + "/slow?s=1") as resp:
        assert resp.status == 504
        assert await resp.json() == {"message": "The upstream server is timing out"}
    async with session.get(url + "/slow?s=0") as resp:
        assert resp.status == 200


async def test_chunked_request_and_response(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]
    _, _, url = await start_proxy(stack, make_config(1, direct=("127.0.0.1", a.port), routes=routes))
    session = await client(stack)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(10):
            yield b"chunk-%d;" % i

    async with session.post(url + "/echo", data=gen()) as resp:
        assert resp.status == 200
        body = await resp.json()
        assert body["chunked"] is True
        assert body["body_len"] == len(b"".join(b"chunk-%d;" % i for i in range(10)))
    async with session.get(url + "/download?size=300000") as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert len(await resp.read()) == 300000


async def test_large_streamed_bodies(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]
    _, _, url = await start_proxy(stack, make_config(1, direct=("127.0.0.1", a.port), routes=routes))
    session = await client(stack)
    size = 20 * 1024 * 1024
    block = bytes(range(256)) * 256

    async def gen() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            yield block
            sent += len(block)

    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)
    # Content-Length framed upload.
    async with session.post(
        url + "/upload", data=gen(), headers={"Content-Length": str(size)}
    ) as resp:
        assert resp.status == 200
        assert await resp.json() == {"size": size, "sha256": digest.hexdigest()}
    # Chunked upload.
    async with session.post(url + "/upload", data=gen()) as resp:
        assert await resp.json() == {"size": size, "sha256": digest.hexdigest()}
    async with session.get(url + f"/download?size={size}") as resp:
        total = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            total += len(chunk)
        assert total == size


async def test_upstream_keepalive_reuse(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy, _, url = await start_proxy(stack, make_config(1, [(f"127.0.0.1:{a.port}", 100)]))
    session = await client(stack)
    for _ in range(20):
        async with session.get(url + "/api") as resp:
            assert resp.status == 200
    assert len(a.requests) == 20
    assert a.connections == 1
    assert proxy.pool.idle_count() == 1
    # Concurrency needs more connections, but they are reused afterwards too.
    async def one() -> int:
        async with session.get(url + "/api") as resp:
            return resp.status

    assert await asyncio.gather(*(one() for _ in range(30))) == [200] * 30
    assert a.connections < 50


async def test_preserve_host_and_host_header(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [
        {"id": "r1", "paths": ["/keep"], "preserve_host": True, "service": {"id": "s1"}},
        {"id": "r2", "paths": ["/api"], "service": {"id": "s1"}},
    ]
    config = make_config(1, [(f"127.0.0.1:{a.port}", 100)], routes=routes)
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    async with session.get(url + "/keep", headers={"Host": "client.example"}) as resp:
        assert (await resp.json())["headers"]["Host"] == "client.example"
    async with session.get(url + "/api", headers={"Host": "client.example"}) as resp:
        assert (await resp.json())["headers"]["Host"] == f"127.0.0.1:{a.port}"


async def test_stale_pooled_connection_is_retried(stack: AsyncExitStack) -> None:
    # Answers with keep-alive framing but closes right after: the pooled connection is
    # dead by the time the next request takes it.
    raw = RawBackend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", close=True)
    await raw.start()
    stack.push_async_callback(raw.stop)
    _, _, url = await start_proxy(stack, make_config(1, direct=("127.0.0.1", raw.port)))
    session = await client(stack)
    for _ in range(5):
        async with session.get(url + "/api") as resp:
            assert resp.status == 200 and await resp.read() == b"ok"


async def test_config_swap_while_running(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    b = await start_backend(stack, "b")
    first = make_config(1, [(f"127.0.0.1:{a.port}", 100)])
    _, holder, url = await start_proxy(stack, first)
    session = await client(stack)
    async with session.get(url + "/api") as resp:
        assert (await resp.json())["backend"] == "a"
    holder.current = make_config(
        2,
        [(f"127.0.0.1:{b.port}", 100)],
        routes=[{"id": "r9", "paths": ["/v2"], "service": {"id": "s1"}}],
        previous=first,
    )
    async with session.get(url + "/v2") as resp:
        assert (await resp.json())["backend"] == "b"
    async with session.get(url + "/api") as resp:
        assert resp.status == 404


async def test_graceful_stop_finishes_in_flight(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]
    holder = ConfigHolder(make_config(1, direct=("127.0.0.1", a.port), routes=routes))
    proxy = ProxyServer(holder, "127.0.0.1", 0)
    await proxy.start()
    port = proxy.port
    session = await client(stack)
    pending = asyncio.ensure_future(session.get(f"http://127.0.0.1:{port}/slow?s=0.3"))
    await wait_for(lambda: len(a.requests) == 1, message="request reached the backend")
    await proxy.stop(timeout=5)
    resp = await pending
    assert resp.status == 200 and await resp.text() == "late"
    resp.release()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"http://127.0.0.1:{port}/slow?s=0"):
            pass
