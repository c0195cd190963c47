"""Cluster-wide target health with real processes: one control plane, three data planes,
real backends whose health can be flipped.

Each data plane probes and sees traffic on its own and reports to the control plane;
the CP's ``GET /upstreams/{u}/health`` merges the views (with a per-DP breakdown), and a
manual override on the CP reaches every DP.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tests.support.admin import admin
from tests.support.backends import FlipBackend
from tests.support.ferry_cluster import Cluster, DataPlaneProc, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

ACTIVE = {
    "active": {
        "http_path": "/health",
        # Unhealthy targets are not probed: what takes one out stays until an operator
        # brings it back, so each state below holds still while it is looked at. Two
        # successes, not one: a probe already in flight when a passive failure takes
        # the target out may still answer 200, and must not bring it straight back.
        "healthy": {"interval": 0.1, "successes": 2},
        "unhealthy": {"interval": 0, "http_failures": 1},
    },
    "passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0},
}


async def start(
    cluster: Cluster, http: aiohttp.ClientSession, stack: AsyncExitStack, checks: dict[str, Any]
) -> tuple[list[DataPlaneProc], FlipBackend, FlipBackend, str]:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    a, b = FlipBackend("a"), FlipBackend("b")
    await a.start(stack)
    await b.start(stack)
    upstream = await admin(http, "POST", f"{cluster.admin}/upstreams",
                           {"name": "shop", "healthchecks": checks})
    for backend in (a, b):
        await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": backend.key})
    await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
    dps = [cluster.start_data_plane(f"dp{i}") for i in range(3)]
    for dp in dps:
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        await wait_dp_synced(http, cluster, dp.status)
    return dps, a, b, upstream["id"]


async def cluster_health(http: aiohttp.ClientSession, cluster: Cluster, target: str) -> dict[str, Any]:
    body = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health")
    return next(t for t in body["data"] if t["target"] == target)


async def dp_health(http: aiohttp.ClientSession, dp: DataPlaneProc, target: str) -> str:
    async with http.get(f"{dp.status}/upstreams/shop/health") as resp:
        body = await resp.json()
    return str(next(t["health"] for t in body["data"] if t["target"] == target))


async def test_three_data_planes_report_and_the_control_plane_merges_their_views(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        dps, a, b, _ = await start(cluster, http, stack, ACTIVE)

        async def seen_by_all(state: str) -> dict[str, Any] | None:
            row = await cluster_health(http, cluster, b.key)
            views = {d["hostname"]: d["health"] for d in row["data_planes"]}
            ok = row["health"] == state and views == {"dp0": state, "dp1": state, "dp2": state}
            return row if ok else None

        await wait_for(lambda: seen_by_all("HEALTHY"), message="every DP reports b healthy")

        # Only dp0 sees b fail (passive: one 500 through it): the cluster view is MIXED.
        b.status = 500
        async with http.get(f"{dps[0].proxy}/shop/x") as r1, http.get(f"{dps[0].proxy}/shop/x") as r2:
            assert {r1.status, r2.status} == {200, 500}
        b.status = 200

        async def mixed() -> dict[str, Any] | None:
            row = await cluster_health(http, cluster, b.key)
            return row if row["health"] == "MIXED" else None

        row = await wait_for(mixed, message="the cluster view to be MIXED")
        assert row is not None
        views = {d["hostname"]: d["health"] for d in row["data_planes"]}
        assert views == {"dp0": "UNHEALTHY", "dp1": "HEALTHY", "dp2": "HEALTHY"}
        async with http.put(f"{cluster.admin}/upstreams/shop/targets/{b.key}/healthy") as resp:
            assert resp.status == 204
        await wait_for(lambda: seen_by_all("HEALTHY"), message="the operator brings b back on dp0")

        # b's probe fails everywhere: every DP takes it out and the CP converges.
        b.health_status = 500
        row = await wait_for(lambda: seen_by_all("UNHEALTHY"), message="b unhealthy everywhere")
        assert row is not None and all(
            d["reason"] and "http_failures" in d["reason"] for d in row["data_planes"]
        )
        for dp in dps:
            for _ in range(4):
                async with http.get(f"{dp.proxy}/shop/x") as resp:
                    assert (await resp.json())["backend"] == "a"


async def test_a_manual_override_on_the_control_plane_reaches_every_data_plane(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    # Passive checks only: nothing but the operator changes health here.
    passive = {"passive": {"unhealthy": {"tcp_failures": 3}, "base_ejection_time": 0}}
    async with AsyncExitStack() as stack:
        dps, a, b, upstream_id = await start(cluster, http, stack, passive)
        async with http.put(f"{cluster.admin}/upstreams/shop/targets/{b.key}/unhealthy") as resp:
            assert resp.status == 204

        async def everywhere(state: str) -> bool:
            return all([await dp_health(http, dp, b.key) == state for dp in dps])

        await wait_for(lambda: everywhere("UNHEALTHY"), message="every DP holds b down")
        for dp in dps:
            for _ in range(4):
                async with http.get(f"{dp.proxy}/shop/x") as resp:
                    assert (await resp.json())["backend"] == "a"

        async def merged() -> bool:
            row = await cluster_health(http, cluster, b.key)
            return bool(row["health"] == "UNHEALTHY" and len(row["data_planes"]) == 3)

        await wait_for(merged, message="the CP to show b UNHEALTHY on all three")

        async with http.put(f"{cluster.admin}/upstreams/{upstream_id}/targets/{b.key}/healthy") as resp:
            assert resp.status == 204
        await wait_for(lambda: everywhere("HEALTHY"), message="every DP lets b back")
