"""Kong's ``spec/02-integration/05-proxy/10-balancer/07-latency_spec.lua`` case by case
(``07-ewma_spec.lua`` is the same spec under its earlier name).

Kong's target servers answer after 100 ms and 1000 ms; Kong sends 6 concurrent
requests, waits 2 s, sends 8 more, waits 2 s, sends 86 more and expects the fast target
to have answered more than 10 times as many as the slow one.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.admin import admin_call
from tests.support.kong import KongCluster, add_api, add_target, add_upstream

SPEC = "07-latency_spec.lua"


async def _targets_all(kong: KongCluster, http: aiohttp.ClientSession, upstream: str) -> list[dict[str, object]]:
    _, body = await admin_call(http, "GET", f"{kong.admin}/upstreams/{upstream}/targets/all", None, 200)
    return list(body["data"])


async def test_balances_by_latency(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("balances by latency") — 07-latency_spec.lua: ratio fast/slow > 10."""
    fast, slow = await spec_servers(delay_ms=100), await spec_servers(delay_ms=1000)
    name, uid = await add_upstream(kong, http, algorithm="latency")
    await add_target(kong, http, uid, f"127.0.0.1:{fast.port}", weight=100)
    await add_target(kong, http, uid, f"127.0.0.1:{slow.port}", weight=100)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()

    async def one() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            async with session.get(f"{dp.proxy}/ewma", headers={"Host": host, "Connection": "close"}) as r:
                await r.read()
                assert r.status == 200

    tasks = [asyncio.create_task(one()) for _ in range(6)]
    await asyncio.sleep(2)  # the spec's own pacing between its three waves
    tasks += [asyncio.create_task(one()) for _ in range(8)]
    await asyncio.sleep(2)
    tasks += [asyncio.create_task(one()) for _ in range(86)]
    await asyncio.gather(*tasks)
    assert slow.ok > 0
    assert fast.ok / slow.ok > 10, (fast.ok, slow.ok)


async def test_add_and_remove_targets(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("add and remove targets") — 07-latency_spec.lua ("Balancer: latency"):
    a new target is listed with its weight; PATCH weight 0 keeps it listed with 0."""
    _, uid = await add_upstream(kong, http, algorithm="latency")
    await add_target(kong, http, uid, "127.0.0.1:10003", weight=100)
    assert any(e["target"] == "127.0.0.1:10003" and e["weight"] == 100 for e in await _targets_all(kong, http, uid))
    _, patched = await admin_call(
        http, "PATCH", f"{kong.admin}/upstreams/{uid}/targets/127.0.0.1:10003", {"weight": 0}, 200
    )
    assert isinstance(patched["id"], str)
    assert (patched["target"], patched["weight"]) == ("127.0.0.1:10003", 0)
    assert any(e["target"] == "127.0.0.1:10003" and e["weight"] == 0 for e in await _targets_all(kong, http, uid))


async def test_add_and_remove_targets_single_target(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("add and remove targets") — 07-latency_spec.lua ("Balancer: add and
    remove a single target to a latency upstream"): DELETE removes it from /targets/all."""
    _, uid = await add_upstream(kong, http, algorithm="latency")
    await add_target(kong, http, uid, "127.0.0.1:10001", weight=100)
    assert any(e["target"] == "127.0.0.1:10001" and e["weight"] == 100 for e in await _targets_all(kong, http, uid))
    await admin_call(http, "DELETE", f"{kong.admin}/upstreams/{uid}/targets/127.0.0.1:10001", None, 204)
    assert not any(e["target"] == "127.0.0.1:10001" for e in await _targets_all(kong, http, uid))
