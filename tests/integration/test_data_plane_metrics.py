"""The data plane's ``GET /metrics``: a real control plane over the session's Redis, a
real in-process data plane configured through the Admin API, real aiohttp backends.

Every proxied request goes over its own connection, so the connection counters are
exact too. Nothing sleeps a fixed time: tests poll ``/metrics`` with a deadline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_plane.server import ControlPlane
from data_plane.server import DataPlane, DataPlaneSettings
from tests.support.backends import FlipBackend, refused_port
from tests.support.control_planes import start_control_plane
from tests.support.http import fresh_get
from tests.support.metrics import Scrape, scrape
from tests.support.polling import wait_for

N = 24
SERVICE, ROUTE, UPSTREAM = "shop", "shop-route", "shop-upstream"
BROKEN, BROKEN_ROUTE = "broken", "broken-route"
ROUTE_LABELS = {"service": SERVICE, "route": ROUTE}
HISTOGRAMS = ("kong_kong_latency_ms", "kong_upstream_latency_ms", "kong_request_latency_ms")


# ------------------------------------------------------------------------ the cluster


@dataclass
class Gateway:
    cp: ControlPlane
    dp: DataPlane
    http: aiohttp.ClientSession
    a: FlipBackend
    b: FlipBackend

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.dp.proxy_port}"

    @property
    def status(self) -> str:
        return f"http://127.0.0.1:{self.dp.status_port}"

    async def scrape(self) -> Scrape:
        return await scrape(self.http, self.status)

    async def dp_status(self) -> dict[str, Any]:
        async with self.http.get(f"{self.status}/status") as response:
            assert response.status == 200
            return dict(await response.json())


async def created(http: aiohttp.ClientSession, cp: ControlPlane, path: str, body: Any) -> Any:
    async with http.post(f"http://127.0.0.1:{cp.admin_port}{path}", json=body) as response:
        answer = await response.json(content_type=None)
        assert response.status == 201, (path, answer)
        return answer


@pytest.fixture
async def gateway(redis_url: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    async with AsyncExitStack() as stack:
        cp = await start_control_plane(redis_url, tmp_path / "cp")
        stack.push_async_callback(cp.stop, 0.5)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        stack.push_async_callback(http.close)
        a, b = FlipBackend("a"), FlipBackend("b")
        await a.start(stack)
        await b.start(stack)

        checks = {"passive": {"unhealthy": {"tcp_failures": 1}}}
        await created(http, cp, "/upstreams", {"name": UPSTREAM, "healthchecks": checks})
        for backend in (a, b):
            await created(http, cp, f"/upstreams/{UPSTREAM}/targets", {"target": backend.key})
        await created(http, cp, "/services", {"name": SERVICE, "host": UPSTREAM, "port": 80})
        await created(http, cp, f"/services/{SERVICE}/routes", {"name": ROUTE, "paths": ["/shop"]})
        # A service nothing listens for: the proxy answers 502 itself, on a route.
        await created(http, cp, "/services", {"name": BROKEN, "host": "127.0.0.1",
                                               "port": refused_port(), "retries": 0})
        await created(http, cp, f"/services/{BROKEN}/routes", {"name": BROKEN_ROUTE, "paths": ["/broken"]})
        await wait_for(lambda: cp.snapshots.current is not None and cp.snapshots.current.version >= 7,
                       message="the CP's snapshot of the seven writes")
        assert cp.snapshots.current is not None
        wanted = cp.snapshots.current.version

        dp = DataPlane(
            DataPlaneSettings(
                control_plane=f"127.0.0.1:{cp.cluster_port}",
                proxy_listen="127.0.0.1:0",
                status_listen="127.0.0.1:0",
                data_dir=tmp_path / "dp",
                hostname="metrics-dp",
                cluster_insecure=True,
            )
        )
        stack.push_async_callback(dp.stop, 1.0)
        await dp.start()
        await wait_for(
            lambda: dp.holder.current is not None and dp.holder.current.version == wanted,
            timeout=15, message=f"the DP to apply version {wanted}",
        )
        yield Gateway(cp, dp, http, a, b)


async def until_metrics(gw: Gateway, check: Any, message: str) -> Scrape:
    """Scrape until ``check(scrape)`` holds (the proxy may not have seen a close yet)."""
    last: list[Scrape] = []

    async def ok() -> Scrape | None:
        s = await gw.scrape()
        last[:] = [s]
        return s if check(s) else None

    try:
        return await wait_for(ok, timeout=10, message=message)
    except AssertionError:
        raise AssertionError(f"{message}; last scrape:\n{last[0].text if last else ''}") from None


# ---------------------------------------------------------------------------- tests


async def test_requests_latencies_and_connections_are_counted_by_route_and_source(
    gateway: Gateway,
) -> None:
    gw = gateway
    answers = [await fresh_get(f"{gw.proxy}/shop/item", timeout=10) for _ in range(N)]
    assert {status for status, _ in answers} == {200}
    assert {name for _, name in answers} == {"a", "b"}, "both targets served"
    status, _ = await fresh_get(f"{gw.proxy}/nowhere", timeout=10)
    assert status == 404
    status, _ = await fresh_get(f"{gw.proxy}/broken/x", timeout=10)
    assert status == 502

    s = await until_metrics(
        gw, lambda s: s.get("kong_nginx_connections_total", state="active") == 0,
        "every client connection to be closed",
    )
    assert s.value("kong_http_requests_total", code="200", source="service", **ROUTE_LABELS) == N
    assert s.value("kong_http_requests_total", service="", route="", code="404", source="kong") == 1
    broken = {"service": BROKEN, "route": BROKEN_ROUTE}
    assert s.value("kong_http_requests_total", code="502", source="kong", **broken) == 1
    assert s.requests_total() == N + 2, "no other series"
    assert s.value("kong_nginx_requests_total") == N + 2
    assert s.value("kong_nginx_connections_total", state="accepted") == N + 2

    for family in HISTOGRAMS:
        assert s.value(f"{family}_count", **ROUTE_LABELS) == N, family
        assert s.value(f"{family}_bucket", le="+Inf", **ROUTE_LABELS) == N, family
        assert s.value(f"{family}_sum", **ROUTE_LABELS) >= 0, family
        buckets = [x for x in s.samples(f"{family}_bucket")
                   if {k: v for k, v in x.labels.items() if k != "le"} == ROUTE_LABELS]
        values = [float(x.value) for x in buckets]
        assert values == sorted(values), f"{family}'s buckets are cumulative"
    # The request's whole time includes the gateway's and the target's part.
    assert s.value("kong_request_latency_ms_sum", **ROUTE_LABELS) >= s.value(
        "kong_upstream_latency_ms_sum", **ROUTE_LABELS
    )
    # The 404 was the proxy's own answer: a request latency, no upstream or gateway one.
    assert s.value("kong_request_latency_ms_count", service="", route="") == 1
    assert s.get("kong_upstream_latency_ms_count", service="", route="") is None
    assert s.get("kong_kong_latency_ms_count", service="", route="") is None
    assert s.value("kong_request_latency_ms_count", **broken) == 1
    assert s.get("kong_upstream_latency_ms_count", **broken) is None

    # Counters only grow: a second batch adds to the same series.
    for _ in range(3):
        assert (await fresh_get(f"{gw.proxy}/shop/more", timeout=10))[0] == 200
    s = await gw.scrape()
    assert s.value("kong_http_requests_total", code="200", source="service", **ROUTE_LABELS) == N + 3
    for family in HISTOGRAMS:
        assert s.value(f"{family}_count", **ROUTE_LABELS) == N + 3, family


async def test_config_and_control_plane_link_are_exported(gateway: Gateway) -> None:
    gw = gateway
    s = await gw.scrape()
    mime, _, params = s.content_type.partition(";")
    assert mime.strip() == "text/plain", s.content_type
    options = dict(p.strip().split("=", 1) for p in params.split(";") if "=" in p)
    assert options.get("version") in ("0.0.4", "1.0.0"), s.content_type
    assert options.get("charset", "").lower() == "utf-8", s.content_type

    status = await gw.dp_status()
    assert status["cluster"]["connected"] is True
    assert s.value("kong_control_plane_connected") == 1
    assert s.value("ferry_config_version") == status["configuration_version"]
    assert status["configuration_version"] == gw.cp.snapshots.current.version  # type: ignore[union-attr]
    assert s.value("ferry_config_hash") == int(status["configuration_hash"][:13], 16)
    assert s.value("ferry_config_last_sync_timestamp_seconds") == pytest.approx(
        status["cluster"]["last_config_at"]
    )

    # A new config version shows up in the gauge.
    await created(gw.http, gw.cp, f"/services/{SERVICE}/routes", {"name": "other", "paths": ["/other"]})

    async def moved_on() -> bool:
        st = await gw.dp_status()
        return bool(st["configuration_version"] > status["configuration_version"])

    await wait_for(moved_on, timeout=15, message="the DP to apply the new route")
    status = await gw.dp_status()
    s = await gw.scrape()
    assert s.value("ferry_config_version") == status["configuration_version"]
    assert s.value("ferry_config_hash") == int(status["configuration_hash"][:13], 16)


async def test_target_health_follows_passive_checks(gateway: Gateway) -> None:
    gw = gateway

    def health(s: Scrape, backend: FlipBackend) -> dict[str, float]:
        return {
            x.labels["state"]: float(x.value)
            for x in s.samples("kong_upstream_target_health")
            if x.labels == {"upstream": UPSTREAM, "target": backend.key, "address": backend.key,
                            "state": x.labels["state"], "subsystem": "http"}
        }

    healthy = {"healthy": 1.0, "unhealthy": 0.0, "healthchecks_off": 0.0, "dns_error": 0.0}
    unhealthy = {"healthy": 0.0, "unhealthy": 1.0, "healthchecks_off": 0.0, "dns_error": 0.0}
    s = await gw.scrape()
    assert health(s, gw.a) == healthy, s.text
    assert health(s, gw.b) == healthy, s.text
    assert len(s.samples("kong_upstream_target_health")) == 8

    sent = 0
    for _ in range(4):
        assert (await fresh_get(f"{gw.proxy}/shop/", timeout=10))[0] == 200
        sent += 1
    await gw.b.stop()

    statuses: list[int] = []

    async def b_ejected() -> bool:
        nonlocal sent
        # Each request may go to b (refused: a TCP failure, retried on a).
        statuses.append((await fresh_get(f"{gw.proxy}/shop/", timeout=10))[0])
        sent += 1
        return health(await gw.scrape(), gw.b) == unhealthy

    await wait_for(b_ejected, timeout=10, message="the passive check to eject b")
    assert set(statuses) == {200}, "the refused tries were retried on a"
    s = await gw.scrape()
    assert health(s, gw.b) == unhealthy, s.text
    assert health(s, gw.a) == healthy, s.text
    # The retried requests count once each, as the target's answer.
    assert s.value("kong_http_requests_total", code="200", source="service", **ROUTE_LABELS) == sent
    assert s.requests_total() == sent
    # The DP's own health endpoint agrees with the metric.
    async with gw.http.get(f"{gw.status}/upstreams/{UPSTREAM}/health") as response:
        body = await response.json()
    by_target = {t["target"]: t["health"] for t in body["data"]}
    assert by_target == {gw.a.key: "HEALTHY", gw.b.key: "UNHEALTHY"}
