"""Health checks through the real proxy: real aiohttp backends whose health endpoint
can be flipped, real probes (HTTP and TCP) from the health supervisor, passive outcomes
from proxied traffic, the threshold and the half-open breaker.

Nothing here asserts a duration: tests poll for a state with a deadline and check the
counters (how many probes or requests it took) instead.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
from aiohttp import web

from data_plane.cluster_client import ClusterLinkState
from data_plane.health.supervisor import HealthSupervisor
from data_plane.node_identity import NodeIdentity
from data_plane.status_api import create_status_app
from tests.support.backends import FlipBackend, TlsBackend, refused_port
from tests.support.polling import wait_for
from tests.support.proxy import HealthGateway, client, upstream_config

#: Each request of a test's client session is bounded to 10 s.
TIMEOUT = aiohttp.ClientTimeout(total=10)


async def backends_seen(http: aiohttp.ClientSession, url: str, n: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    for _ in range(n):
        async with http.get(f"{url}/x") as resp:
            body = await resp.json()
            seen[body.get("backend", f"status {resp.status}")] += 1
    return seen


ACTIVE = {
    "active": {
        "http_path": "/health",
        "timeout": 2,
        "healthy": {"interval": 0.05, "successes": 2},
        "unhealthy": {"interval": 0.05, "http_failures": 2, "tcp_failures": 2, "timeouts": 2},
    }
}


async def test_a_target_failing_its_probe_is_taken_out_after_the_threshold_and_returns(
    stack: AsyncExitStack,
) -> None:
    a, b = FlipBackend("a"), FlipBackend("b")
    await a.start(stack)
    await b.start(stack)
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key, b.key], ACTIVE))
    http = await client(stack, timeout=TIMEOUT)
    await wait_for(lambda: len(b.probes) >= 2, message="b probed")
    assert await backends_seen(http, gw.url, 10) == {"a": 5, "b": 5}

    b.health_status = 500
    await wait_for(lambda: gw.state(b.key) == "UNHEALTHY", message="b unhealthy")
    # Exactly the configured number of failed probes took it out.
    assert gw.reason(b.key) == "active: 2 http_failures (last status 500)"
    assert await backends_seen(http, gw.url, 10) == {"a": 10}

    b.health_status = 200
    await wait_for(lambda: gw.state(b.key) == "HEALTHY", message="b healthy again")
    assert gw.reason(b.key) == "active: 2 successes"
    assert (await backends_seen(http, gw.url, 10))["b"] >= 4


async def test_a_probe_status_in_neither_list_is_ignored_unless_other_statuses_counts_it(
    stack: AsyncExitStack,
) -> None:
    """Kong #14861: a target answering its probe with 426 keeps its health forever in
    Kong; ``unhealthy.other_statuses: true`` counts such answers as HTTP failures."""
    kong_like, counted = FlipBackend("kong-like"), FlipBackend("counted")
    for backend in (kong_like, counted):
        backend.health_status = 426
        await backend.start(stack)
    gw = HealthGateway()
    await gw.start(stack, upstream_config([kong_like.key], ACTIVE))
    other = HealthGateway()
    counting = {"active": {**ACTIVE["active"], "unhealthy": {
        **ACTIVE["active"]["unhealthy"], "other_statuses": True}}}
    await other.start(stack, upstream_config([counted.key], counting))
    await wait_for(lambda: other.state(counted.key) == "UNHEALTHY", message="426s counted as failures")
    assert other.reason(counted.key) == "active: 2 http_failures (last status 426)"
    # The same answers, probed at least as often, changed nothing without the flag.
    await wait_for(lambda: len(kong_like.probes) >= len(counted.probes), message="as many probes")
    assert gw.state(kong_like.key) == "HEALTHY"


async def test_probes_send_kongs_request(stack: AsyncExitStack) -> None:
    a = FlipBackend("a")
    await a.start(stack)
    checks = {"active": {**ACTIVE["active"], "headers": {"X-Probe": ["ferry"]}}}
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key], checks, host_header="api.internal"))
    await wait_for(lambda: len(a.probes) >= 1, message="a probe")
    probe = a.probes[0]
    assert probe["Host"] == "api.internal"
    assert probe["X-Probe"] == "ferry"
    assert probe["Connection"] == "close"


async def test_tcp_probes_take_out_a_target_that_refuses_connections(stack: AsyncExitStack) -> None:
    a = FlipBackend("a")
    await a.start(stack)
    dead = f"127.0.0.1:{refused_port()}"
    checks = {"active": {**ACTIVE["active"], "type": "tcp"}}
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key, dead], checks))
    await wait_for(lambda: gw.state(dead) == "UNHEALTHY", message="dead target unhealthy")
    assert gw.reason(dead) == "active: 2 tcp_failures"
    assert gw.state(a.key) == "HEALTHY"


async def test_a_killed_target_costs_clients_no_failed_idempotent_request(stack: AsyncExitStack) -> None:
    backends = [FlipBackend(n) for n in "abc"]
    for b in backends:
        await b.start(stack)
    passive = {"passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1}}}
    gw = HealthGateway()
    await gw.start(stack, upstream_config([b.key for b in backends], passive))
    http = await client(stack, timeout=TIMEOUT)
    statuses: Counter[int] = Counter()
    killed = asyncio.Event()

    async def one_client() -> None:
        for i in range(60):
            if i == 20 and not killed.is_set():
                killed.set()
                await backends[1].stop()
            async with http.get(f"{gw.url}/x") as resp:
                statuses[resp.status] += 1
                await resp.read()

    await asyncio.gather(*(one_client() for _ in range(5)))
    assert statuses == {200: 300}
    # The killed target was ejected after its first refused connection.
    assert gw.state(backends[1].key) == "UNHEALTHY"
    assert gw.reason(backends[1].key) == "passive: 1 tcp_failures"


async def test_the_half_open_breaker_recovers_a_passive_only_target(stack: AsyncExitStack) -> None:
    a, b = FlipBackend("a"), FlipBackend("b")
    await a.start(stack)
    await b.start(stack)
    passive = {
        "passive": {"unhealthy": {"http_failures": 2}, "base_ejection_time": 0.5, "max_ejection_time": 5}
    }
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key, b.key], passive))
    http = await client(stack, timeout=TIMEOUT)
    b.status = 500
    for _ in range(20):
        await backends_seen(http, gw.url, 1)
        if gw.state(b.key) == "UNHEALTHY":
            break
    assert gw.state(b.key) == "UNHEALTHY" and b.requests == 2

    # Still failing: each half-open trial lets exactly one request through.
    requests_at_ejection = b.requests
    await wait_for(lambda: _trial_open(gw), message="first half-open trial")
    await backends_seen(http, gw.url, 6)
    assert b.requests == requests_at_ejection + 1
    assert gw.state(b.key) == "UNHEALTHY"

    b.status = 200

    async def recovered() -> bool:
        await backends_seen(http, gw.url, 2)
        return gw.state(b.key) == "HEALTHY"

    await wait_for(recovered, timeout=10, message="b back through the half-open trial")
    assert gw.reason(b.key) == "passive: half-open request succeeded"
    assert (await backends_seen(http, gw.url, 10))["b"] == 5


def _trial_open(gw: HealthGateway) -> bool:
    cfg = gw.holder.current
    assert cfg is not None and cfg.upstreams["u1"].health is not None
    return bool(cfg.upstreams["u1"].health.trial_waiting)


async def test_the_threshold_answers_503_when_too_little_weight_is_healthy(stack: AsyncExitStack) -> None:
    a = FlipBackend("a")
    await a.start(stack)
    dead = f"127.0.0.1:{refused_port()}"
    checks = {"threshold": 75, "passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}}
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key, dead], checks))
    http = await client(stack, timeout=TIMEOUT)
    for _ in range(4):  # the dead target is tried (and retried on a) until it is ejected
        async with http.get(f"{gw.url}/x") as resp:
            if resp.status == 503:
                break
    async with http.get(f"{gw.url}/x") as resp:
        assert resp.status == 503
        assert await resp.json() == {"message": "failure to get a peer from the ring-balancer"}
    gw.health.override("u1", dead, "", True)  # an operator brings it back
    async with http.get(f"{gw.url}/x") as resp:
        assert resp.status == 200


async def test_health_survives_a_config_change_that_keeps_the_target(stack: AsyncExitStack) -> None:
    a, b, c = FlipBackend("a"), FlipBackend("b"), FlipBackend("c")
    for x in (a, b, c):
        await x.start(stack)
    gw = HealthGateway()
    first = upstream_config([a.key, b.key], ACTIVE)
    await gw.start(stack, first)
    b.health_status = 500
    await wait_for(lambda: gw.state(b.key) == "UNHEALTHY", message="b unhealthy")
    gw.apply(upstream_config([a.key, b.key, c.key], ACTIVE, version=2, previous=first))
    assert gw.state(b.key) == "UNHEALTHY"
    http = await client(stack, timeout=TIMEOUT)
    assert set(await backends_seen(http, gw.url, 12)) == {"a", "c"}
    # The new version's checker probes: b comes back when it recovers.
    b.health_status = 200
    await wait_for(lambda: gw.state(b.key) == "HEALTHY", message="b healthy")


async def test_a_sharded_data_plane_probes_only_its_targets_and_takes_verdicts_for_the_rest(
    stack: AsyncExitStack,
) -> None:
    a, b = FlipBackend("a"), FlipBackend("b")
    await a.start(stack)
    await b.start(stack)
    gw = HealthGateway()
    gw.health = HealthSupervisor("dp-test")
    await gw.start(stack, upstream_config([a.key, b.key], ACTIVE))
    await wait_for(lambda: a.probes and b.probes, message="both probed before sharding")
    assert a.probes[0]["User-Agent"].endswith("health-check (dp-test)")

    gw.health.assign(True, [f"u1|{a.key}"])  # the CP: this DP probes a only
    probes_of_b = len(b.probes)
    seen_a = len(a.probes)
    await wait_for(lambda: len(a.probes) >= seen_a + 3, message="a probed on")
    # At most the probe that was under way when the assignment came reached b.
    assert len(b.probes) <= probes_of_b + 1

    # b's prober (another DP) found it unhealthy: this DP routes around it.
    applied = gw.health.verdicts([("u1", b.key, b.key, "UNHEALTHY", "active (dp2): 2 http_failures")])
    assert applied == 1 and gw.state(b.key) == "UNHEALTHY"
    assert gw.reason(b.key) == "active (dp2): 2 http_failures"
    http = await client(stack, timeout=TIMEOUT)
    assert await backends_seen(http, gw.url, 6) == {"a": 6}
    # A verdict for a target this DP probes itself is ignored.
    assert gw.health.verdicts([("u1", a.key, a.key, "UNHEALTHY", "active (dp2): x")]) == 0
    assert gw.state(a.key) == "HEALTHY"
    gw.health.verdicts([("u1", b.key, b.key, "HEALTHY", "active (dp2): 2 successes")])
    assert gw.state(b.key) == "HEALTHY"

    gw.health.assign(False, [])  # no sharding any more: b is probed again
    await wait_for(lambda: len(b.probes) > probes_of_b + 1, message="b probed again")


async def test_https_probes_send_the_sni_and_verify_the_certificate_when_asked(
    stack: AsyncExitStack,
) -> None:
    tls = TlsBackend()  # a self-signed certificate no system CA trusts
    await tls.start(stack)
    target = f"127.0.0.1:{tls.port}"

    def checks(verify: bool) -> dict[str, Any]:
        return {"active": {**ACTIVE["active"], "type": "https", "https_sni": "probe.example",
                           "https_verify_certificate": verify}}

    unverified = HealthGateway()
    await unverified.start(stack, upstream_config([target], checks(False)))
    await wait_for(lambda: len(tls.hosts) >= 3, message="https probes answered")
    assert unverified.state(target) == "HEALTHY"
    assert "probe.example" in tls.server_names
    await unverified.health.stop()

    verified = HealthGateway()
    await verified.start(stack, upstream_config([target], checks(True)))
    await wait_for(lambda: verified.state(target) == "UNHEALTHY", message="untrusted certificate")
    assert verified.reason(target) == "active: 2 tcp_failures"


async def test_the_status_api_shows_this_data_planes_view_in_kongs_shape(stack: AsyncExitStack) -> None:
    a = FlipBackend("a")
    await a.start(stack)
    dead = f"127.0.0.1:{refused_port()}"
    checks = {"threshold": 75, "passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}}
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key, dead], checks))
    app = create_status_app(
        gw.holder, ClusterLinkState(), NodeIdentity(node_id="n1", hostname="dp", version="0.1.0"),
        control_plane="127.0.0.1:8005", health=gw.health,
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    status = f"http://127.0.0.1:{runner.addresses[0][1]}"
    http = await client(stack, timeout=TIMEOUT)
    gw.health.override("u1", dead, "", False)

    async with http.get(f"{status}/upstreams/backends/health") as resp:
        body = await resp.json()
    assert resp.status == 200 and body["node_id"] == "n1" and body["next"] is None
    by_target = {t["target"]: t for t in body["data"]}
    assert by_target[a.key]["health"] == "HEALTHY"
    assert by_target[dead]["health"] == "UNHEALTHY" and by_target[dead]["id"] == "t1"
    assert by_target[dead]["data"]["addresses"][0]["reason"] == "manual"
    assert by_target[dead]["data"]["weight"] == {"total": 100, "available": 0, "unavailable": 100}

    async with http.get(f"{status}/upstreams/u1/health?balancer_health=1") as resp:
        balancer = (await resp.json())["data"]
    assert balancer["balancer_health"] == "UNHEALTHY" and balancer["details"]["threshold"] == 75
    async with http.get(f"{status}/upstreams/nope/health") as resp:
        assert resp.status == 404 and await resp.json() == {"message": "Not found"}
