"""``ferry data-plane --workers N``: N proxy processes on one port, one cluster link
and one health checker per node, health state shared by every worker.

New connections are spread over the workers by the kernel (SO_REUSEPORT hashes each
connection's addresses), so the tests open a fresh connection per request: thirty of
them all landing on one of two workers has a chance of 2^-29.
"""

from __future__ import annotations

import os
import signal
from contextlib import AsyncExitStack
from typing import Any

import aiohttp

from tests.support.admin import admin
from tests.support.ferry_cluster import (
    Cluster,
    DataPlaneProc,
    dp_status,
    start_two_worker_node,
    wait_dp_synced,
    worker_pids,
)
from tests.support.http import fresh_get, wait_http_ok
from tests.support.polling import wait_for

FRESH = 30


async def node_health(http: aiohttp.ClientSession, dp: DataPlaneProc, target: str) -> str:
    async with http.get(f"{dp.status}/upstreams/shop/health") as response:
        body = await response.json()
    return str(next(t["health"] for t in body["data"] if t["target"] == target))


async def test_two_workers_serve_one_port_and_a_killed_worker_is_replaced(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        dp, a, b = await start_two_worker_node(cluster, http, stack, {})
        status = await dp_status(http, dp.status)
        assert [w["index"] for w in status["workers"]] == [0, 1]
        assert {w["configuration_hash"] for w in status["workers"]} == {status["configuration_hash"]}
        answers = [await fresh_get(f"{dp.proxy}/shop/") for _ in range(FRESH)]
        assert {s for s, _ in answers} == {200}
        assert {name for _, name in answers} == {"a", "b"}

        # A config change reaches every worker.
        await admin(http, "DELETE", f"{cluster.admin}/upstreams/shop/targets/{b.key}")
        await wait_dp_synced(http, cluster, dp.status)
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        assert {await fresh_get(f"{dp.proxy}/shop/") for _ in range(FRESH)} == {(200, "a")}

        pids = [int(p) for p in (await worker_pids(dp))]
        os.kill(pids[0], signal.SIGKILL)

        async def replaced() -> bool:
            now = await worker_pids(dp)
            return len(now) == 2 and pids[0] not in now

        await wait_for(replaced, timeout=20, message="the node to start a new worker")
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        assert {await fresh_get(f"{dp.proxy}/shop/") for _ in range(FRESH)} == {(200, "a")}


async def test_a_passive_failure_seen_by_one_worker_takes_the_target_out_on_every_worker(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    passive = {"passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0}}
    async with AsyncExitStack() as stack:
        dp, a, b = await start_two_worker_node(cluster, http, stack, passive)
        b.status = 500
        # Each worker balances on its own (a, b, a, ...): of three requests, two reach
        # one worker, and its second goes to b.
        statuses = []
        while (500, "b") not in statuses and len(statuses) < 3:
            statuses.append(await fresh_get(f"{dp.proxy}/shop/"))
        assert (500, "b") in statuses, statuses
        b.status = 200

        await wait_for(lambda: _is(node_health(http, dp, b.key), "UNHEALTHY"),
                       message="the node to adopt the worker's verdict")
        # The other worker applies the node's state an instant later: poll for it.
        await wait_for(lambda: only_a(dp), message="no worker to send traffic to b any more")

        # The control plane sees the node's view, and an operator's override reaches
        # every worker through the node.
        async with http.put(f"{cluster.admin}/upstreams/shop/targets/{b.key}/healthy") as resp:
            assert resp.status == 204
        await wait_for(lambda: _is(node_health(http, dp, b.key), "HEALTHY"),
                       message="the override to reach the node")

        async def both_back() -> bool:
            answers = {await fresh_get(f"{dp.proxy}/shop/") for _ in range(FRESH)}
            return answers == {(200, "a"), (200, "b")}

        await wait_for(both_back, message="every worker to send traffic to b again")


async def test_only_the_node_probes_and_its_verdicts_reach_every_worker(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    active = {
        "active": {
            "http_path": "/health",
            "healthy": {"interval": 0.1, "successes": 2},
            "unhealthy": {"interval": 0, "http_failures": 1},
        }
    }
    async with AsyncExitStack() as stack:
        dp, a, b = await start_two_worker_node(cluster, http, stack, active)
        await wait_for(lambda: len(b.probes) >= 3, message="probes of b")
        b.health_status = 500
        await wait_for(lambda: _is(node_health(http, dp, b.key), "UNHEALTHY"),
                       message="the node's probe to take b out")
        await wait_for(lambda: only_a(dp), message="every worker to route around b")
        agents = {p.get("User-Agent", "") for p in a.probes + b.probes}
        assert agents == {"ferry/0.1.0 health-check (node)"}, "the workers never probe"


async def only_a(dp: DataPlaneProc) -> bool:
    """Whether ``FRESH`` requests on fresh connections (so, over every worker) all go to a."""
    return {await fresh_get(f"{dp.proxy}/shop/") for _ in range(FRESH)} == {(200, "a")}


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)
