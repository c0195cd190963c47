"""``GET /upstreams/{u}/health/events``: real Redis, two real CPs, data planes speaking
``Cluster.Connect`` by hand (tests/support/fake_data_planes.py), the real Admin API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from control_plane.admin_api import create_admin_app
from control_plane.admin_requests import encode_offset
from control_plane.admin_tokens import add_token
from control_plane.health import TargetHealthStore
from control_plane.server import ControlPlane
from control_plane.store import EntityStore
from tests.support.admin import AdminClient
from tests.support.control_planes import ControlPlanes, start_control_plane
from tests.support.fake_data_planes import CHECKED, FakeDataPlane, health
from tests.support.polling import wait_for

HEALTH_SETTINGS: dict[str, Any] = {"merge_window": 0.0, "health_report_ttl": 60.0}

DPFactory = Callable[[ControlPlane, str], Awaitable[FakeDataPlane]]


@pytest.fixture
async def cps(control_planes: ControlPlanes) -> list[ControlPlane]:
    """Two control planes over the test's Redis, stopped at teardown."""
    return [await control_planes.start(**HEALTH_SETTINGS), await control_planes.start(**HEALTH_SETTINGS)]


async def events_of(admin: AdminClient, upstream: str, count: int) -> list[dict[str, Any]]:
    """The upstream's history once it holds ``count`` events (reports are stored
    asynchronously by the CP)."""

    async def ready() -> list[dict[str, Any]] | None:
        status, body = await admin.call("GET", f"/upstreams/{upstream}/health/events")
        assert status == 200, body
        return body["data"] if len(body["data"]) >= count else None

    return await wait_for(ready, message=f"{count} health events of {upstream}")


async def test_transitions_from_data_planes_on_two_cps_are_listed_newest_first_with_reasons(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    first, second = AdminClient(http, cps[0]), AdminClient(http, cps[1])
    shop = await first.make("/upstreams", {"name": "shop", **CHECKED})
    a = await first.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    b = await first.make("/upstreams/shop/targets", {"target": "10.0.0.2:80"})
    dp1, dp2 = await dps(cps[0], "dp-a"), await dps(cps[1], "dp-b")
    await dp1.report(True, health(a, "HEALTHY"), health(b, "HEALTHY"))
    await events_of(first, "shop", 2)
    await dp2.report(True, health(a, "HEALTHY"))
    await events_of(first, "shop", 3)
    failing = "active: 2 http_failures (last status 500)"
    await dp1.report(False, health(b, "UNHEALTHY", reason=failing))
    await events_of(first, "shop", 4)
    # The same report again changes nothing; the way back is a transition.
    await dp1.report(False, health(b, "UNHEALTHY", reason=failing))
    await dp1.report(False, health(b, "HEALTHY", reason="active: 2 successes"))
    events = await events_of(first, "shop", 5)

    assert [(e["data_plane"]["hostname"], e["target"], e["from"], e["to"], e["reason"]) for e in events] == [
        ("dp-a", "10.0.0.2:80", "UNHEALTHY", "HEALTHY", "active: 2 successes"),
        ("dp-a", "10.0.0.2:80", "HEALTHY", "UNHEALTHY", failing),
        ("dp-b", "10.0.0.1:80", None, "HEALTHY", "healthy"),
        ("dp-a", "10.0.0.2:80", None, "HEALTHY", "healthy"),
        ("dp-a", "10.0.0.1:80", None, "HEALTHY", "healthy"),
    ]
    newest = events[0]
    assert newest["data_plane"] == {"id": dp1.node_id, "hostname": "dp-a"}
    assert (newest["target_id"], newest["address"], newest["weight"]) == (b["id"], "10.0.0.2:80", 100)
    assert newest["time"] > 0 and newest["recorded_at"] >= events[-1]["recorded_at"]
    # Every CP shows the same history (it is in the shared Redis), by name or by id.
    status, by_id = await second.call("GET", f"/upstreams/{shop['id']}/health/events")
    assert status == 200 and by_id == {"data": events, "next": None}


async def test_the_history_pages_with_kongs_size_and_offset(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory
) -> None:
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop", **CHECKED})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    dp = await dps(cps[0], "dp-a")
    states = ["HEALTHY", "UNHEALTHY"] * 3 + ["HEALTHY"]
    for i, state in enumerate(states):
        await dp.report(False, health(a, state, reason=f"step {i}"))
    await events_of(admin, "shop", len(states))

    reasons: list[str] = []
    path: str | None = "/upstreams/shop/health/events?size=3"
    pages = 0
    while path is not None:
        status, body = await admin.call("GET", path)
        assert status == 200, body
        reasons += [e["reason"] for e in body["data"]]
        path, pages = body["next"], pages + 1
        if path is not None:
            assert path.startswith("/upstreams/shop/health/events?offset=")
            assert body["offset"] and quote(body["offset"]) in path
            path += "&size=3"
    assert pages == 3
    assert reasons == [f"step {i}" for i in reversed(range(len(states)))]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("size=0", {"code": 9, "name": "invalid size", "message": "size must be an integer between 1 and 1000"}),
        ("size=1001", {"code": 9, "name": "invalid size", "message": "size must be an integer between 1 and 1000"}),
        ("size=many", {"code": 9, "name": "invalid size", "message": "size must be a number"}),
        ("offset=%25%25", {"code": 7, "name": "invalid offset",
                           "message": "'%%' is not a valid offset: bad base64 encoding"}),
        (f"offset={encode_offset('not-a-stream-id')}", {
            "code": 7, "name": "invalid offset",
            "message": f"'{encode_offset('not-a-stream-id')}' is not a valid offset: bad offset"}),
    ],
)
async def test_bad_paging_arguments_get_kongs_400(
    cps: list[ControlPlane], http: aiohttp.ClientSession, query: str, expected: dict[str, Any]
) -> None:
    admin = AdminClient(http, cps[0])
    await admin.make("/upstreams", {"name": "shop"})
    assert await admin.call("GET", f"/upstreams/shop/health/events?{query}") == (400, expected)


async def test_an_unknown_upstream_is_404_and_a_deleted_upstream_takes_its_history_along(
    cps: list[ControlPlane], http: aiohttp.ClientSession, dps: DPFactory, redis_client: aioredis.Redis
) -> None:
    admin = AdminClient(http, cps[0])
    assert await admin.call("GET", "/upstreams/nope/health/events") == (404, {"message": "Not found"})
    shop = await admin.make("/upstreams", {"name": "shop", **CHECKED})
    a = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.1:80"})
    dp = await dps(cps[0], "dp-a")
    await dp.report(True, health(a, "UNHEALTHY"))
    await events_of(admin, "shop", 1)
    key = f"ferry:health:events:{shop['id']}"
    assert await redis_client.exists(key) == 1
    status, _ = await admin.call("DELETE", "/upstreams/shop")
    assert status == 204
    assert await redis_client.exists(key) == 0
    assert await admin.call("GET", "/upstreams/shop/health/events") == (404, {"message": "Not found"})
    # The same through a declarative configuration that leaves the upstream out.
    again = await admin.make("/upstreams", {"name": "shop", **CHECKED})
    b = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.2:80"})
    await dp.report(False, health(b, "UNHEALTHY"))
    await events_of(admin, "shop", 1)
    status, _ = await admin.call("POST", "/config", {"_format_version": "3.0"})
    assert status == 201
    assert await redis_client.exists(f"ferry:health:events:{again['id']}") == 0


async def test_the_openapi_document_lists_the_events_path(
    cps: list[ControlPlane], http: aiohttp.ClientSession
) -> None:
    status, doc = await AdminClient(http, cps[0]).call("GET", "/openapi.json")
    assert status == 200
    path = doc["paths"]["/upstreams/{upstream}/health/events"]
    assert set(path) == {"get", "head"}
    names = {p["name"] for p in path["get"]["parameters"]}
    assert {"upstream", "size", "offset"} <= names
    schema = path["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"data", "next"} <= set(schema["properties"])
    assert {"from", "to", "reason", "data_plane", "time"} <= set(schema["properties"]["data"]["items"]["properties"])


@pytest.fixture
async def guarded(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[AdminClient, str, str]]:
    """A CP that asks for admin tokens: its Admin API, an admin and a read-only token."""
    tokens = tmp_path / "tokens.yaml"
    admin_token = add_token(tokens, "ops", "admin")
    reader_token = add_token(tokens, "grafana", "read-only")
    async with AsyncExitStack() as stack:
        cp = await start_control_plane(redis_url, tmp_path / "cp", admin_tokens=tokens)
        stack.push_async_callback(cp.stop, 0.5)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        stack.push_async_callback(http.close)
        yield AdminClient(http, cp), admin_token, reader_token


async def test_a_read_only_token_reads_the_history_and_no_token_gets_401(
    guarded: tuple[AdminClient, str, str],
) -> None:
    admin, admin_token, reader_token = guarded
    status, _ = await admin.call("POST", "/upstreams", {"name": "shop"}, headers={"Ferry-Admin-Token": admin_token})
    assert status == 201
    path = "/upstreams/shop/health/events"
    assert await admin.call("GET", path, headers={"Ferry-Admin-Token": reader_token}) == (
        200, {"data": [], "next": None}
    )
    status, _ = await admin.call("GET", path)
    assert status == 401


class _NoDataPlanes:
    async def list_data_planes(self) -> list[dict[str, Any]]:
        return []


async def test_an_unreachable_redis_is_503(redis_client: aioredis.Redis, unused_port: Callable[[], int]) -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=unused_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    app = create_admin_app(
        EntityStore(redis_client), _NoDataPlanes(), node_id="n", version="0", health=TargetHealthStore(dead)
    )
    try:
        async with TestClient(TestServer(app)) as client:
            async with client.post("/upstreams", json={"name": "shop"}) as response:
                assert response.status == 201
            async with client.get("/upstreams/shop/health/events") as response:
                body = await response.json()
                assert response.status == 503, body
                assert body["message"].startswith("the database is unreachable")
    finally:
        await dead.aclose()
