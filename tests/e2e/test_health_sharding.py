"""Health-check sharding with real processes: one control plane with
``--health-check-replicas 1`` and four data planes. Each target is probed by exactly one
data plane (the backends count probes by the probing node's User-Agent), yet every data
plane routes around a target whose probe fails.
"""

from __future__ import annotations

from collections import Counter
from contextlib import AsyncExitStack

import aiohttp

from tests.support.admin import admin
from tests.support.backends import FlipBackend
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

CHECKS = {
    "active": {
        "http_path": "/health",
        "healthy": {"interval": 0.05, "successes": 1},
        "unhealthy": {"interval": 0.05, "http_failures": 1},
    }
}


def probers(backend: FlipBackend, since: int = 0) -> Counter[str]:
    """Probes per probing node since the ``since``-th probe."""
    return Counter(p.get("User-Agent", "").rsplit("(", 1)[-1].rstrip(")") for p in backend.probes[since:])


async def test_each_target_is_probed_by_one_data_plane_and_all_route_around_a_failing_one(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    cp = cluster.start_control_plane("--health-check-replicas", "1")
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    async with AsyncExitStack() as stack:
        backends = [FlipBackend(name) for name in "abc"]
        for backend in backends:
            await backend.start(stack)
        await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop", "healthchecks": CHECKS})
        for backend in backends:
            await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": backend.key})
        await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
        await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
        dps = [cluster.start_data_plane(f"dp{i}") for i in range(4)]
        for dp in dps:
            await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
            await wait_dp_synced(http, cluster, dp.status)

        # Once every DP holds its assignment, each backend sees one prober only.
        marks = [0, 0, 0]

        async def one_prober_each() -> bool:
            for i, backend in enumerate(backends):
                seen = probers(backend, marks[i])
                if len(seen) != 1 or sum(seen.values()) < 5:
                    if len(seen) > 1:
                        marks[i] = len(backend.probes)  # still settling: look again from here
                    return False
            return True

        await wait_for(one_prober_each, timeout=20, message="one prober per target")
        names = {next(iter(probers(b, marks[i]))) for i, b in enumerate(backends)}
        assert names <= {"dp0", "dp1", "dp2", "dp3"}

        # b's probe fails: only its prober sees it, yet every DP takes it out.
        failing = backends[1]
        failing.health_status = 500
        for dp in dps:

            async def routes_around(dp_proxy: str = dp.proxy) -> bool:
                seen = Counter()
                for _ in range(6):
                    async with http.get(f"{dp_proxy}/shop/x") as resp:
                        seen[(await resp.json())["backend"]] += 1
                return "b" not in seen

            await wait_for(routes_around, message=f"{dp.process.log_path.stem} to route around b")
        row = next(
            t for t in (await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health"))["data"]
            if t["target"] == failing.key
        )
        assert row["health"] == "UNHEALTHY"
        assert len(probers(failing, marks[1])) == 1
