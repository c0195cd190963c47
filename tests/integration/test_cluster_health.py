"""One cluster-wide health view: real Redis, two real CPs, real gRPC streams, real Admin API.

The data planes here are real gRPC clients that speak the DP side of
``Cluster.Connect`` by hand (Hello, ACK, HealthReport, Ping), so each test
controls exactly what every DP reports.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from control_plane.admin_api import create_admin_app
from control_plane.health import AddressReport, TargetHealthStore
from control_plane.server import ControlPlane
from control_plane.store import EntityStore
from tests.support.admin import AdminClient
from tests.support.control_planes import ControlPlanes, start_control_plane
from tests.support.fake_data_planes import CHECKED, FakeDataPlane, health
from tests.support.polling import wait_for

#: How these tests run a control plane: updates go out at once, reports live 60 s.
HEALTH_SETTINGS: dict[str, Any] = {"merge_window": 0.0, "health_report_ttl": 60.0}


@pytest.fixture
async def cps(control_planes: ControlPlanes) -> list[ControlPlane]:
    """Two control planes over the test's Redis, stopped at teardown."""
    return [await control_planes.start(**HEALTH_SETTINGS), await control_planes.start(**HEALTH_SETTINGS)]


DPFactory = Callable[[ControlPlane, str], Awaitable[FakeDataPlane]]


async def test_data_planes_that_agree_or_disagree_give_healthy_unhealthy_or_mixed(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop", **CHECKED})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    b = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.2:80", "weight": 50})
    c = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.3:80"})
    # One DP on each control plane: the view comes from the shared Redis.
    dp1, dp2 = await dps(cps[0], "dp-a"), await dps(cps[1], "dp-b")
    await dp1.report(True, health(a, "HEALTHY"), health(b, "UNHEALTHY"), health(c, "HEALTHY"))
    await dp2.report(
        True,
        health(a, "HEALTHY"),
        health(b, "UNHEALTHY", reason="active: 3 tcp_failures"),
        health(c, "UNHEALTHY", reason="passive: 5 http_failures"),
    )

    view = await wait_for(
        admin.until("shop", lambda v: len(v["10.0.0.3:80"]["data_planes"]) == 2
                    and len(v["10.0.0.2:80"]["data_planes"]) == 2),
        message="both DPs' reports",
    )
    assert view is not None
    assert {t: item["health"] for t, item in view.items()} == {
        "10.0.0.1:80": "HEALTHY", "10.0.0.2:80": "UNHEALTHY", "10.0.0.3:80": "MIXED",
    }
    mixed = view["10.0.0.3:80"]
    assert mixed["id"] == c["id"] and mixed["weight"] == 100 and mixed["upstream"] == c["upstream"]
    assert mixed["data"]["addresses"] == [
        {"ip": "10.0.0.3", "port": 80, "weight": 100, "health": "MIXED"}
    ]
    # MIXED still carries traffic on some DP: its weight is available.
    assert mixed["data"]["weight"] == {"total": 100, "available": 100, "unavailable": 0}
    assert view["10.0.0.2:80"]["data"]["weight"] == {"total": 50, "available": 0, "unavailable": 50}
    rows = {row["hostname"]: row for row in mixed["data_planes"]}
    assert rows["dp-a"]["id"] == dp1.node_id and rows["dp-a"]["health"] == "HEALTHY"
    assert rows["dp-b"]["id"] == dp2.node_id and rows["dp-b"]["health"] == "UNHEALTHY"
    assert rows["dp-b"]["reason"] == "passive: 5 http_failures"
    assert rows["dp-b"]["addresses"] == [
        {"address": "10.0.0.3:80", "health": "UNHEALTHY", "reason": "passive: 5 http_failures",
         "updated_at": rows["dp-b"]["updated_at"]}
    ]

    # Both CPs answer the same, each with its own node id.
    status, body = await AdminClient(http, cps[1]).call("GET", "/upstreams/shop/health")
    assert status == 200 and body["node_id"] == cps[1].node_id and body["next"] is None
    assert [item["health"] for item in body["data"]] == [
        view[item["target"]]["health"] for item in body["data"]
    ]


async def test_a_full_report_replaces_the_previous_one_and_transitions_update_it(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory,
    redis_client: aioredis.Redis,
) -> None:
    admin = AdminClient(http, cps[0])
    upstream = await admin.make("/upstreams", {"name": "shop", **CHECKED})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    b = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.2:80"})
    dp = await dps(cps[0], "dp-a")

    await dp.report(True, health(a, "UNHEALTHY"), health(b, "UNHEALTHY"))
    await wait_for(admin.until("shop", lambda v: v["10.0.0.2:80"]["health"] == "UNHEALTHY"
                               and v["10.0.0.1:80"]["health"] == "UNHEALTHY"),
                   message="the first full report")

    await dp.report(False, health(b, "HEALTHY", reason="active: 2 successes"))
    view = await wait_for(admin.until("shop", lambda v: v["10.0.0.2:80"]["health"] == "HEALTHY"),
                          message="a transition")
    assert view is not None and view["10.0.0.1:80"]["health"] == "UNHEALTHY"
    assert view["10.0.0.2:80"]["data_planes"][0]["reason"] == "active: 2 successes"

    # A full view that no longer lists B: B falls back to "nothing reported".
    await dp.report(True, health(a, "HEALTHY"))
    view = await wait_for(admin.until("shop", lambda v: v["10.0.0.1:80"]["health"] == "HEALTHY"),
                          message="the second full report")
    assert view is not None
    assert view["10.0.0.2:80"]["health"] == "HEALTHY" and view["10.0.0.2:80"]["data_planes"] == []
    stored = await redis_client.hgetall(f"ferry:health:dp:{dp.node_id}")
    assert set(stored) == {f"{upstream['id']}|10.0.0.1:80|10.0.0.1:80"}


async def test_a_name_target_with_dns_errors_and_addresses(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop", **CHECKED})
    api = await admin.make("/upstreams/shop/targets", {"target": "api.internal:8080", "weight": 30})
    dp1, dp2 = await dps(cps[0], "dp-a"), await dps(cps[0], "dp-b")

    await dp1.report(True, health(api, "DNS_ERROR", address="", reason="dns server error"))
    await dp2.report(True, health(api, "DNS_ERROR", address="", reason="dns server error"))
    view = await wait_for(
        admin.until("shop", lambda v: len(v["api.internal:8080"]["data_planes"]) == 2),
        message="two DNS errors",
    )
    assert view is not None
    item = view["api.internal:8080"]
    assert item["health"] == "DNS_ERROR" and item["data"]["addresses"] == []
    assert {row["health"] for row in item["data_planes"]} == {"DNS_ERROR"}

    # dp-b resolves it now (two A records): the DNS error entry is replaced.
    await dp2.report(
        False,
        health(api, "HEALTHY", address="10.1.0.2:8080"),
        health(api, "UNHEALTHY", address="10.1.0.1:8080"),
    )
    view = await wait_for(
        admin.until("shop", lambda v: len(v["api.internal:8080"]["data"]["addresses"]) == 2),
        message="resolved addresses",
    )
    assert view is not None
    item = view["api.internal:8080"]
    # Usable on dp-b, unusable on dp-a (no address at all): MIXED.
    assert item["health"] == "MIXED"
    assert item["data"]["addresses"] == [
        {"ip": "10.1.0.1", "port": 8080, "weight": 30, "health": "UNHEALTHY"},
        {"ip": "10.1.0.2", "port": 8080, "weight": 30, "health": "HEALTHY"},
    ]
    assert item["data"]["weight"] == {"total": 60, "available": 30, "unavailable": 30}
    rows = {row["hostname"]: row for row in item["data_planes"]}
    assert rows["dp-a"]["health"] == "DNS_ERROR" and rows["dp-a"]["addresses"] == []
    assert rows["dp-b"]["health"] == "HEALTHY"
    assert [a["address"] for a in rows["dp-b"]["addresses"]] == ["10.1.0.1:8080", "10.1.0.2:8080"]


async def test_a_silent_data_plane_stops_counting_after_the_ttl(
    redis_url: str, tmp_path: Path, http: aiohttp.ClientSession, dps: DPFactory,
    redis_client: aioredis.Redis,
) -> None:
    cp = await start_control_plane(redis_url, tmp_path, merge_window=0.0, health_report_ttl=1.0)
    try:
        admin = AdminClient(http, cp)
        await admin.make("/upstreams", {"name": "shop", **CHECKED})
        a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
        dp = await dps(cp, "dp-a")
        await dp.report(True, health(a, "UNHEALTHY"))

        async def counted() -> bool:
            await dp.ping()  # alive while we look, however slow the machine
            view = await admin.health("shop")
            return bool(view["10.0.0.1:80"]["health"] == "UNHEALTHY")

        await wait_for(counted, message="the report")
        await dp.close()
        view = await wait_for(
            admin.until("shop", lambda v: v["10.0.0.1:80"]["data_planes"] == []),
            message="the silent DP's view to expire",
        )
        assert view is not None and view["10.0.0.1:80"]["health"] == "HEALTHY"
        # Reading dropped the expired DP from the index.
        assert await redis_client.smembers("ferry:health:dps") == set()
    finally:
        await cp.stop(grace=0.2)


async def test_pings_keep_a_view_alive_and_restore_one_redis_lost(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory,
    redis_client: aioredis.Redis,
) -> None:
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop", **CHECKED})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    dp = await dps(cps[0], "dp-a")
    key = f"ferry:health:dp:{dp.node_id}"
    await dp.report(True, health(a, "UNHEALTHY"))
    await wait_for(lambda: redis_client.exists(key), message="the DP's hash")

    await redis_client.pexpire(key, 5_000)
    await dp.ping()
    await wait_for(lambda: _pttl_above(redis_client, key, 10_000), message="the ping to refresh the TTL")

    # Redis lost the hash (restarted empty, or it expired between pings): the
    # next ping writes the DP's last full view back.
    await redis_client.delete(key)
    await dp.ping()
    await wait_for(lambda: redis_client.exists(key), message="the view to be rewritten")
    view = await admin.health("shop")
    assert view["10.0.0.1:80"]["health"] == "UNHEALTHY"

    # A disconnect does not drop the view (the DP may reconnect); the TTL does.
    await dp.close()
    await wait_for(lambda: cps[0].overrides.subscriber_count == 0, message="the CP to end the stream")
    view = await admin.health("shop")
    assert view["10.0.0.1:80"]["health"] == "UNHEALTHY"
    assert int(await redis_client.pttl(key)) > 0


async def _pttl_above(client: aioredis.Redis, key: str, limit: int) -> bool:
    return int(await client.pttl(key)) > limit


async def test_checks_off_and_no_report_is_healthchecks_off(
    cps: list[ControlPlane], http: aiohttp.ClientSession
) -> None:
    admin = AdminClient(http, cps[0])
    upstream = await admin.make("/upstreams", {"name": "plain"})
    await admin.make("/upstreams/plain/targets", {"target": "10.0.0.1:80"})
    await admin.make("/upstreams/plain/targets", {"target": "api.internal:8080", "weight": 20})
    await admin.make("/upstreams/plain/targets", {"target": "10.0.0.9:80", "weight": 0})

    view = await admin.health("plain")
    assert {t: item["health"] for t, item in view.items()} == {
        "10.0.0.1:80": "HEALTHCHECKS_OFF",
        "api.internal:8080": "HEALTHCHECKS_OFF",
        "10.0.0.9:80": "HEALTHCHECKS_OFF",
    }
    assert view["10.0.0.1:80"]["data"]["addresses"] == [
        {"ip": "10.0.0.1", "port": 80, "weight": 100, "health": "HEALTHCHECKS_OFF"}
    ]
    assert view["api.internal:8080"]["data"]["addresses"] == []
    assert view["10.0.0.9:80"]["data"]["weight"] == {"total": 0, "available": 0, "unavailable": 0}

    status, body = await admin.call("GET", "/upstreams/plain/health?balancer_health=1")
    assert status == 200
    assert body["node_id"] == cps[0].node_id and body["next"] is None
    data = body["data"]
    assert data["id"] == upstream["id"]
    assert (data["health"], data["balancer_health"]) == ("HEALTHCHECKS_OFF", "HEALTHY")
    assert (data["details"]["healthy_weight"], data["details"]["total_weight"]) == (120, 120)

    # Paging as for other lists.
    status, page = await admin.call("GET", f"/upstreams/{upstream['id']}/health?size=2")
    assert status == 200 and len(page["data"]) == 2 and page["node_id"] == cps[0].node_id
    status, rest = await admin.call("GET", page["next"])
    assert status == 200 and len(rest["data"]) == 1 and rest["next"] is None


async def test_balancer_health_follows_the_threshold_cluster_wide_and_per_data_plane(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    admin = AdminClient(http, cps[0])
    checked = {"healthchecks": {**CHECKED["healthchecks"], "threshold": 50}}
    await admin.make("/upstreams", {"name": "shop", **checked})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    b = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.2:80"})
    dp1 = await dps(cps[0], "dp-a")
    await dp1.report(True, health(a, "UNHEALTHY"), health(b, "HEALTHY"))
    await wait_for(admin.until("shop", lambda v: v["10.0.0.1:80"]["health"] == "UNHEALTHY"),
                   message="dp-a's report")

    status, body = await admin.call("GET", "/upstreams/shop/health?balancer_health=1")
    assert status == 200
    data = body["data"]
    # 50% healthy is not above a threshold of 50 (Kong's rule).
    assert (data["health"], data["balancer_health"]) == ("UNHEALTHY", "UNHEALTHY")
    details = data["details"]
    assert (details["healthy_weight"], details["total_weight"], details["threshold"]) == (100, 200, 50)
    assert details["weight"] == {"total": 200, "available": 100, "unavailable": 100}
    assert details["healthy"] is False

    dp2 = await dps(cps[1], "dp-b")
    await dp2.report(True, health(a, "HEALTHY"), health(b, "HEALTHY"))
    await wait_for(admin.until("shop", lambda v: v["10.0.0.1:80"]["health"] == "MIXED"),
                   message="dp-b's report")
    status, body = await admin.call("GET", "/upstreams/shop/health?balancer_health=1")
    data = body["data"]
    assert (data["health"], data["balancer_health"]) == ("HEALTHY", "HEALTHY")
    assert data["details"]["data_planes"] == {
        dp1.node_id: {"hostname": "dp-a", "balancer_health": "UNHEALTHY",
                      "healthy_weight": 100, "total_weight": 200},
        dp2.node_id: {"hostname": "dp-b", "balancer_health": "HEALTHY",
                      "healthy_weight": 200, "total_weight": 200},
    }


async def test_unknown_upstreams_targets_and_bad_addresses(
    cps: list[ControlPlane], http: aiohttp.ClientSession
) -> None:
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop", **CHECKED})
    await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    not_found = {"message": "Not found"}
    assert await admin.call("GET", "/upstreams/nope/health") == (404, not_found)
    assert await admin.call("PUT", "/upstreams/nope/targets/10.0.0.1:80/healthy") == (404, not_found)
    assert await admin.call("PUT", "/upstreams/shop/targets/10.0.0.2:80/unhealthy") == (404, not_found)
    assert await admin.call("PUT", f"/upstreams/shop/targets/{uuid.uuid4()}/healthy") == (404, not_found)
    assert await admin.call(
        "PUT", "/upstreams/shop/targets/10.0.0.2:80/10.0.0.2:80/healthy"
    ) == (404, not_found)
    status, body = await admin.call("PUT", "/upstreams/shop/targets/10.0.0.1:80/db.internal/healthy")
    assert status == 400
    assert body == {"message": "invalid address 'db.internal': expected an IP address with an optional port"}
    assert await admin.call("GET", "/upstreams/shop/targets/10.0.0.1:80/healthy") == (
        405, {"message": "Method not allowed"}
    )


async def test_an_override_reaches_every_data_plane_of_every_control_plane(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    first, second = AdminClient(http, cps[0]), AdminClient(http, cps[1])
    upstream = await first.make("/upstreams", {"name": "shop", **CHECKED})
    target = await first.make("/upstreams/shop/targets", {"target": "api.internal:8080"})
    dp1, dp2, dp3 = await dps(cps[0], "dp-a"), await dps(cps[1], "dp-b"), await dps(cps[1], "dp-c")

    status, body = await first.call("PUT", "/upstreams/shop/targets/api.internal:8080/unhealthy")
    assert (status, body) == (204, None)
    for dp in (dp1, dp2, dp3):
        override = await dp.next_override()
        assert (override.upstream_id, override.target, override.address, override.healthy) == (
            upstream["id"], "api.internal:8080", "", False
        )
        assert override.time > 0

    # Kong's pre-3.0 POST, by target id, one address, through the other CP.
    path = f"/upstreams/{upstream['id']}/targets/{target['id']}/10.1.0.7:8080/healthy"
    assert await second.call("POST", path) == (204, None)
    # An address without a port takes the target's port.
    assert await second.call("PUT", "/upstreams/shop/targets/api.internal:8080/10.1.0.8/unhealthy") == (
        204, None
    )
    for dp in (dp1, dp2, dp3):
        one, two = await dp.next_override(), await dp.next_override()
        assert (one.target, one.address, one.healthy) == ("api.internal:8080", "10.1.0.7:8080", True)
        assert (two.target, two.address, two.healthy) == ("api.internal:8080", "10.1.0.8:8080", False)


async def test_unreachable_redis_is_503_not_500(
    redis_client: aioredis.Redis, unused_port: Callable[[], int]
) -> None:
    store = EntityStore(redis_client)
    # No retries: redis-py's default backoff would only make the test slow.
    dead = aioredis.Redis(
        host="127.0.0.1", port=unused_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    app = create_admin_app(
        store, _NoDataPlanes(), node_id="n", version="0", health=TargetHealthStore(dead)
    )
    try:
        async with TestClient(TestServer(app)) as client:
            async with client.post("/upstreams", json={"name": "shop", **CHECKED}) as response:
                assert response.status == 201
            async with client.post("/upstreams/shop/targets", json={"target": "10.0.0.1:80"}) as response:
                assert response.status == 201
            for method, path in (
                ("GET", "/upstreams/shop/health"),
                ("GET", "/upstreams/shop/health?balancer_health=1"),
                ("PUT", "/upstreams/shop/targets/10.0.0.1:80/unhealthy"),
            ):
                async with client.request(method, path) as response:
                    body = await response.json()
                    assert response.status == 503, (path, body)
                    assert body["message"].startswith("the database is unreachable")
    finally:
        await dead.aclose()


class _NoDataPlanes:
    async def list_data_planes(self) -> list[dict[str, Any]]:
        return []


async def test_the_openapi_document_lists_the_health_endpoints(
    cps: list[ControlPlane], http: aiohttp.ClientSession
) -> None:
    status, doc = await AdminClient(http, cps[0]).call("GET", "/openapi.json")
    assert status == 200
    paths = doc["paths"]
    assert set(paths["/upstreams/{upstream}/health"]) == {"get", "head"}
    health_params = {p["name"] for p in paths["/upstreams/{upstream}/health"]["get"]["parameters"]}
    assert {"upstream", "balancer_health", "size", "offset"} <= health_params
    for path in (
        "/upstreams/{upstream}/targets/{target}/healthy",
        "/upstreams/{upstream}/targets/{target}/unhealthy",
        "/upstreams/{upstream}/targets/{target}/{address}/healthy",
        "/upstreams/{upstream}/targets/{target}/{address}/unhealthy",
    ):
        assert set(paths[path]) == {"put", "post"}
        assert "204" in paths[path]["put"]["responses"]
        assert "requestBody" not in paths[path]["put"]
    assert "TargetHealth" in doc["components"]["schemas"]


async def test_a_report_lost_to_a_redis_error_is_written_on_the_next_ping(
    redis_client: aioredis.Redis,
) -> None:
    store = TargetHealthStore(redis_client, ttl=60)
    session = store.session("node-1", "dp-a")
    key = store.data_plane_key("node-1")

    def entry(address: str, state: str) -> AddressReport:
        report = AddressReport.normalised(
            upstream_id="u", target_id="t", target="api.internal:80", address=address,
            state=state, reason="", time=1.0, weight=100,
        )
        assert report is not None
        return report

    assert await session.report(True, [entry("10.0.0.1:80", "HEALTHY")])
    # Make Redis refuse the next write (a hash command on a string key).
    await redis_client.set(key, "not a hash")
    assert not await session.report(False, [entry("10.0.0.2:80", "UNHEALTHY")])
    assert await session.touch()
    assert set(await redis_client.hgetall(key)) == {"u|api.internal:80|10.0.0.1:80", "u|api.internal:80|10.0.0.2:80"}
    assert 0 < int(await redis_client.pttl(key)) <= 60_000
    [report] = await store.reports("u")
    assert (report.node_id, report.hostname) == ("node-1", "dp-a")
    assert [(e.address, e.state) for e in report.entries] == [
        ("10.0.0.1:80", "HEALTHY"), ("10.0.0.2:80", "UNHEALTHY")
    ]

    # A DNS error replaces the target's addresses; an address replaces the DNS error.
    assert await session.report(False, [entry("", "DNS_ERROR")])
    assert set(await redis_client.hgetall(key)) == {"u|api.internal:80|"}
    assert await session.report(False, [entry("10.0.0.3:80", "HEALTHY")])
    assert set(await redis_client.hgetall(key)) == {"u|api.internal:80|10.0.0.3:80"}


async def test_health_lists_newest_first_and_balancer_health_carries_kongs_hosts(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    """Issue 13 theme 5: Kong's order (newest first) and ``details.hosts``."""
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop", **CHECKED})
    # Explicit timestamps: two targets created within one clock tick tie.
    old = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80", "weight": 10, "created_at": 1000})
    new = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.2:80", "weight": 20, "created_at": 2000})
    dp = await dps(cps[0], "dp-a")
    await dp.report(True, health(old, "HEALTHY"), health(new, "UNHEALTHY"))
    await wait_for(admin.until("shop", lambda v: v["10.0.0.2:80"]["health"] == "UNHEALTHY"), message="report")
    status, body = await admin.call("GET", "/upstreams/shop/health")
    assert status == 200
    assert [item["target"] for item in body["data"]] == ["10.0.0.2:80", "10.0.0.1:80"]
    status, body = await admin.call("GET", "/upstreams/shop/health?balancer_health=1")
    assert status == 200
    hosts = {h["host"]: h for h in body["data"]["details"]["hosts"]}
    assert hosts["10.0.0.1"] == {
        "host": "10.0.0.1", "port": 80, "dns": "IPv4", "nodeWeight": 10,
        "weight": {"total": 10, "available": 10, "unavailable": 0},
        "addresses": [{"ip": "10.0.0.1", "port": 80, "weight": 10, "healthy": True}],
    }
    assert hosts["10.0.0.2"]["addresses"] == [{"ip": "10.0.0.2", "port": 80, "weight": 20, "healthy": False}]
