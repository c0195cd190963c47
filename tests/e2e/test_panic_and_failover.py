"""Panic mode and failover targets with real processes: a control plane, a data plane,
real backends whose health probes fail or which die for real.

- Panic (``healthchecks.panic_threshold``): with 3 of 5 targets failing their probes
  (40% healthy, below 50%) the data plane balances over all five again, says so in its
  health view, its metrics and the control plane's view; it leaves panic when enough
  come back.
- Failover targets (the target field ``failover``): they get no traffic while a primary
  is usable, take over when the primaries die, and hand back when one recovers; with
  round-robin and with consistent hashing.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from tests.support.admin import admin
from tests.support.backends import FlipBackend
from tests.support.ferry_cluster import Cluster, DataPlaneProc, dp_status, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

#: Probes every 0.1 s, healthy and unhealthy targets alike: one failed probe takes a
#: target out, one good probe brings it back. No passive checks: proxied answers never
#: change health here, so panic traffic to failing targets leaves their state alone.
ACTIVE = {
    "active": {
        "http_path": "/health",
        "healthy": {"interval": 0.1, "successes": 1},
        "unhealthy": {"interval": 0.1, "http_failures": 1, "tcp_failures": 1, "timeouts": 1},
    },
}


async def start_cluster(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    upstream: dict[str, Any],
    targets: list[tuple[FlipBackend, bool]],
) -> DataPlaneProc:
    """A CP with ``upstream`` ("shop") and its targets (``(backend, failover)``), a
    service and route ``/shop``, and one data plane synced to it."""
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop", **upstream})
    for backend, failover in targets:
        created = await admin(
            http, "POST", f"{cluster.admin}/upstreams/shop/targets",
            {"target": backend.key, "failover": failover},
        )
        assert created["failover"] is failover
    await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
    dp = cluster.start_data_plane("dp0")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)
    return dp


async def dp_view(http: aiohttp.ClientSession, dp: DataPlaneProc) -> dict[str, Any]:
    async with http.get(f"{dp.status}/upstreams/shop/health") as resp:
        assert resp.status == 200
        return dict(await resp.json())


def until_states(
    http: aiohttp.ClientSession, dp: DataPlaneProc, wanted: dict[str, str]
) -> Any:
    """A ``wait_for`` predicate: the DP's view once each target in ``wanted`` has its state."""

    async def poll() -> dict[str, Any] | None:
        view = await dp_view(http, dp)
        states = {t["target"]: t["health"] for t in view["data"]}
        return view if all(states.get(k) == v for k, v in wanted.items()) else None

    return poll


async def backends_reached(
    http: aiohttp.ClientSession, dp: DataPlaneProc, n: int, *, keyed: bool = False
) -> dict[str, int]:
    """Send ``n`` requests (each with its own ``x-key`` when ``keyed``); count the
    backends that answered. Every request must succeed."""
    seen: dict[str, int] = {}
    for i in range(n):
        headers = {"x-key": f"user-{i}"} if keyed else {}
        async with http.get(f"{dp.proxy}/shop/x", headers=headers) as resp:
            assert resp.status == 200, await resp.text()
            name = str((await resp.json())["backend"])
        seen[name] = seen.get(name, 0) + 1
    return seen


async def metric(http: aiohttp.ClientSession, dp: DataPlaneProc, line_start: str) -> str | None:
    async with http.get(f"{dp.status}/metrics") as resp:
        text = await resp.text()
    return next((line for line in text.splitlines() if line.startswith(line_start)), None)


async def test_panic_at_40_percent_healthy_balances_over_all_five_targets_and_says_so(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        backends = [FlipBackend(name) for name in "abcde"]
        for backend in backends:
            await backend.start(stack)
        checks = {"healthchecks": {**ACTIVE, "panic_threshold": 50}}
        dp = await start_cluster(cluster, http, checks, [(b, False) for b in backends])
        node_id = (await dp_status(http, dp.status))["node_id"]
        await wait_for(until_states(http, dp, {b.key: "HEALTHY" for b in backends}),
                       message="all five healthy")
        assert (await dp_view(http, dp))["panic"] is False
        assert await metric(http, dp, 'ferry_upstream_panic{upstream="shop"}') == (
            'ferry_upstream_panic{upstream="shop"} 0.0'
        )

        # Two of five fail their probes (60% healthy): no panic, the three take it all.
        for backend in backends[:2]:
            backend.health_status = 500
        await wait_for(until_states(http, dp, {backends[0].key: "UNHEALTHY",
                                               backends[1].key: "UNHEALTHY"}),
                       message="a and b unhealthy")
        assert (await dp_view(http, dp))["panic"] is False
        assert set(await backends_reached(http, dp, 30)) == {"c", "d", "e"}

        # A third fails (40% < 50%): panic, traffic goes to all five again.
        backends[2].health_status = 500

        async def in_panic() -> dict[str, Any] | None:
            view = await dp_view(http, dp)
            return view if view["panic"] else None

        view = await wait_for(in_panic, message="panic mode")
        assert view is not None
        states = {t["target"]: t["health"] for t in view["data"]}
        assert [states[b.key] for b in backends] == ["UNHEALTHY"] * 3 + ["HEALTHY"] * 2
        reached = await backends_reached(http, dp, 50)
        assert set(reached) == set("abcde"), reached
        assert await metric(http, dp, 'ferry_upstream_panic{upstream="shop"}') == (
            'ferry_upstream_panic{upstream="shop"} 1.0'
        )

        async def cp_panic(wanted: list[str]) -> dict[str, Any] | None:
            body = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health")
            panic = body.get("panic")
            return panic if panic == {"threshold": 50, "data_planes": wanted} else None

        await wait_for(lambda: cp_panic([node_id]), message="the control plane's view of the panic")
        balancer = await admin(http, "GET", f"{cluster.admin}/upstreams/shop/health?balancer_health=1")
        assert balancer["data"]["details"]["panic"] is True

        # Two come back (80% healthy): out of panic, the healthy four only.
        for backend in backends[:2]:
            backend.health_status = 200
        await wait_for(until_states(http, dp, {b.key: "HEALTHY" for b in backends[:2]}),
                       message="a and b healthy again")
        assert (await dp_view(http, dp))["panic"] is False
        assert set(await backends_reached(http, dp, 40)) == {"a", "b", "d", "e"}
        assert await metric(http, dp, 'ferry_upstream_panic{upstream="shop"}') == (
            'ferry_upstream_panic{upstream="shop"} 0.0'
        )
        await wait_for(lambda: cp_panic([]), message="the control plane sees the panic end")


@pytest.mark.parametrize("algorithm", ["round-robin", "consistent-hashing"])
async def test_failover_targets_take_over_when_the_primaries_die_and_hand_back(
    cluster: Cluster, http: aiohttp.ClientSession, algorithm: str
) -> None:
    keyed = algorithm == "consistent-hashing"
    upstream: dict[str, Any] = {"algorithm": algorithm, "healthchecks": ACTIVE}
    if keyed:
        upstream |= {"hash_on": "header", "hash_on_header": "x-key"}
    async with AsyncExitStack() as stack:
        a, b, standby = FlipBackend("a"), FlipBackend("b"), FlipBackend("standby")
        for backend in (a, b, standby):
            await backend.start(stack)
        dp = await start_cluster(cluster, http, upstream, [(a, False), (b, False), (standby, True)])
        await wait_for(until_states(http, dp, {x.key: "HEALTHY" for x in (a, b, standby)}),
                       message="all healthy")
        # The DP lists the flag with its targets.
        async with http.get(f"{dp.status}/upstreams/shop/targets/{standby.key}") as resp:
            assert (await resp.json())["failover"] is True

        # Primaries usable: the failover target gets nothing.
        assert set(await backends_reached(http, dp, 40, keyed=keyed)) == {"a", "b"}
        assert standby.requests == 0

        # Both primaries die for real: the failover target takes over.
        port_a = a.port
        await a.stop()
        await b.stop()
        await wait_for(until_states(http, dp, {a.key: "UNHEALTHY", b.key: "UNHEALTHY"}),
                       message="both primaries unhealthy")
        assert await backends_reached(http, dp, 20, keyed=keyed) == {"standby": 20}

        # One primary comes back on its port: the failover target hands back.
        revived = FlipBackend("a")
        await revived.start(stack, port=port_a)
        await wait_for(until_states(http, dp, {a.key: "HEALTHY"}), message="a healthy again")
        before = standby.requests
        assert await backends_reached(http, dp, 20, keyed=keyed) == {"a": 20}
        assert standby.requests == before
