"""The proxy end to end over real sockets: real aiohttp / raw asyncio backends, aiohttp
as the client; routing, balancing, retries, timeouts, WebSocket with a real client, the
balancer callbacks, and bounded memory for 100 MB bodies (proxy in a child process).

The raw-socket HTTP/1.1 cases live in ``test_http11_conformance.py``; both use the
backends of ``tests/support/backends.py`` and the proxy helpers of ``tests/support/proxy.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from data_plane.balancers import Address
from data_plane.balancers.round_robin import RoundRobinBalancer
from data_plane.proxy import ProxyServer
from data_plane.router import Router, RouteSpec
from data_plane.runtime import ConfigHolder, RuntimeConfig
from tests.support.backends import RawBackend, refused_port, start_backend
from tests.support.hot_path import needs_interpreted_subclass
from tests.support.polling import wait_for
from tests.support.proxy import client, make_config, read_response, start_proxy

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


@pytest.mark.parametrize(
    ("path", "upstream"),
    [
        pytest.param("/api/rest?q=1&r=%20", "/svc/rest?q=1&r=%20", id="stripped_prefix_keeps_the_query"),
        pytest.param("/api", "/svc", id="whole_path_stripped"),
        pytest.param("/keep/x", "/svc/keep/x", id="strip_path_off"),
        pytest.param("/users/42/profile", "/svc/profile", id="regex_match_stripped"),
    ],
)
async def test_strip_path_and_service_path(stack: AsyncExitStack, path: str, upstream: str) -> None:
    a = await start_backend(stack, "a")
    routes: list[dict[str, Any]] = [
        {"id": "r1", "paths": ["/api"], "service": {"id": "s1"}},
        {"id": "r2", "paths": ["/keep"], "strip_path": False, "service": {"id": "s1"}},
        {"id": "r3", "paths": [r"~/users/\d+"], "service": {"id": "s1"}},
    ]
    config = make_config(1, direct=("127.0.0.1", a.port), service={"path": "/svc"}, routes=routes)
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
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
    routes: list[dict[str, Any]] = [
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


# ---------------------------------------------------------------------- WebSocket


async def test_websocket_through_proxy_with_aiohttp_client(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]
    proxy, _, url = await start_proxy(stack, make_config(1, direct=("127.0.0.1", a.port), routes=routes))
    session = await client(stack)
    async with session.ws_connect(url + "/ws") as ws:
        assert ws._response.headers["Via"] == "1.1 ferry/0.1.0"
        assert (await ws.receive_str(timeout=10)) == "hello from a"
        for text in ("one", "x" * 200_000, "three"):  # client -> target -> client
            await ws.send_str(text)
            assert (await ws.receive_str(timeout=10)) == "echo:" + text
        await ws.send_bytes(b"\x00\xff" * 1000)
        assert (await ws.receive_bytes(timeout=10)) == b"\x00\xff" * 1000
        await ws.send_str("push:50")  # a burst the target sends on its own
        assert [await ws.receive_str(timeout=10) for _ in range(50)] == [f"push {i}" for i in range(50)]
    assert ws.closed
    await wait_for(lambda: proxy.connections == 0, message="tunnel closed")
    assert proxy.pool.idle_count() == 0
    # A later request opens a fresh upstream connection (the tunnel's was never pooled).
    async with session.get(url + "/after") as resp:
        assert resp.status == 200
    assert a.connections == 2


# ------------------------------------------------------------ balancer callbacks


class RecordingBalancer(RoundRobinBalancer):
    """Round-robin that records the proxy's ``on_request_start``/``on_request_end``.

    ``in_flight`` is per address key; ``violations`` collects ends without a start
    (recorded, not raised, since raising would fail inside the proxy).
    """

    def __init__(self, addresses: Iterable[Address]) -> None:
        self.starts = 0
        self.ends: list[tuple[str, float, bool]] = []
        self.in_flight: dict[str, int] = {}
        self.violations: list[str] = []
        super().__init__(addresses)

    def on_request_start(self, address: Address) -> None:
        self.starts += 1
        self.in_flight[address.key] = self.in_flight.get(address.key, 0) + 1

    def on_request_end(self, address: Address, elapsed: float, failed: bool) -> None:
        count = self.in_flight.get(address.key, 0)
        if count <= 0 or elapsed < 0:
            self.violations.append(f"end without start or negative time for {address.key}")
        self.in_flight[address.key] = count - 1
        self.ends.append((address.key, elapsed, failed))

    def idle(self) -> bool:
        return self.starts == len(self.ends) and not any(self.in_flight.values())


def config_with_balancer(balancer: RecordingBalancer, **service: Any) -> RuntimeConfig:
    """One service over ``balancer`` (a real balancer object), every path routed."""
    base = make_config(1, [(a.key, a.weight) for a in balancer.addresses], service=service)
    compiled = base.services["s1"]
    assert compiled.upstream is not None
    # The proxy picks through the upstream (upstream.begin_try): swap its balancer.
    svc = dataclasses.replace(
        compiled, balancer=balancer, upstream=dataclasses.replace(compiled.upstream, balancer=balancer)
    )
    route = RouteSpec(id="r1", name="all", service=svc, paths=("/",), strip_path=False)
    return RuntimeConfig(
        version=1, hash="h", router=Router([route]), services={"s1": svc}, upstreams={}
    )


@needs_interpreted_subclass
async def test_balancer_callbacks_pair_up_for_successes_failures_and_retries(
    stack: AsyncExitStack,
) -> None:
    a = await start_backend(stack, "a")
    live = Address("127.0.0.1", a.port)
    dead = Address("127.0.0.1", refused_port())
    balancer = RecordingBalancer([live, dead])
    _, _, url = await start_proxy(stack, config_with_balancer(balancer, read_timeout=300))
    session = await client(stack)
    for _ in range(6):
        async with session.post(url + "/echo", data=b"payload") as resp:
            assert resp.status == 200  # a refused try is retried on the live target
    # A POST that timed out may have reached the target: answered 504, never retried.
    async with session.post(url + "/slow?s=2") as resp:
        assert resp.status == 504
    async with session.post(url + "/slow?s=2") as resp:
        assert resp.status == 504
    assert balancer.violations == [] and balancer.idle()
    by_target = {key: [(e, f) for k, e, f in balancer.ends if k == key] for key in (live.key, dead.key)}
    # The dead target was tried (and failed) about half the time, never answered.
    assert by_target[dead.key] and all(failed for _, failed in by_target[dead.key])
    successes = [e for e, failed in by_target[live.key] if not failed]
    timeouts = [e for e, failed in by_target[live.key] if failed]
    assert len(successes) == 6 and all(e > 0 for e in successes)
    # Waited about read_timeout (0.3 s; the loop timer may fire a millisecond early).
    assert len(timeouts) == 2 and all(e >= 0.25 for e in timeouts)


def reset(writer: asyncio.StreamWriter) -> None:
    """Drop a client connection with a TCP RST, as a crashed client would (a plain
    close is a half-close the proxy still answers)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@needs_interpreted_subclass
async def test_balancer_callbacks_end_when_the_client_goes_away(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    balancer = RecordingBalancer([Address("127.0.0.1", a.port)])
    proxy, _, url = await start_proxy(stack, config_with_balancer(balancer))
    # 1. Gone while waiting for the response head.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow?s=2 HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: len(a.requests) == 1, message="request at the target")
    assert balancer.in_flight[f"127.0.0.1:{a.port}"] == 1
    reset(writer)
    await wait_for(lambda: len(balancer.ends) == 1, message="try ended")
    assert balancer.ends[0][2] is True  # no response head came
    # 2. Gone in the middle of a long response body.
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /download?size=200000000 HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    await reader.readexactly(100_000)
    assert len(balancer.ends) == 1  # still streaming: the try is in flight
    reset(writer)
    await wait_for(lambda: len(balancer.ends) == 2, message="try ended")
    assert balancer.ends[1][2] is False  # the head had come
    # 3. Gone with pipelined requests queued behind a slow one. (Reading is paused
    # while they wait, so the reset is noticed when the first answer is written; the
    # next one may have started by then: either way every try must end.)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(b"GET /slow?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
    await wait_for(lambda: balancer.starts == 3, message="first pipelined try started")
    reset(writer)
    await wait_for(lambda: proxy.connections == 0, message="client connection gone")
    await wait_for(balancer.idle, message="all tries ended")
    # 4. A WebSocket tunnel is in flight until it closes.
    session = await client(stack)
    before = balancer.starts
    async with session.ws_connect(url + "/ws") as ws:
        assert (await ws.receive_str(timeout=10)).startswith("hello")
        assert balancer.starts == before + 1 and not balancer.idle()
    await wait_for(balancer.idle, message="tunnel try ended")
    assert balancer.ends[-1][2] is False
    assert balancer.violations == []


# ---------------------------------------------------- 100 MB bodies, bounded memory

#: Runs a proxy in a child process (so its memory is its own); prints the port, stops
#: when stdin closes.
_PROXY_MAIN = """
import asyncio, json, sys
import uvloop
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, compile_config

async def main() -> None:
    proxy = ProxyServer(ConfigHolder(compile_config(1, "h", json.loads(sys.argv[1]))), "127.0.0.1", 0)
    await proxy.start()
    print(proxy.port, flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await proxy.stop(1.0)

uvloop.run(main())
"""

BIG = 100 * 1024 * 1024
#: Allowed growth of the proxy's peak RSS while relaying BIG bytes. The proxy holds at
#: most one socket read plus a transport's write buffer per direction (a few hundred
#: KiB); the margin covers the allocator, and is far below the 100 MB a buffering
#: proxy would need.
RSS_GROWTH_LIMIT = 24 * 1024 * 1024


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` (peak RSS) of a process, in KiB, from /proc."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


async def start_proxy_process(stack: AsyncExitStack, backend_port: int) -> tuple[int, int]:
    """A proxy child process routing every path to ``127.0.0.1:backend_port``;
    returns (pid, proxy port)."""
    entities = {
        "services": [{"id": "s1", "host": "127.0.0.1", "port": backend_port}],
        "routes": [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}],
    }
    root = Path(__file__).resolve().parents[2]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _PROXY_MAIN,
        json.dumps(entities),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )

    async def stop() -> None:
        assert process.stdin is not None
        process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    stack.push_async_callback(stop)
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    return process.pid, int(line)


async def wait_quiet(count: Callable[[], int], *, message: str) -> int:
    """Wait until ``count()`` stops changing (unchanged for 0.3 s): a transfer held back
    by flow control has reached its steady state. Fails after 30 s."""
    last, since = count(), time.monotonic()
    deadline = since + 30
    while time.monotonic() - since < 0.3:
        if time.monotonic() > deadline:
            raise AssertionError(f"{message}: still moving after 30 s")
        await asyncio.sleep(0.05)
        now = count()
        if now != last:
            last, since = now, time.monotonic()
    return last


async def warm_up(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /warm HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await read_response(reader)
    finally:
        writer.close()


async def test_100mb_upload_with_slow_target_keeps_proxy_memory_bounded(stack: AsyncExitStack) -> None:
    received = 0
    resume = asyncio.Event()

    async def discard(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Reads a Content-Length body and drops it; stalls after 8 MiB until resumed."""
        nonlocal received
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                left = length
                while left:
                    if received >= 8 << 20 and not resume.is_set():
                        await resume.wait()
                    chunk = await reader.read(min(left, 1 << 18))
                    if not chunk:
                        return
                    left -= len(chunk)
                    received += len(chunk)
                answer = str(length).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(discard, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    stack.callback(resume.set)
    pid, port = await start_proxy_process(stack, server.sockets[0].getsockname()[1])
    await warm_up(port)
    received = 0
    baseline = memory_kib(pid)["VmHWM"]

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stack.callback(writer.close)
    sent = 0
    block = os.urandom(1 << 18)

    async def upload() -> None:
        nonlocal sent
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % BIG)
        while sent < BIG:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    task = asyncio.ensure_future(upload())
    stack.callback(task.cancel)
    await wait_for(lambda: received >= 8 << 20, timeout=30, message="8 MiB at the target")
    await wait_quiet(lambda: sent, message="client held back by flow control")
    stalled = memory_kib(pid)["VmRSS"]
    resume.set()
    await asyncio.wait_for(task, 60)
    status, _, body = await read_response(reader)
    assert (status, body) == (200, str(BIG).encode())
    peak = memory_kib(pid)["VmHWM"]
    assert (stalled - baseline) * 1024 < RSS_GROWTH_LIMIT, (baseline, stalled)
    assert (peak - baseline) * 1024 < RSS_GROWTH_LIMIT, (baseline, peak)


async def test_100mb_download_to_slow_client_keeps_proxy_memory_bounded(stack: AsyncExitStack) -> None:
    sent = 0

    async def stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answers /warm briefly and anything else with BIG chunked bytes."""
        nonlocal sent
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if head.startswith(b"GET /warm"):
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    continue
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                block = b"%x\r\n" % (1 << 18) + os.urandom(1 << 18) + b"\r\n"
                while sent < BIG:
                    writer.write(block)
                    sent += 1 << 18
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(stream, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    pid, port = await start_proxy_process(stack, server.sockets[0].getsockname()[1])
    await warm_up(port)
    baseline = memory_kib(pid)["VmHWM"]

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stack.callback(writer.close)
    writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower()
    got = 0
    stalled = 0
    while True:
        size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 30), 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        got += len(await asyncio.wait_for(reader.readexactly(size), 30))
        await reader.readexactly(2)
        if not stalled and got >= 8 << 20:
            # The client stops reading; the target must be held back, not buffered.
            await wait_quiet(lambda: sent, message="target held back by flow control")
            stalled = memory_kib(pid)["VmRSS"]
    assert got == BIG
    peak = memory_kib(pid)["VmHWM"]
    assert (stalled - baseline) * 1024 < RSS_GROWTH_LIMIT, (baseline, stalled)
    assert (peak - baseline) * 1024 < RSS_GROWTH_LIMIT, (baseline, peak)
