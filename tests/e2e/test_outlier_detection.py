"""Outlier detection and ``max_ejection_percent`` with real processes: a control plane,
a data plane, and real backends that fail a share of their requests (issue 18 items 1
and 2). Configured through the Admin API; the data plane decides from its own traffic
and the control plane's health view shows its reasons.

Nothing here asserts a duration: each test drives traffic until the data plane's view
reaches a state (with a deadline), then checks who was ejected and where traffic goes.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tests.support.admin import admin
from tests.support.backends import FlipBackend
from tests.support.ferry_cluster import Cluster, DataPlaneProc, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for


async def start(
    cluster: Cluster, http: aiohttp.ClientSession, stack: AsyncExitStack, n: int, checks: dict[str, Any]
) -> tuple[DataPlaneProc, list[FlipBackend]]:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    backends = [FlipBackend(f"b{i}") for i in range(n)]
    for backend in backends:
        await backend.start(stack)
    await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop", "healthchecks": checks})
    for backend in backends:
        await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": backend.key})
    await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
    dp = cluster.start_data_plane("dp0")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)
    return dp, backends


async def burst(http: aiohttp.ClientSession, dp: DataPlaneProc, n: int) -> Counter[tuple[str, int]]:
    """``n`` requests, five at a time: ``(backend, status)`` counts."""
    seen: Counter[tuple[str, int]] = Counter()

    async def one() -> None:
        async with http.get(f"{dp.proxy}/shop/x") as resp:
            body = await resp.json(content_type=None)
            seen[(str(body.get("backend", "ferry")), resp.status)] += 1

    for _ in range(n // 5):
        await asyncio.gather(*(one() for _ in range(5)))
    return seen


async def dp_view(http: aiohttp.ClientSession, dp: DataPlaneProc) -> dict[str, tuple[str, str]]:
    """target -> (health, reason of its one address) as the data plane sees it."""
    async with http.get(f"{dp.status}/upstreams/shop/health") as resp:
        body = await resp.json()
    return {
        t["target"]: (t["health"], t["data"]["addresses"][0]["reason"] or "") for t in body["data"]
    }


async def test_a_target_answering_30_percent_500s_is_ejected_by_outlier_detection_and_the_rest_stay(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    checks = {
        "passive": {
            # Passive counters stay 0: only outlier detection ejects. The ejection
            # outlasts the test (no half-open trial while it looks).
            "base_ejection_time": 600,
            "outlier_detection": {
                "interval": 0.5,
                # Envoy's stdev factor of 1.9: with five targets a lone deviant is
                # sqrt(4) = 2 standard deviations below the mean.
                "success_rate": {"minimum_hosts": 5, "request_volume": 10},
                "failure_percentage": None,
            },
        }
    }
    async with AsyncExitStack() as stack:
        dp, backends = await start(cluster, http, stack, 5, checks)
        bad = backends[4]
        bad.failure_percent = 30

        async def ejected() -> dict[str, tuple[str, str]] | None:
            await burst(http, dp, 25)
            view = await dp_view(http, dp)
            return view if view[bad.key][0] == "UNHEALTHY" else None

        view = await wait_for(ejected, timeout=30, message="the failing target ejected")
        assert view is not None
        health, reason = view[bad.key]
        assert re.fullmatch(r"outlier: success rate \d+(\.\d)?% < \d+(\.\d)?%", reason), reason
        assert {t: h for t, (h, _) in view.items() if t != bad.key} == {
            b.key: "HEALTHY" for b in backends[:4]
        }
        assert bad.failures > 0

        # Traffic now goes to the four others only, and it all succeeds.
        before = bad.requests
        seen = await burst(http, dp, 40)
        assert bad.requests == before
        assert {status for _, status in seen} == {200}
        assert {name for name, _ in seen} == {b.name for b in backends[:4]}

        # The control plane's health view shows the data plane's reason.
        async def cp_reason() -> str | None:
            body = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health")
            row = next(t for t in body["data"] if t["target"] == bad.key)
            reasons = [d["reason"] for d in row["data_planes"] if d["health"] == "UNHEALTHY"]
            return reasons[0] if reasons else None

        assert await wait_for(cp_reason, message="the CP shows the ejection") == reason


async def test_eight_of_ten_targets_failing_with_max_ejection_percent_50_eject_at_most_five(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    checks = {
        "max_ejection_percent": 50,
        "passive": {"unhealthy": {"http_failures": 2}, "base_ejection_time": 600},
    }
    async with AsyncExitStack() as stack:
        dp, backends = await start(cluster, http, stack, 10, checks)
        failing, good = backends[:8], backends[8:]
        for backend in failing:
            backend.status = 500

        async def five_out() -> dict[str, tuple[str, str]] | None:
            await burst(http, dp, 20)
            view = await dp_view(http, dp)
            return view if sum(h == "UNHEALTHY" for h, _ in view.values()) >= 5 else None

        view = await wait_for(five_out, timeout=30, message="five targets ejected")
        assert view is not None
        out = {t for t, (h, _) in view.items() if h == "UNHEALTHY"}
        assert len(out) == 5 and out <= {b.key for b in failing}

        # More failures change nothing: the cap holds, and traffic keeps flowing to the
        # five targets left (the two good ones answer 200).
        seen = await burst(http, dp, 50)
        view = await dp_view(http, dp)
        assert {t for t, (h, _) in view.items() if h == "UNHEALTHY"} == out
        in_service = {b.name for b in backends if b.key not in out}
        assert {name for name, _ in seen} == in_service
        assert all(seen[(b.name, 200)] > 0 for b in good)
        kept_in = [b for b in failing if b.key not in out]
        assert all(
            view[b.key][1].endswith("not ejected: max_ejection_percent 50 reached") for b in kept_in
        )
        async with http.get(f"{dp.status}/metrics") as resp:
            metrics = await resp.text()
        refused = re.search(r'^ferry_upstream_ejections_refused_total\{upstream="shop"\} (\S+)$', metrics, re.M)
        assert refused is not None and float(refused.group(1)) >= len(kept_in)
