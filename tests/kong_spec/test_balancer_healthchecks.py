"""Kong's ``spec/02-integration/05-proxy/10-balancer/01-healthchecks_spec.lua``, case by
case (``01-ring-balancer_spec.lua`` is its earlier name), except the cases about DNS and
SRV names, which ``test_balancer_dns.py`` translates.

Kong runs the "Ring-balancer" cases for ipv4, ipv6 and ``localhost`` targets and, where
marked, on two Kong nodes; the spec servers here listen on 127.0.0.1, so the ipv4 mode
runs, on the module's one data plane (the control plane shows the cluster's view).
``bu.SLOTS`` is 10; ``bu.healthchecks_config`` (``tests/support/kong.py``) merges a
case's settings into the defaults of Kong's ``balancer_utils``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.admin import admin_call
from tests.support.backends import refused_port
from tests.support.kong import (
    KongCluster,
    add_api,
    add_target,
    add_upstream,
    client_requests,
    healthchecks_config,
    poll_wait_health,
    unique,
    upstream_health,
)
from tests.support.polling import wait_for
from tests.support.tls import self_signed

SPEC = "01-healthchecks_spec.lua"
SLOTS = 10
INTERVAL = 0.05  # bu.HEALTHCHECK_INTERVAL (Kong: 0.01 s)

def active(successes: int = 1, http_failures: int = 1, **extra: Any) -> dict[str, Any]:
    return healthchecks_config({"active": {
        "http_path": "/status",
        "healthy": {"interval": INTERVAL, "successes": successes},
        "unhealthy": {"interval": INTERVAL, "http_failures": http_failures},
        **extra,
    }})


async def post_target_endpoint(kong: KongCluster, http: aiohttp.ClientSession, upstream: str, target: str, endpoint: str) -> None:
    """Kong's ``bu.post_target_endpoint`` (POST, as Kong 2.x; Kong 3.x uses PUT)."""
    await admin_call(http, "POST", f"{kong.admin}/upstreams/{upstream}/targets/{target}/{endpoint}", {}, 204)


async def _two(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, **upstream: Any):  # type: ignore[no-untyped-def]
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http, **upstream)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    return s1, s2, name, uid


# ------------------------------------------------------------------ mTLS


@pytest.mark.skip(reason=f'Kong case "create active health checks -- global certificate" ({SPEC}): '
                  "Ferry has no node-wide client certificate (Kong's client_ssl_cert); upstreams carry theirs")
def test_create_active_health_checks_global_certificate() -> None:
    """Kong: it("create active health checks -- global certificate") — 01-healthchecks_spec.lua."""


async def test_db_create_active_health_checks_upstream_certificate(
    kong: KongCluster, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Kong: it("#db create active health checks -- upstream certificate") —
    01-healthchecks_spec.lua: a certificate (two SNIs) made through the Admin API is the
    upstream's ``client_certificate``; ``https`` probes of a target nothing answers on
    turn it UNHEALTHY (the data plane applied a config with that certificate). Kong's
    target is ``notlocalhost.test:15555``; here a loopback port nothing listens on."""
    pair = self_signed(tmp_path, "client", "ssl-example.com")
    _, certificate = await admin_call(http, "POST", f"{kong.admin}/certificates", {
        "cert": pair.cert.read_text(), "key": pair.key.read_text(),
        "snis": [unique("sni") + ".test", unique("sni") + ".test"],
    }, 201)
    name, uid = await add_upstream(kong, http, healthchecks=healthchecks_config({"active": {
        "type": "https",
        "http_path": "/status",
        "healthy": {"interval": INTERVAL, "successes": 1},
        "unhealthy": {"interval": INTERVAL, "http_failures": 1},
    }}), client_certificate={"id": certificate["id"]})
    target = f"127.0.0.1:{refused_port()}"
    await add_target(kong, http, uid, target)
    health = await upstream_health(kong, http, name)
    assert isinstance(health["data"], list)
    await kong.data_plane()
    await poll_wait_health(kong, http, uid, target, "UNHEALTHY")


# ----------------------------------------------------- Ring-balancer #healthchecks


async def test_flaky_does_not_perform_health_checks_when_disabled_3304(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky does not perform health checks when disabled (#3304)") —
    01-healthchecks_spec.lua: 500s pass through while checks are off; the target stays
    HEALTHCHECKS_OFF. Kong alternates two nodes; here the one data plane."""
    s = await spec_servers()
    name, uid = await add_upstream(kong, http)
    target = f"127.0.0.1:{s.port}"
    await add_target(kong, http, uid, target)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    for healthy, oks, fails, last in ((True, 10, 0, 200), (False, 0, 10, 500), (True, 10, 0, 200)):
        await s.control("/healthy" if healthy else "/unhealthy")
        await poll_wait_health(kong, http, uid, target, "HEALTHCHECKS_OFF")
        assert await client_requests(dp, 10, host) == (oks, fails, last)
    assert (s.ok, s.fail) == (20, 10)


async def test_flaky_propagates_posted_health_info(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky propagates posted health info") — 01-healthchecks_spec.lua: a
    target posted unhealthy shows UNHEALTHY (Kong: on both nodes; Ferry: in the
    cluster view, from the data plane that applied it)."""
    s = await spec_servers()
    _, uid = await add_upstream(kong, http, healthchecks=healthchecks_config({}))
    target = f"127.0.0.1:{s.port}"
    await add_target(kong, http, uid, target)
    await kong.data_plane()
    assert (await upstream_health(kong, http, uid))["data"][0]["health"] == "HEALTHY"
    await post_target_endpoint(kong, http, uid, target, "unhealthy")
    await kong.data_plane()
    await poll_wait_health(kong, http, uid, target, "UNHEALTHY")


async def test_created_via_the_api_are_functional(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("created via the API are functional") — 01-healthchecks_spec.lua."""
    s = await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    assert await client_requests(dp, 1, host) == (1, 0, 200)
    assert (s.ok, s.fail) == (1, 0)


@pytest.mark.skip(reason=f'Kong case "created via the API are functional #grpc" ({SPEC}): '
                  "Ferry does not proxy gRPC yet (HTTP/2 and gRPC are issue 17)")
def test_created_via_the_api_are_functional_grpc() -> None:
    """Kong: it("created via the API are functional #grpc") — 01-healthchecks_spec.lua."""


async def test_properly_set_the_host_header(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("properly set the host header") — 01-healthchecks_spec.lua: host_header
    ``localhost`` reaches a target that only accepts that Host."""
    s = await spec_servers()
    s.expect_host = "localhost"
    name, uid = await add_upstream(kong, http, host_header="localhost")
    await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    assert await client_requests(dp, 5, host) == (5, 0, 200)
    assert (s.ok, s.fail) == (5, 0)


async def test_fail_with_wrong_host_header(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("fail with wrong host header") — 01-healthchecks_spec.lua: host_header
    ``localhost`` at a target that only accepts ``127.0.0.1`` gets 400s."""
    s = await spec_servers()
    s.expect_host = "127.0.0.1"
    name, uid = await add_upstream(kong, http, host_header="localhost")
    await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    host = await add_api(kong, http, name, connect_timeout=100)
    dp = await kong.data_plane()
    assert await client_requests(dp, 5, host) == (0, 5, 400)
    assert (s.ok, s.fail) == (0, 0)


async def test_db_can_have_their_config_partially_updated(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("#db can have their config partially updated") — 01-healthchecks_spec.lua."""
    _, uid = await add_upstream(kong, http)
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{uid}", {"healthchecks": {"active": {
        "http_path": "/status",
        "healthy": {"interval": 0, "successes": 1},
        "unhealthy": {"interval": 0, "http_failures": 1},
    }}}, 200)
    _, upstream = await admin_call(http, "GET", f"{kong.admin}/upstreams/{uid}", None, 200)
    checks = upstream["healthchecks"]
    # Ferry's grpc_service_name (the gRPC probes' service) and unhealthy.other_statuses
    # (Kong #14861) left out: Kong has neither.
    active = {k: v for k, v in checks["active"].items() if k != "grpc_service_name"}
    active["unhealthy"] = {k: v for k, v in active["unhealthy"].items() if k != "other_statuses"}
    assert active == {
        "type": "http", "concurrency": 10, "http_path": "/status", "https_sni": None,
        "https_verify_certificate": True, "timeout": 1, "headers": checks["active"].get("headers"),
        "healthy": {"http_statuses": [200, 302], "interval": 0, "successes": 1},
        "unhealthy": {"http_failures": 1, "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
                      "interval": 0, "tcp_failures": 0, "timeouts": 0},
    }
    assert checks["passive"]["healthy"] == {
        "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                          300, 301, 302, 303, 304, 305, 306, 307, 308], "successes": 0,
    }
    assert {k: v for k, v in checks["passive"]["unhealthy"].items() if k in ("http_failures", "http_statuses", "tcp_failures", "timeouts")} == {
        "http_failures": 0, "http_statuses": [429, 500, 503], "tcp_failures": 0, "timeouts": 0,
    }
    assert checks["passive"]["type"] == "http"
    assert checks["threshold"] == 0


async def test_db_can_be_renamed_without_producing_stale_cache(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#db can be renamed without producing stale cache") — 01-healthchecks_spec.lua:
    two upstreams swap names; each name then routes to the other's target."""
    ups = []
    for _ in range(2):
        s = await spec_servers()
        name, uid = await add_upstream(kong, http, healthchecks=healthchecks_config({}))
        await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
        ups.append((name, uid, s, await add_api(kong, http, name)))
    (name1, uid1, s1, host1), (name2, uid2, s2, host2) = ups
    dp = await kong.data_plane()
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{name2}", {"name": name2 + "-new"}, 200)
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{name1}", {"name": name2}, 200)
    await kong.synced()
    assert await client_requests(dp, 1, host2) == (1, 0, 200)  # reaches upstream 1's server
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{name2}-new", {"name": name1}, 200)
    await kong.synced()
    await client_requests(dp, 1, host1)  # reaches upstream 2's server
    assert ((s1.ok, s1.fail), (s2.ok, s2.fail)) == ((1, 0), (1, 0))


async def test_db_do_not_leave_a_stale_healthchecker_when_renamed(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#db do not leave a stale healthchecker when renamed") —
    01-healthchecks_spec.lua: after a rename and checks turned off, nobody probes."""
    import asyncio

    name, uid = await add_upstream(kong, http, healthchecks=active())
    port_holder = await add_target(kong, http, uid, "127.0.0.1:1")  # replaced below
    await admin_call(http, "DELETE", f"{kong.admin}/upstreams/{uid}/targets/{port_holder['id']}", None, 204)
    s = await spec_servers()
    await s.stop()  # reserve a port, started only once checks are off (as Kong)
    await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    await add_api(kong, http, name)
    await kong.data_plane()
    new_name = f"{uid}-new"
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{uid}", {"name": new_name}, 200)
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{new_name}", {"healthchecks": {"active": {
        "http_path": "/status", "healthy": {"interval": 0, "successes": 1},
        "unhealthy": {"interval": 0, "http_failures": 1}}}}, 200)
    await kong.synced()
    await s.start(s.port)
    await asyncio.sleep(INTERVAL * 3)  # Kong's own wait: probes would have run by now
    assert (s.ok, s.fail) == (0, 0)
    assert s.status_ok + s.status_fail < 2


# ------------------------------------------------------------------ #healthchecks


@pytest.mark.skip(reason=f'Kong case "do not count Kong-generated errors as failures" ({SPEC}): '
                  "needs a plugin (fail-once-auth); Ferry has no plugins")
def test_do_not_count_kong_generated_errors_as_failures() -> None:
    """Kong: it("do not count Kong-generated errors as failures") — 01-healthchecks_spec.lua."""


@pytest.mark.parametrize("nfails", [1, 2, 3])
async def test_flaky_perform_passive_health_checks(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, nfails: int) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky perform passive health checks") — 01-healthchecks_spec.lua (its
    loop over nfails 1..3 as parameters)."""
    s1, s2, name, _ = await _two(kong, http, spec_servers, healthchecks=healthchecks_config(
        {"passive": {"unhealthy": {"http_failures": nfails}}}))
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = SLOTS * 2
    o1, f1, _ = await client_requests(dp, SLOTS, host)
    await s2.control("/unhealthy")
    o2, f2, _ = await client_requests(dp, SLOTS, host)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (requests - requests // 4 - nfails, requests // 4, 0, nfails)
    assert (o1 + o2, f1 + f2) == (requests - nfails, nfails)


async def test_threshold_for_health_checks(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("threshold for health checks") — 01-healthchecks_spec.lua: four addresses
    of weight 25 (Kong: one name with four A records; here four IP targets), thresholds
    0/25/75/99/100, marked unhealthy one by one; ``details.weight`` and the health follow."""
    await kong.data_plane()
    for threshold in (0, 25, 75, 99, 100):
        name, uid = await add_upstream(kong, http, healthchecks=healthchecks_config(
            {"passive": {"unhealthy": {"tcp_failures": 1}}, "threshold": threshold}))
        targets = [f"127.0.0.{i}:80" for i in range(1, 5)]
        for t in targets:
            await add_target(kong, http, uid, t, weight=25)
        await kong.synced()
        for t in targets:
            await post_target_endpoint(kong, http, uid, t, "healthy")
        for down in range(5):
            if down:
                await post_target_endpoint(kong, http, uid, targets[down - 1], "unhealthy")
            available = 100 - 25 * down
            want = {"available": available, "unavailable": 100 - available, "total": 100}

            async def settled(want: dict[str, int] = want, name: str = name) -> Any:
                body = await upstream_health(kong, http, name, "?balancer_health=1")
                return body if body["data"]["details"]["weight"] == want else None

            body = await wait_for(settled, timeout=10, message=f"weights {want}")
            expected = "HEALTHY" if available and threshold < available else "UNHEALTHY"
            assert body["data"]["health"] == expected, (threshold, down)


@pytest.mark.skip(reason=f'Kong case "#stream and http modules do not duplicate active health checks" ({SPEC}): '
                  "Ferry has no stream module (one checker per upstream by construction)")
def test_stream_and_http_modules_do_not_duplicate_active_health_checks() -> None:
    """Kong: stream_it("#stream and http modules do not duplicate active health checks") — 01-healthchecks_spec.lua."""


async def _up_then_down(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, nfails: int, **upstream: Any) -> None:  # type: ignore[no-untyped-def]
    requests = SLOTS * 2
    s1, s2, name, uid = await _two(kong, http, spec_servers, healthchecks=active(http_failures=nfails), **upstream)
    host = await add_api(kong, http, name, connect_timeout=50)
    dp = await kong.data_plane()
    server2_oks = requests // 4
    oks, fails, _ = await client_requests(dp, server2_oks * 2, host)
    await s2.control("/unhealthy")
    await poll_wait_health(kong, http, uid, f"127.0.0.1:{s2.port}", "UNHEALTHY")
    o, f, _ = await client_requests(dp, requests - server2_oks * 2, host)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (requests - server2_oks, server2_oks, 0, 0)
    assert (oks + o, fails + f) == (requests, 0)


@pytest.mark.parametrize("nfails", [1, 2, 3])
async def test_flaky_perform_active_health_checks_up_then_down(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, nfails: int) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky perform active health checks -- up then down") — 01-healthchecks_spec.lua."""
    await _up_then_down(kong, http, spec_servers, nfails)


@pytest.mark.parametrize("nfails", [1, 2, 3])
async def test_perform_active_health_checks_with_upstream_hostname_flaky(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, nfails: int) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("perform active health checks with upstream hostname #flaky") —
    01-healthchecks_spec.lua (host_header ``localhost``)."""
    await _up_then_down(kong, http, spec_servers, nfails, host_header="localhost")


async def _automatic_recovery(kong: KongCluster, http: aiohttp.ClientSession, servers, protocol: str, nchecks: int) -> None:  # type: ignore[no-untyped-def]
    """Kong's "automatic recovery" case body for one ``protocol`` (the checks' ``type``
    and the service's ``protocol``); ``servers`` start targets speaking it."""
    checks = active(successes=nchecks, http_failures=nchecks, type=protocol, https_verify_certificate=False)
    s1, s2, name, uid = await _two(kong, http, servers, healthchecks=checks)
    host = await add_api(kong, http, name, url=f"{protocol}://{name}:80")
    dp = await kong.data_plane()
    t2 = f"127.0.0.1:{s2.port}"
    await poll_wait_health(kong, http, uid, f"127.0.0.1:{s1.port}", "HEALTHY")
    await poll_wait_health(kong, http, uid, t2, "HEALTHY")
    oks, fails, _ = await client_requests(dp, SLOTS, host)
    await s2.control("/unhealthy")
    await poll_wait_health(kong, http, uid, t2, "UNHEALTHY")
    o, f, _ = await client_requests(dp, SLOTS, host)
    await s2.control("/healthy")
    await poll_wait_health(kong, http, uid, t2, "HEALTHY")
    o2, f2, _ = await client_requests(dp, SLOTS, host)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (SLOTS * 2, SLOTS, 0, 0)
    assert (oks + o + o2, fails + f + f2) == (SLOTS * 3, 0)


@pytest.mark.parametrize("nchecks", [1, 3])
async def test_perform_active_health_checks_automatic_recovery_flaky_http(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, nchecks: int) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("perform active health checks -- automatic recovery #flaky #" .. protocol)
    — 01-healthchecks_spec.lua, protocol http."""
    await _automatic_recovery(kong, http, spec_servers, "http", nchecks)


@pytest.mark.parametrize("nchecks", [1, 3])
async def test_perform_active_health_checks_automatic_recovery_flaky_https(kong: KongCluster, http: aiohttp.ClientSession, tls_spec_servers, nchecks: int) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("perform active health checks -- automatic recovery #flaky #" .. protocol)
    — 01-healthchecks_spec.lua, protocol https: the targets serve TLS (self-signed, so
    ``https_verify_certificate: false`` as Kong's case), probed with ``type: https``
    and proxied by a service with ``protocol: https``."""
    await _automatic_recovery(kong, http, tls_spec_servers, "https", nchecks)


@pytest.mark.skip(reason=f'Kong case "#flaky #db perform active health checks -- automatic recovery #stream" ({SPEC}): '
                  "Ferry has no stream (TCP) proxy")
def test_flaky_db_perform_active_health_checks_automatic_recovery_stream() -> None:
    """Kong: it("#flaky #db perform active health checks -- automatic recovery #stream") — 01-healthchecks_spec.lua."""


async def test_perform_active_health_checks_can_detect_before_any_proxy_traffic(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("perform active health checks -- can detect before any proxy traffic") —
    01-healthchecks_spec.lua (Kong restarts; the data plane here probes a new upstream
    before any request)."""
    s1, s2 = await spec_servers(), await spec_servers()
    await s2.control("/unhealthy")
    name, uid = await add_upstream(kong, http, healthchecks=healthchecks_config({"active": {
        "http_path": "/status",
        "healthy": {"interval": INTERVAL, "successes": 1},
        "unhealthy": {"interval": INTERVAL, "http_failures": 2, "tcp_failures": 2},
    }}))
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    await poll_wait_health(kong, http, uid, f"127.0.0.1:{s2.port}", "UNHEALTHY")
    requests = SLOTS * 2
    assert await client_requests(dp, requests, host) == (requests, 0, 200)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (requests, 0, 0, 0)


@pytest.mark.parametrize("nfails", [1, 2, 3])
async def test_flaky_perform_passive_health_checks_manual_recovery(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, nfails: int) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky perform passive health checks -- manual recovery") — 01-healthchecks_spec.lua."""
    s1, s2, name, uid = await _two(kong, http, spec_servers, healthchecks=healthchecks_config(
        {"passive": {"unhealthy": {"http_failures": nfails}}}))
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    oks, fails, _ = await client_requests(dp, SLOTS, host)
    await s2.control("/unhealthy")
    o, f, _ = await client_requests(dp, SLOTS, host)
    await s2.control("/healthy")
    t2 = f"127.0.0.1:{s2.port}"
    await post_target_endpoint(kong, http, uid, t2, "healthy")
    await poll_wait_health(kong, http, uid, t2, "HEALTHY")
    o2, f2, _ = await client_requests(dp, SLOTS, host)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (SLOTS * 2 - nfails, SLOTS, 0, nfails)
    assert (oks + o + o2, fails + f + f2) == (SLOTS * 3 - nfails, nfails)


async def test_perform_passive_health_checks_manual_shutdown(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("perform passive health checks -- manual shutdown") — 01-healthchecks_spec.lua."""
    s1, s2, name, uid = await _two(kong, http, spec_servers, healthchecks=healthchecks_config(
        {"passive": {"unhealthy": {"http_failures": 1}}}))
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    t2 = f"127.0.0.1:{s2.port}"
    oks, fails, _ = await client_requests(dp, SLOTS, host)
    await post_target_endpoint(kong, http, uid, t2, "unhealthy")
    await poll_wait_health(kong, http, uid, t2, "UNHEALTHY")
    o, f, _ = await client_requests(dp, SLOTS, host)
    await post_target_endpoint(kong, http, uid, t2, "healthy")
    await poll_wait_health(kong, http, uid, t2, "HEALTHY")
    o2, f2, _ = await client_requests(dp, SLOTS, host)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (SLOTS * 2, SLOTS, 0, 0)
    assert (oks + o + o2, fails + f + f2) == (SLOTS * 3, 0)


async def test_perform_passive_health_checks_connection_timeouts(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("perform passive health checks -- connection #timeouts") —
    01-healthchecks_spec.lua: one timeout ejects the target; the timed-out request is
    retried on the other one."""
    s1, s2, name, _ = await _two(kong, http, spec_servers, healthchecks=healthchecks_config(
        {"passive": {"unhealthy": {"timeouts": 1}}}))
    host = await add_api(kong, http, name, read_timeout=10, write_timeout=10)
    dp = await kong.data_plane()
    oks, fails, _ = await client_requests(dp, SLOTS, host)
    await s2.control("/timeout")
    o, f, _ = await client_requests(dp, SLOTS, host)
    assert (s1.ok, s2.ok, s1.fail, s2.fail) == (SLOTS * 3 // 2, SLOTS // 2, 0, 1)
    assert (oks + o, fails + f) == (SLOTS * 2, 0)


@pytest.mark.skip(reason=f'Kong case "#flaky perform passive health checks -- #stream connection failure" ({SPEC}): '
                  "Ferry has no stream (TCP) proxy")
def test_flaky_perform_passive_health_checks_stream_connection_failure() -> None:
    """Kong: stream_it("#flaky perform passive health checks -- #stream connection failure") — 01-healthchecks_spec.lua."""


async def test_flaky_db_perform_passive_health_checks_send_timeouts(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky #db perform passive health checks -- send #timeouts") —
    01-healthchecks_spec.lua: a timeout with retries 0 is a 504; a target added after
    serves everything."""
    s1 = await spec_servers()
    name, uid = await add_upstream(kong, http, healthchecks=healthchecks_config(
        {"passive": {"unhealthy": {"http_failures": 0, "timeouts": 1, "tcp_failures": 0}}}))
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    host = await add_api(kong, http, name, read_timeout=10, retries=0)
    dp = await kong.data_plane()
    await s1.control("/timeout")
    assert (await client_requests(dp, 1, host))[2] == 504
    assert (s1.ok, s1.fail) == (0, 1)
    _, routes = await admin_call(http, "GET", f"{kong.admin}/routes?size=1000", None, 200)
    svc = next(r["service"]["id"] for r in routes["data"] if host in (r.get("hosts") or []))
    await admin_call(http, "PATCH", f"{kong.admin}/services/{svc}", {"read_timeout": 60000}, 200)
    s2 = await spec_servers()
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    await kong.synced()
    assert (await client_requests(dp, SLOTS, host))[2] == 200
    assert (s2.ok, s2.fail) == (SLOTS, 0)


# ------------------------------------------------------------- Consistent-hashing


async def test_passive_healthcheck(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("passive healthcheck") — 01-healthchecks_spec.lua (Consistent-hashing):
    the hashed target fails once and is unhealthy in ``details.hosts``; the upstream
    stays HEALTHY. Kong's targets are a name resolving to 127.0.0.1; here the IP."""
    servers = [await spec_servers() for _ in range(3)]
    name, uid = await add_upstream(kong, http, hash_on="header", hash_on_header="hashme",
                                   healthchecks=healthchecks_config({"passive": {"type": "http",
                                       "healthy": {"successes": 1}, "unhealthy": {"http_failures": 1}}}))
    for s in servers:
        await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    await client_requests(dp, 9, host, headers={"hashme": "just a value"})
    totals = [s.total for s in servers]
    assert all(t in (0, 9) for t in totals) and sum(totals) == 9
    body = await upstream_health(kong, http, name, "?balancer_health=1")
    assert body["data"]["health"] == "HEALTHY"
    hit = next(s for s in servers if s.total)
    await hit.stop()  # the others keep running; the hashed one now refuses
    await client_requests(dp, 9, host, headers={"hashme": "just a value"})

    async def ejected() -> Any:
        body = await upstream_health(kong, http, name, "?balancer_health=1")
        hosts = [h for h in body["data"]["details"]["hosts"] if h["port"] == hit.port]
        return body if hosts and hosts[0]["addresses"][0]["healthy"] is False else None

    body = await wait_for(ejected, timeout=10, message="the hashed target unhealthy in details.hosts")
    assert body["data"]["health"] == "HEALTHY"


async def test_flaky_active_healthcheck(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("#flaky active healthcheck") — 01-healthchecks_spec.lua (Consistent-hashing):
    every host healthy in ``details.hosts``, then the one told unhealthy is not; the
    upstream stays HEALTHY. Kong's targets are ``localhost``; here 127.0.0.1."""
    servers = [await spec_servers() for _ in range(3)]
    name, uid = await add_upstream(kong, http, hash_on="header", hash_on_header="hashme",
                                   healthchecks=active())
    for s in servers:
        await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    await add_api(kong, http, name)
    await kong.data_plane()
    for s in servers:
        await poll_wait_health(kong, http, uid, f"127.0.0.1:{s.port}", "HEALTHY")
    all_healthy = await upstream_health(kong, http, name, "?balancer_health=1")
    assert all(h["addresses"][0]["healthy"] for h in all_healthy["data"]["details"]["hosts"])
    assert all_healthy["data"]["health"] == "HEALTHY"
    await servers[2].control("/unhealthy")
    await poll_wait_health(kong, http, uid, f"127.0.0.1:{servers[2].port}", "UNHEALTHY")
    not_so = await upstream_health(kong, http, name, "?balancer_health=1")
    healthy = {h["port"]: h["addresses"][0]["healthy"] for h in not_so["data"]["details"]["hosts"]}
    assert healthy == {servers[0].port: True, servers[1].port: True, servers[2].port: False}
    assert not_so["data"]["health"] == "HEALTHY"
    assert all(s.status_ok > 0 for s in servers)
    assert servers[0].status_fail == servers[1].status_fail == 0
    assert servers[2].status_fail > 0
