"""Redis outages with real parts: the Admin API answers 503, data planes keep their config.

A real ``redis-server`` is killed (SIGKILL) under a running control plane and
brought back on the same port with its AOF; real data planes proxy real HTTP
traffic meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control_plane.admin_api import create_admin_app
from control_plane.data_planes import DataPlaneRegistry
from control_plane.embedded_redis import EmbeddedRedis
from control_plane.redis_connection import COMMAND_RETRIES, create_redis_client
from control_plane.server import ControlPlane
from control_plane.store import EntityStore
from data_plane.server import DataPlane, DataPlaneSettings
from ferry_shared.http_site import start_site
from tests.support.control_planes import start_control_plane
from tests.support.polling import wait_for
from tests.support.tls import pem_pair

#: Routes that never touch Redis.
_REDIS_FREE = {"/", "/status", "/openapi.json"}

_PATH_VALUES = {
    "service": "shop",
    "route": "shop-route",
    "upstream": "shop",
    "target": "10.0.0.1:80",
    "address": "10.0.0.1:80",
    "certificate": "shop.example.com",
    "sni": "shop.example.com",
    "ca_certificate": "0b9c1c55-5a4c-4d55-9a3e-0c4f1b0e7a11",
}
_PAIR = pem_pair("shop.example.com")
_CA = pem_pair("Shop CA", is_ca=True)


def _body_for(path: str) -> dict[str, Any]:
    """A valid body for a write to ``path`` (the last collection named in it)."""
    collections = [part for part in path.split("/") if part and not part.startswith("{")]
    last = collections[-1] if collections else ""
    bodies: dict[str, dict[str, Any]] = {
        "services": {"host": "example.com"},
        "routes": {"paths": ["/x"]},
        "upstreams": {"name": "shop"},
        "targets": {"target": "10.0.0.1:80"},
        "certificates": {"cert": _PAIR.cert, "key": _PAIR.key, "snis": ["shop.example.com"]},
        "snis": {"name": "shop.example.com", "certificate": {"id": _PATH_VALUES["ca_certificate"]}},
        "ca_certificates": {"cert": _CA.cert},
    }
    return bodies.get(last, {})


async def test_every_admin_api_route_answers_503_not_500_when_redis_is_down(
    unused_port: Callable[[], int],
) -> None:
    port = unused_port()
    dead = create_redis_client(f"redis://:s3cret@127.0.0.1:{port}/0")
    app = create_admin_app(
        EntityStore(dead), DataPlaneRegistry(dead), node_id="n", version="0.1.0"
    )
    calls = []
    for resource in app.router.resources():
        path = re.sub(r"\{(\w+)\}", lambda m: _PATH_VALUES.get(m.group(1), "x"), resource.canonical)
        # Every path also answers with a trailing slash (Kong's router): same rules.
        template = resource.canonical.rstrip("/") or "/"
        if template.startswith("/console"):
            continue  # static files (tests/e2e/test_console.py), no Redis behind them
        for route in resource:
            body = _body_for(template) if route.method in ("POST", "PUT", "PATCH") else None
            calls.append((template, route.method, path, body))
    assert len(calls) >= 30, "every route and method is tried"
    try:
        async with TestClient(TestServer(app)) as client:

            async def call(method: str, path: str, body: Any) -> tuple[int, Any]:
                async with client.request(method, path, json=body) as response:
                    return response.status, await response.json()

            # Concurrently: each call takes the retries' backoff before its 503.
            answers = await asyncio.gather(*(call(m, p, b) for _, m, p, b in calls))
            for (template, method, path, _), (status, answer) in zip(calls, answers, strict=True):
                assert status != 500, (method, path, answer)
                if method == "HEAD":  # GET's status, no body
                    assert status == (200 if template in _REDIS_FREE else 503), (method, path)
                    continue
                if template in _REDIS_FREE:
                    assert status == 200, (method, path, answer)
                    continue
                assert status == 503, (method, path, answer)
                assert answer["code"] == 8 and answer["name"] == "database error"
                assert answer["message"].startswith(
                    f"the database is unreachable (Redis at 127.0.0.1:{port}): "
                ), answer
                assert answer["message"].endswith("data planes keep serving their last configuration")
                assert "s3cret" not in answer["message"]
            status, answer = await call("GET", "/status", None)
            assert answer["database"] == {"reachable": False}
    finally:
        await dead.aclose()


class FlakyProxy:
    """A TCP proxy to Redis that closes the first ``drop`` connections it accepts."""

    def __init__(self, target_port: int, drop: int) -> None:
        self.target_port = target_port
        self.drop = drop
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.accepted <= self.drop:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.mark.parametrize(
    ("dropped", "status"),
    [(COMMAND_RETRIES, 201), (100, 503)],
    ids=["a-blip-is-retried", "a-longer-outage-is-a-503"],
)
async def test_connection_failures_are_retried_a_bounded_number_of_times(
    redis_server: EmbeddedRedis, redis_url: str, dropped: int, status: int
) -> None:
    proxy = FlakyProxy(redis_server.port, drop=dropped)
    await proxy.start()
    client = create_redis_client(f"redis://127.0.0.1:{proxy.port}/0")
    app = create_admin_app(
        EntityStore(client), DataPlaneRegistry(client), node_id="n", version="0.1.0"
    )
    try:
        async with TestClient(TestServer(app)) as admin:
            async with admin.post("/upstreams", json={"name": "shop"}) as response:
                assert response.status == status, await response.text()
        # One attempt and COMMAND_RETRIES retries, the reconnects inside them included.
        assert proxy.accepted == COMMAND_RETRIES + 1
    finally:
        await client.aclose()
        await proxy.close()


# ------------------------------------------------ a CP, its DPs and a Redis crash


async def _call(
    http: aiohttp.ClientSession, cp: ControlPlane, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, f"http://127.0.0.1:{cp.admin_port}{path}", json=body) as r:
        text = await r.text()
        return r.status, (await r.json() if text else None)


async def _created(http: aiohttp.ClientSession, cp: ControlPlane, path: str, body: Any) -> Any:
    status, answer = await _call(http, cp, "POST", path, body)
    assert status == 201, answer
    return answer


async def _start_backend(stack: AsyncExitStack) -> int:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"hello from {request.path}")  # routes strip their path

    app = web.Application()
    app.router.add_get("/{tail:.*}", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    return await start_site(runner, "127.0.0.1", 0)


async def _start_dp(stack: AsyncExitStack, cp: ControlPlane, data_dir: Path) -> DataPlane:
    plane = DataPlane(
        DataPlaneSettings(
            control_plane=f"127.0.0.1:{cp.cluster_port}",
            proxy_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            data_dir=data_dir,
            cluster_insecure=True,
        )
    )
    stack.push_async_callback(plane.stop, 1.0)
    await plane.start()
    return plane


def _holds(dp: DataPlane, version: int) -> bool:
    current = dp.holder.current
    return current is not None and current.version == version


async def _proxied(http: aiohttp.ClientSession, dp: DataPlane, path: str) -> str | None:
    async with http.get(f"http://127.0.0.1:{dp.proxy_port}{path}") as response:
        return await response.text() if response.status == 200 else None


async def test_with_redis_down_dps_keep_serving_new_dps_get_the_last_snapshot_and_writes_resume(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    redis_dir = tmp_path / "redis"
    redis = EmbeddedRedis(redis_dir)
    redis.start()
    stack.callback(lambda: redis.stop())  # the one running at the end
    setup = aioredis.Redis.from_url(redis.url)
    # Every acknowledged write is on disk before SIGKILL: the restart must find it.
    await setup.config_set("appendfsync", "always")
    await setup.aclose()

    cp = await start_control_plane(redis.url, tmp_path / "cp")
    stack.push_async_callback(cp.stop, 0.5)
    http = aiohttp.ClientSession()
    stack.push_async_callback(http.close)
    backend_port = await _start_backend(stack)
    await _created(http, cp, "/upstreams", {"name": "shop"})
    await _created(http, cp, "/upstreams/shop/targets", {"target": f"127.0.0.1:{backend_port}"})
    await _created(http, cp, "/services", {"name": "shop", "host": "shop", "port": 80})
    await _created(http, cp, "/services/shop/routes", {"name": "before", "paths": ["/before"]})
    await wait_for(lambda: cp.snapshots.current is not None and cp.snapshots.current.version == 4,
                   message="the CP's snapshot of the four writes")
    old_dp = await _start_dp(stack, cp, tmp_path / "dp-old")
    await wait_for(lambda: _holds(old_dp, 4), message="the first DP to apply version 4")
    assert await _proxied(http, old_dp, "/before/x") == "hello from /x"

    redis.kill()

    # (a) Reads and writes answer 503 with what is down and what still works.
    expected = (
        f"the database is unreachable (Redis at 127.0.0.1:{redis.port}): "
        f"Error 111 connecting to 127.0.0.1:{redis.port}"
    )
    for method, path, body in (
        ("GET", "/upstreams/shop", None),
        ("GET", "/routes", None),
        ("POST", "/services/shop/routes", {"paths": ["/lost"]}),
        ("PATCH", "/upstreams/shop", {"slots": 100}),
        ("GET", "/clustering/data-planes", None),
    ):
        status, answer = await _call(http, cp, method, path, body)
        assert status == 503, (method, path, answer)
        assert answer["message"].startswith(expected), answer
        assert answer["message"].endswith("data planes keep serving their last configuration")
    status, answer = await _call(http, cp, "GET", "/status")
    assert status == 200 and answer["database"] == {"reachable": False}
    assert answer["configuration_version"] == 4

    # (b) The running DP keeps proxying; a new DP gets the last snapshot from the CP.
    assert await _proxied(http, old_dp, "/before/y") == "hello from /y"
    new_dp = await _start_dp(stack, cp, tmp_path / "dp-new")
    await wait_for(lambda: _holds(new_dp, 4), message="a DP connecting during the outage to get version 4")
    assert new_dp.holder.current is not None and cp.snapshots.current is not None
    assert new_dp.holder.current.hash == cp.snapshots.current.hash
    assert await _proxied(http, new_dp, "/before/z") == "hello from /z"

    # (c) Redis comes back on the same port with its data; writes resume and reach both DPs.
    redis = EmbeddedRedis(redis_dir, port=redis.port)
    redis.start()

    async def reachable() -> bool:
        status, answer = await _call(http, cp, "GET", "/status")
        return status == 200 and answer["database"]["reachable"]

    await wait_for(reachable, timeout=15, message="the Admin API to see Redis again")
    status, upstream = await _call(http, cp, "GET", "/upstreams/shop")
    assert status == 200 and upstream["name"] == "shop", "the data survived the crash"
    await _created(http, cp, "/services/shop/routes", {"name": "after", "paths": ["/after"]})
    await wait_for(lambda: _holds(old_dp, 5) and _holds(new_dp, 5), timeout=30,
                   message="the write after the outage to reach both DPs")
    assert await _proxied(http, old_dp, "/after/1") == "hello from /1"
    assert await _proxied(http, new_dp, "/after/2") == "hello from /2"
