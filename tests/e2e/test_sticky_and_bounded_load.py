"""Sticky sessions and bounded-load hashing through real processes.

A control plane and data planes (child processes) configured through the Admin API, and
real backends on free ports: a sticky client stays on its target across data planes and
moves (with a new cookie) when its target dies; a hot consistent-hashing key spills over
to other targets once ``hash_balance_factor`` bounds the load of its own.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import cast

import aiohttp
from aiohttp import web

from tests.support.admin import admin
from tests.support.backends import Backend, start_backend
from tests.support.ferry_cluster import Cluster, DataPlaneProc, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

COOKIE = "ferry-srv"


async def sticky_get(
    http: aiohttp.ClientSession, dp: DataPlaneProc, cookie: str | None
) -> tuple[str, str | None]:
    """One request through ``dp`` carrying the sticky cookie value ``cookie``: the backend
    that answered and the sticky cookie value the answer set (``None``: none set)."""
    headers = {"Cookie": f"theme=dark; {COOKIE}={cookie}"} if cookie is not None else {}
    async with http.get(f"{dp.proxy}/shop/cart", headers=headers) as response:
        assert response.status == 200, await response.text()
        backend = str((await response.json())["backend"])
        set_cookies = response.headers.getall("Set-Cookie", [])
    assert len(set_cookies) <= 1, set_cookies
    if not set_cookies:
        return backend, None
    name_value, *attributes = (part.strip() for part in set_cookies[0].split(";"))
    name, _, value = name_value.partition("=")
    assert name == COOKIE
    assert attributes == ["Path=/shop", "HttpOnly"]
    return backend, value


async def test_a_sticky_client_stays_on_its_target_across_data_planes_and_moves_when_it_dies(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        cp = cluster.start_control_plane()
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        backends: dict[str, Backend] = {}
        for name in ("a", "b", "c"):
            backends[name] = await start_backend(stack, name)
        await admin(http, "POST", f"{cluster.admin}/upstreams", {
            "name": "shop", "algorithm": "sticky-sessions",
            "sticky_sessions_cookie": COOKIE, "sticky_sessions_cookie_path": "/shop",
            # One refused connection takes a target out, until an operator brings it back.
            "healthchecks": {"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}},
        })
        for backend in backends.values():
            await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets",
                        {"target": f"127.0.0.1:{backend.port}"})
        await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
        await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
        dps = [cluster.start_data_plane(f"dp{i}") for i in range(2)]
        for dp in dps:
            await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
            await wait_dp_synced(http, cluster, dp.status)

        # A new client gets a cookie naming the target that answered...
        pinned, cookie = await sticky_get(http, dps[0], None)
        assert cookie is not None
        # ...and stays there for 100 requests, whichever data plane takes them; a
        # cookie that already names the target is not set again.
        for i in range(100):
            assert await sticky_get(http, dps[i % 2], cookie) == (pinned, None)
        # Other new clients are spread (least connections, ties in turn).
        newcomers = {(await sticky_get(http, dps[0], None))[0] for _ in range(3)}
        assert len(newcomers) > 1

        # The pinned target dies: the request is retried elsewhere and the answer
        # re-pins the client to the target that gave it.
        await backends[pinned].stop()
        moved, new_cookie = await sticky_get(http, dps[0], cookie)
        assert moved != pinned and new_cookie is not None and new_cookie != cookie
        for i in range(20):
            assert await sticky_get(http, dps[i % 2], new_cookie) == (moved, None)


class GatedBackend:
    """A real aiohttp server that holds every request until :meth:`release`, so a test
    knows exactly which requests are in flight at once (no timing involved)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.arrived = 0
        self.gate = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived += 1
        await self.gate.wait()
        return web.json_response({"backend": self.name})

    def release(self) -> None:
        self.gate.set()

    def reset(self) -> None:
        self.arrived = 0
        self.gate = asyncio.Event()

    async def start(self, stack: AsyncExitStack) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = cast(asyncio.Server, site._server)
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]
        stack.push_async_callback(self.stop)

    async def stop(self) -> None:
        self.release()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


async def hot_key_burst(
    http: aiohttp.ClientSession, dp: DataPlaneProc, backends: list[GatedBackend], count: int
) -> dict[str, int]:
    """``count`` concurrent requests with one hash key, all held by the backends until
    every one of them arrived: how many each backend got."""
    for backend in backends:
        backend.reset()

    async def one() -> str:
        async with http.get(f"{dp.proxy}/hot/item", headers={"X-Key": "hot"}) as response:
            assert response.status == 200, await response.text()
            return str((await response.json())["backend"])

    tasks = [asyncio.create_task(one()) for _ in range(count)]
    try:
        await wait_for(lambda: sum(b.arrived for b in backends) == count,
                       message=f"{count} requests held by the backends")
        arrivals = {b.name: b.arrived for b in backends}
    finally:
        for backend in backends:
            backend.release()
    answers = await asyncio.gather(*tasks)
    assert sorted(answers) == sorted(name for name, n in arrivals.items() for _ in range(n))
    return {name: n for name, n in arrivals.items() if n}


async def test_hash_balance_factor_spreads_a_hot_key_over_more_than_one_target(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        cp = cluster.start_control_plane()
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        backends = [GatedBackend(name) for name in ("a", "b", "c")]
        for backend in backends:
            await backend.start(stack)
        await admin(http, "POST", f"{cluster.admin}/upstreams", {
            "name": "hot", "algorithm": "consistent-hashing", "hash_on": "header", "hash_on_header": "x-key",
        })
        for backend in backends:
            await admin(http, "POST", f"{cluster.admin}/upstreams/hot/targets",
                        {"target": f"127.0.0.1:{backend.port}"})
        await admin(http, "POST", f"{cluster.admin}/services", {"name": "hot", "host": "hot", "port": 80})
        await admin(http, "POST", f"{cluster.admin}/services/hot/routes", {"name": "hot", "paths": ["/hot"]})
        dp = cluster.start_data_plane("dp0")
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        await wait_dp_synced(http, cluster, dp.status)

        # Plain consistent hashing: every request of the key goes to its one target.
        plain = await hot_key_burst(http, dp, backends, 9)
        assert list(plain.values()) == [9]
        owner = next(iter(plain))

        # Bounded at 1.5 x the average: with the 9 held at once, no target takes more
        # than ceil(1.5 * 9 / 3) = 5, and the key's own target takes its full share.
        await admin(http, "PATCH", f"{cluster.admin}/upstreams/hot", {"hash_balance_factor": 150})
        await wait_dp_synced(http, cluster, dp.status)
        bounded = await hot_key_burst(http, dp, backends, 9)
        assert len(bounded) > 1
        assert max(bounded.values()) <= 5
        assert bounded[owner] == max(bounded.values())
