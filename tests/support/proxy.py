"""The data plane's proxy in-process, and raw-socket clients of it.

* :func:`make_config`: one service over an upstream (or a direct host) and its routes;
  :func:`upstream_config`: one health-checked upstream behind a catch-all route.
* :func:`start_proxy` / :func:`proxy_to`: a started :class:`ProxyServer` on a free port.
* :class:`HealthGateway`: the proxy plus a health supervisor, as a data plane runs them.
* :func:`client`, :func:`connect`, :func:`read_response`, :func:`read_to_eof`,
  :func:`assert_closed`, :func:`body_json`: an aiohttp session, or a raw TCP connection,
  an exact HTTP/1.1 response parser and what a test reads from it.

Everything started registers its teardown on the test's :class:`AsyncExitStack`.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from data_plane.health.supervisor import HealthSupervisor
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config


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


async def start_proxy(stack: AsyncExitStack, config: RuntimeConfig | None) -> tuple[ProxyServer, ConfigHolder, str]:
    """A started proxy serving ``config`` (None: no configuration yet): (proxy, its
    config holder, its base URL)."""
    holder = ConfigHolder(config)
    proxy = ProxyServer(holder, "127.0.0.1", 0)
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    return proxy, holder, f"http://127.0.0.1:{proxy.port}"


async def client(stack: AsyncExitStack, **kwargs: Any) -> aiohttp.ClientSession:
    """An aiohttp session (``kwargs`` as :class:`aiohttp.ClientSession` takes them)."""
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


#: One route sending every path to service "s1", unstripped.
ALL_PATHS = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]


async def proxy_to(stack: AsyncExitStack, port: int, routes: list[dict[str, object]] | None = None) -> ProxyServer:
    """A proxy whose one service is ``127.0.0.1:port``; routes default to ``/``."""
    proxy, _, _ = await start_proxy(
        stack, make_config(1, direct=("127.0.0.1", port), routes=routes or ALL_PATHS)
    )
    return proxy


async def connect(stack: AsyncExitStack, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw TCP connection to ``127.0.0.1:port``."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stack.callback(writer.close)
    return reader, writer


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until EOF, which must come within 10 s (a reset fails too)."""
    return await asyncio.wait_for(reader.read(), 10)


async def assert_closed(reader: asyncio.StreamReader) -> bytes:
    """:func:`read_to_eof`, a reset counting as EOF with nothing left: what was left."""
    try:
        return await read_to_eof(reader)
    except ConnectionResetError:
        return b""


def body_json(body: bytes) -> dict[str, Any]:
    """A response body that must be a JSON object, decoded."""
    data = json.loads(body)
    assert isinstance(data, dict)
    return data


def upstream_config(
    targets: list[str], healthchecks: dict[str, Any], *, version: int = 1,
    previous: RuntimeConfig | None = None, **upstream: Any,
) -> RuntimeConfig:
    """Upstream "u1" (``healthchecks``, ``upstream`` fields) over ``targets``, service
    "s1" on it with 5 retries, and a route sending every path there unstripped."""
    return compile_config(
        version,
        f"h{version}",
        {
            "upstreams": [{"id": "u1", "name": "backends", "healthchecks": healthchecks, **upstream}],
            "targets": [
                {"id": f"t{i}", "target": t, "upstream": {"id": "u1"}} for i, t in enumerate(targets)
            ],
            "services": [{"id": "s1", "host": "backends", "port": 80, "retries": 5}],
            "routes": [{"id": "r1", "paths": ["/"], "service": {"id": "s1"}, "strip_path": False}],
        },
        previous=previous,
    )


class HealthGateway:
    """The proxy plus a health supervisor over one config, as a data plane runs them."""

    def __init__(self) -> None:
        self.holder = ConfigHolder()
        self.health = HealthSupervisor()
        self.proxy = ProxyServer(self.holder, "127.0.0.1", 0)
        self.url = ""

    async def start(self, stack: AsyncExitStack, cfg: RuntimeConfig) -> None:
        self.apply(cfg)
        await self.proxy.start()
        stack.push_async_callback(self.proxy.stop, 2.0)
        stack.push_async_callback(self.health.stop)
        self.url = f"http://127.0.0.1:{self.proxy.port}"

    def apply(self, cfg: RuntimeConfig) -> None:
        self.holder.current = cfg
        self.health.apply(cfg)

    def state(self, key: str) -> str:
        cfg = self.holder.current
        assert cfg is not None
        checker = cfg.upstreams["u1"].health
        assert checker is not None
        return next(v.state for v in checker.view() if v.address.key == key)

    def reason(self, key: str) -> str:
        cfg = self.holder.current
        assert cfg is not None and cfg.upstreams["u1"].health is not None
        return next(v.reason for v in cfg.upstreams["u1"].health.view() if v.address.key == key)
