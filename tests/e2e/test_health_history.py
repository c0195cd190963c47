"""Health history with real processes: a control plane, two data planes and a real backend
whose health check fails and then recovers; ``GET /upstreams/{u}/health/events`` on the CP
lists what each data plane saw, newest first, with its reason and the data plane's id."""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tests.support.admin import admin
from tests.support.backends import FlipBackend
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

#: Active checks both ways, so that the target goes out and comes back by itself.
ACTIVE = {
    "active": {
        "http_path": "/health",
        "healthy": {"interval": 0.1, "successes": 2},
        "unhealthy": {"interval": 0.1, "http_failures": 2},
    },
}


async def test_a_target_that_fails_and_recovers_leaves_both_transitions_per_data_plane(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        cp = cluster.start_control_plane()
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        a, b = FlipBackend("a"), FlipBackend("b")
        await a.start(stack)
        await b.start(stack)
        await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop", "healthchecks": ACTIVE})
        for backend in (a, b):
            await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": backend.key})
        dps = [cluster.start_data_plane(f"dp{i}") for i in range(2)]
        for dp in dps:
            await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
            await wait_dp_synced(http, cluster, dp.status)

        async def both_listed() -> dict[str, str] | None:
            listed = await admin(http, "GET", f"{cluster.admin}/clustering/data-planes")
            ids = {row["hostname"]: row["id"] for row in listed["data"]}
            return ids if set(ids) == {"dp0", "dp1"} else None

        node_ids = await wait_for(both_listed, message="both DPs listed by the CP")

        async def b_events() -> list[dict[str, Any]]:
            body = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health/events")
            assert body["next"] is None
            return [e for e in body["data"] if e["target"] == b.key]

        async def moved_on_both(to: str) -> list[dict[str, Any]] | None:
            events = await b_events()
            newest: dict[str, dict[str, Any]] = {}
            for event in events:  # newest first: the first one seen per DP is its latest
                newest.setdefault(event["data_plane"]["hostname"], event)
            ok = set(newest) == {"dp0", "dp1"} and all(e["to"] == to for e in newest.values())
            return events if ok else None

        await wait_for(lambda: moved_on_both("HEALTHY"), timeout=20, message="both DPs report b")
        b.health_status = 500
        await wait_for(lambda: moved_on_both("UNHEALTHY"), timeout=20, message="b fails on both DPs")
        b.health_status = 200
        events = await wait_for(lambda: moved_on_both("HEALTHY"), timeout=20, message="b back on both DPs")

        for hostname in ("dp0", "dp1"):
            mine = [e for e in events if e["data_plane"]["hostname"] == hostname]
            assert all(e["data_plane"]["id"] == node_ids[hostname] for e in mine)
            assert all(e["address"] == b.key for e in mine)
            # Newest first: back, out, first seen; nothing else (no repeats).
            assert [(e["from"], e["to"]) for e in mine] == [
                ("UNHEALTHY", "HEALTHY"), ("HEALTHY", "UNHEALTHY"), (None, "HEALTHY"),
            ], mine
            back, out = mine[0], mine[1]
            assert out["reason"].startswith("active:") and "http_failures" in out["reason"], out
            assert "500" in out["reason"], out
            assert back["reason"].startswith("active:"), back
            assert back["time"] >= out["time"] and back["recorded_at"] >= out["recorded_at"]
        # a never changed: one event per DP, when it was first reported.
        body = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health/events?size=1000")
        assert sorted(
            (e["data_plane"]["hostname"], e["from"], e["to"]) for e in body["data"] if e["target"] == a.key
        ) == [("dp0", None, "HEALTHY"), ("dp1", None, "HEALTHY")]
