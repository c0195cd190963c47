"""Panic mode in the cluster-wide health view: real Redis, a real CP, real gRPC streams
from data planes played by hand (``HealthReport.panic_upstreams``), real Admin API."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from control_plane.health import AddressReport, TargetHealthStore
from control_plane.server import ControlPlane
from tests.support.admin import AdminClient, AppClient, call
from tests.support.control_planes import ControlPlanes
from tests.support.fake_data_planes import CHECKED, FakeDataPlane, health
from tests.support.polling import wait_for

DPFactory = Callable[[ControlPlane, str], Awaitable[FakeDataPlane]]
SETTINGS: dict[str, Any] = {"merge_window": 0.0, "health_report_ttl": 60.0}


async def test_the_health_view_lists_the_data_planes_in_panic_until_they_leave_it(
    control_planes: ControlPlanes, http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    cp = await control_planes.start(**SETTINGS)
    admin = AdminClient(http, cp)
    checks = {"healthchecks": {**CHECKED["healthchecks"], "panic_threshold": 50}}
    upstream = await admin.make("/upstreams", {"name": "shop", **checks})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    b = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.2:80", "failover": True})
    assert a["failover"] is False and b["failover"] is True
    dp1, dp2 = await dps(cp, "dp-a"), await dps(cp, "dp-b")
    await dp1.report(True, health(a, "UNHEALTHY"), health(b, "UNHEALTHY"), panic=(upstream["id"],))
    await dp2.report(True, health(a, "HEALTHY"), health(b, "HEALTHY"))

    async def panic_of() -> dict[str, Any] | None:
        status, body = await admin.call("GET", "/upstreams/shop/health")
        assert status == 200
        return body.get("panic")

    view = await wait_for(
        lambda: _when(panic_of(), lambda p: p == {"threshold": 50, "data_planes": [dp1.node_id]}),
        message="dp-a in panic",
    )
    assert view is not None
    status, body = await admin.call("GET", "/upstreams/shop/health?balancer_health=1")
    assert status == 200
    details = body["data"]["details"]
    assert details["panic_threshold"] == 50 and details["panic"] is True
    assert {n: d["panic"] for n, d in details["data_planes"].items()} == {
        dp1.node_id: True, dp2.node_id: False,
    }

    # A later report (a transition) without the upstream in its set: out of panic.
    await dp1.report(False, health(a, "HEALTHY", reason="active: 2 successes"))
    await wait_for(
        lambda: _when(panic_of(), lambda p: p == {"threshold": 50, "data_planes": []}),
        message="dp-a out of panic",
    )


async def test_without_a_panic_threshold_the_views_keep_kongs_shape(
    control_planes: ControlPlanes, http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    cp = await control_planes.start(**SETTINGS)
    admin = AdminClient(http, cp)
    upstream = await admin.make("/upstreams", {"name": "shop", **CHECKED})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    dp = await dps(cp, "dp-a")
    # Even a DP claiming panic shows nothing while the upstream has no threshold.
    await dp.report(True, health(a, "UNHEALTHY"), panic=(upstream["id"],))
    await wait_for(
        admin.until("shop", lambda v: v["10.0.0.1:80"]["health"] == "UNHEALTHY"), message="report"
    )
    status, body = await admin.call("GET", "/upstreams/shop/health")
    assert status == 200 and "panic" not in body
    status, body = await admin.call("GET", "/upstreams/shop/health?balancer_health=1")
    assert "panic" not in body["data"]["details"] and "panic_threshold" not in body["data"]["details"]


async def _when(value: Awaitable[Any], test: Callable[[Any], bool]) -> Any:
    got = await value
    return got if test(got) else None


async def test_the_new_fields_show_in_the_defaults_and_in_openapi(admin: AppClient) -> None:
    status, upstream = await call(admin, "POST", "/upstreams", {"name": "shop"})
    assert status == 201 and upstream["healthchecks"]["panic_threshold"] == 0
    status, target = await call(admin, "POST", "/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    assert status == 201 and target["failover"] is False
    status, target = await call(
        admin, "PUT", "/upstreams/shop/targets/10.0.0.1:80", {"failover": True}
    )
    assert status == 200 and target["failover"] is True and target["weight"] == 100
    status, doc = await call(admin, "GET", "/openapi.json")
    assert status == 200
    schemas = doc["components"]["schemas"]
    assert schemas["Target"]["properties"]["failover"]["type"] == "boolean"
    panic = schemas["Healthchecks"]["properties"]["panic_threshold"]
    assert (panic["minimum"], panic["maximum"]) == (0, 100)
    assert "panic" in schemas["UpstreamHealthList"]["properties"]


async def test_panic_flags_lost_to_a_redis_error_are_written_again(
    redis_client: aioredis.Redis,
) -> None:
    store = TargetHealthStore(redis_client, ttl=60)
    session = store.session("node-1", "dp-a")
    key = store.data_plane_key("node-1")
    entry = AddressReport.normalised(
        upstream_id="u", target_id="t", target="10.0.0.1:80", address="10.0.0.1:80",
        state="UNHEALTHY", reason="", time=1.0, weight=100,
    )
    assert entry is not None
    assert await session.report(True, [entry], frozenset({"u"}))
    [report] = await store.reports("u")
    assert report.panic_upstreams == {"u"}
    # Redis refuses the write that takes "u" out of panic; the next ping rewrites it.
    await redis_client.set(key, "not a hash")
    assert not await session.report(False, [], frozenset())
    assert await session.touch()
    [report] = await store.reports("u")
    assert report.panic_upstreams == frozenset() and len(report.entries) == 1
    # Into panic again by a partial report, then out: the flag field stays, false.
    assert await session.report(False, [], frozenset({"u"}))
    assert (await store.reports("u"))[0].panic_upstreams == {"u"}
    assert await session.report(False, [], frozenset())
    assert (await store.reports("u"))[0].panic_upstreams == frozenset()
    # The panic field is no target: selecting targets never returns it.
    selected = await store.target_entries({"node-1": ["u|10.0.0.1:80"]})
    assert [e.address for e in selected["node-1"][1]] == ["10.0.0.1:80"]
