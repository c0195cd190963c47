"""Overload caps with real processes: a control plane, a data plane, and a target that
holds requests until the test lets them go (tests/support/holding_backend.py).

With ``max_connections: 1`` and ``max_pending_requests: 1``, while the target holds
one request, of two more requests one waits (pending) and the other is answered 503
``X-Ferry-Overloaded: true`` at once without reaching the target; the refusal is in
the data plane's ``/metrics``, and once the target answers the waiting request goes
through on the same connection, which later requests find free again (no slot leaked).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tests.support.admin import admin
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.holding_backend import HoldingBackend
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for


async def get(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], Any]:
    async with http.get(url) as response:
        return response.status, dict(response.headers), await response.json(content_type=None)


async def test_past_max_pending_requests_the_data_plane_answers_503_overloaded(
    cluster: Cluster, http: aiohttp.ClientSession,
) -> None:
    async with AsyncExitStack() as stack:
        await _past_max_pending_requests(cluster, http, stack)


async def _past_max_pending_requests(
    cluster: Cluster, http: aiohttp.ClientSession, stack: AsyncExitStack,
) -> None:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    target = await HoldingBackend("a").start(stack)
    await admin(http, "POST", f"{cluster.admin}/upstreams", {
        "name": "shop", "max_connections": 1, "max_pending_requests": 1,
    })
    await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": target.key})
    await admin(http, "POST", f"{cluster.admin}/services",
                {"name": "shop", "host": "shop", "port": 80, "connect_timeout": 60_000})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes",
                {"name": "shop", "paths": ["/shop"], "strip_path": False})
    dp = cluster.start_data_plane("dp")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)

    held = asyncio.create_task(get(http, f"{dp.proxy}/shop/hold/1"))
    await wait_for(lambda: target.seen == ["/shop/hold/1"], message="the first request held")
    # Two more: whichever reaches the data plane first waits for the one connection,
    # the other finds the pending queue full.
    others = [asyncio.create_task(get(http, f"{dp.proxy}/shop/{name}")) for name in ("x", "y")]
    await wait_for(lambda: any(t.done() for t in others), message="one request refused")
    refused = next(t for t in others if t.done())
    waiting = next(t for t in others if t is not refused)
    status, headers, body = refused.result()
    assert status == 503
    assert headers.get("X-Ferry-Overloaded") == "true"
    assert body == {"message": "upstream overloaded"}
    assert not waiting.done()
    assert target.seen == ["/shop/hold/1"]  # the refused request never reached it

    async def overflow_metric() -> str | None:
        async with http.get(f"{dp.status}/metrics") as response:
            text = await response.text()
        return next((line for line in text.splitlines()
                     if line.startswith("ferry_upstream_overflow_total{")), None)

    line = await wait_for(overflow_metric, message="the overflow in /metrics")
    assert line == 'ferry_upstream_overflow_total{cap="max_pending_requests",upstream="shop"} 1.0'

    target.gate.set()
    assert (await held)[0] == 200
    assert (await waiting)[0] == 200
    assert len(target.transports) == 1  # the waiting request got the released connection
    # Nothing leaked: one connection, free again for every later request.
    for i in range(3):
        assert (await get(http, f"{dp.proxy}/shop/after/{i}"))[0] == 200
    assert len(target.transports) == 1
