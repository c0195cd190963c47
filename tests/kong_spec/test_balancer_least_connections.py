"""Kong's ``spec/02-integration/05-proxy/10-balancer/02-least-connections_spec.lua``,
case by case.

Kong's older revision answers a weight PATCH with 204; Kong 3.x (and Ferry) answer 200
with the target, as the latency spec asserts.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.admin import admin_call
from tests.support.kong import KongCluster, add_api, add_target, add_upstream

SPEC = "02-least-connections_spec.lua"


async def _targets_all(kong: KongCluster, http: aiohttp.ClientSession, upstream: str) -> list[dict[str, object]]:
    _, body = await admin_call(http, "GET", f"{kong.admin}/upstreams/{upstream}/targets/all", None, 200)
    return list(body["data"])


async def test_balances_by_least_connections(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("balances by least-connections") — 02-least-connections_spec.lua: 100
    clients loop for 1.5 s over a 100 ms and a 200 ms target; answers ratio ≈ 2 (± 0.8)."""
    fast, slow = await spec_servers(delay_ms=100), await spec_servers(delay_ms=200)
    name, uid = await add_upstream(kong, http, algorithm="least-connections")
    await add_target(kong, http, uid, f"127.0.0.1:{fast.port}", weight=100)
    await add_target(kong, http, uid, f"127.0.0.1:{slow.port}", weight=100)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    done = False

    async def client() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            while not done:
                async with session.get(f"{dp.proxy}/leastconnections", headers={"Host": host}) as r:
                    await r.read()
                    assert r.status == 200

    tasks = [asyncio.create_task(client()) for _ in range(100)]
    await asyncio.sleep(1.5)  # the spec's run time
    done = True
    await asyncio.gather(*tasks)
    assert abs(fast.ok / slow.ok - 2) <= 0.8, (fast.ok, slow.ok)


async def test_add_and_remove_targets(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("add and remove targets") — 02-least-connections_spec.lua ("Balancer: least-connections"):
    a new target is listed with its weight; PATCH weight 0 keeps it listed with 0."""
    _, uid = await add_upstream(kong, http, algorithm="least-connections")
    await add_target(kong, http, uid, "127.0.0.1:10003", weight=100)
    assert any(e["target"] == "127.0.0.1:10003" and e["weight"] == 100 for e in await _targets_all(kong, http, uid))
    _, patched = await admin_call(
        http, "PATCH", f"{kong.admin}/upstreams/{uid}/targets/127.0.0.1:10003", {"weight": 0}, 200
    )
    assert isinstance(patched["id"], str)
    assert (patched["target"], patched["weight"]) == ("127.0.0.1:10003", 0)
    assert any(e["target"] == "127.0.0.1:10003" and e["weight"] == 0 for e in await _targets_all(kong, http, uid))


async def test_add_and_remove_targets_single_target(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("add and remove targets") — 02-least-connections_spec.lua ("Balancer: add and
    remove a single target to a least-connection upstream"): DELETE removes it from /targets/all."""
    _, uid = await add_upstream(kong, http, algorithm="least-connections")
    await add_target(kong, http, uid, "127.0.0.1:10001", weight=100)
    assert any(e["target"] == "127.0.0.1:10001" and e["weight"] == 100 for e in await _targets_all(kong, http, uid))
    await admin_call(http, "DELETE", f"{kong.admin}/upstreams/{uid}/targets/127.0.0.1:10001", None, 204)
    assert not any(e["target"] == "127.0.0.1:10001" for e in await _targets_all(kong, http, uid))
