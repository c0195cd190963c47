"""Kong's ``spec/02-integration/05-proxy/10-balancer/04-round-robin_spec.lua``, case by case.

Kong runs each case once per ``worker_consistency`` (strict, eventual) and database
strategy; Ferry has one data plane applying the control plane's snapshots, so each
case runs once. ``bu.SLOTS`` is 10: "go round the balancer twice" is 20 requests.
"""

from __future__ import annotations

import aiohttp
import pytest

from tests.support.admin import admin_call
from tests.support.kong import KongCluster, add_api, add_target, add_upstream, client_requests
from tests.support.polling import wait_for

SLOTS = 10
SPEC = "04-round-robin_spec.lua"


async def _update_target(kong: KongCluster, http: aiohttp.ClientSession, upstream: str, target: str, **fields: object) -> None:
    """Kong's ``bu.update_target``."""
    await admin_call(http, "PATCH", f"{kong.admin}/upstreams/{upstream}/targets/{target}", fields, 200)


async def test_over_multiple_targets(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("over multiple targets") — 04-round-robin_spec.lua."""
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = SLOTS * 2
    oks, _, _ = await client_requests(dp, requests, host)
    assert oks == requests
    assert (s1.ok, s2.ok) == (requests // 2, requests // 2)


async def test_adding_a_target(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("adding a target") — 04-round-robin_spec.lua: 50/50, then 40/40/20."""
    s1, s2, s3 = await spec_servers(), await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}", weight=10)
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}", weight=10)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = SLOTS * 2
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.total, s2.total) == (requests // 2, requests // 2)

    await add_target(kong, http, uid, f"127.0.0.1:{s3.port}", weight=5)
    await kong.synced()
    for s in (s1, s2):
        s.ok = s.fail = 0
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.total, s2.total, s3.total) == (requests * 4 // 10, requests * 4 // 10, requests * 2 // 10)


async def test_removing_a_target_db(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("removing a target #db") — 04-round-robin_spec.lua: weight 0 takes a
    target out of the rotation."""
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    t2 = await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = SLOTS * 2
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.ok, s2.ok) == (requests // 2, requests // 2)

    await _update_target(kong, http, uid, t2["id"], weight=0)
    await kong.synced()
    s1.ok = s2.ok = 0
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.total, s2.total) == (requests, 0)


async def test_modifying_target_weight_db(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("modifying target weight #db") — 04-round-robin_spec.lua: 50/50, then
    weights 10/15 give 40/60."""
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = SLOTS * 2
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.total, s2.total) == (requests // 2, requests // 2)

    await _update_target(kong, http, uid, f"127.0.0.1:{s2.port}", weight=15)
    await kong.synced()
    s1.ok = s2.ok = 0
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.total, s2.total) == (requests * 4 // 10, requests * 6 // 10)


async def test_failure_due_to_targets_all_0_weight_db(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("failure due to targets all 0 weight #db") — 04-round-robin_spec.lua."""
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = SLOTS * 2
    assert (await client_requests(dp, requests, host))[0] == requests
    assert (s1.total, s2.total) == (requests // 2, requests // 2)

    await _update_target(kong, http, uid, f"127.0.0.1:{s1.port}", weight=0)
    await _update_target(kong, http, uid, f"127.0.0.1:{s2.port}", weight=0)
    await kong.synced()

    async def unavailable() -> bool:
        return (await client_requests(dp, 1, host))[2] == 503

    await wait_for(unavailable, timeout=10, message="503 once every weight is 0")


async def test_failure_due_to_targets_all_0_weight_off(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("failure due to targets all 0 weight #off") — 04-round-robin_spec.lua:
    targets created with weight 0 (Kong's declarative mode; Ferry's snapshot is one)."""
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}", weight=0)
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}", weight=0)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    assert (await client_requests(dp, 1, host))[2] == 503
    assert s1.total + s2.total == 0


async def test_failure_due_to_no_targets(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("failure due to no targets") — 04-round-robin_spec.lua ("Balancing with
    no targets")."""
    name, _ = await add_upstream(kong, http)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    assert (await client_requests(dp, 1, host))[2] == 503


@pytest.mark.parametrize("mode", ["ipv4"])
async def test_removing_and_adding_the_same_target_db(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("removing and adding the same target #db #" .. mode) — 04-round-robin_spec.lua.

    Kong loops over ipv4, ipv6 and hostname ``localhost``; the spec servers here listen
    on 127.0.0.1, so the ipv4 mode runs (IPv6 targets and names are exercised by the
    health-check and DNS spec files).
    """
    s = await spec_servers()
    name, uid = await add_upstream(kong, http)
    target = f"127.0.0.1:{s.port}"
    await add_target(kong, http, uid, target, weight=100)
    host = await add_api(kong, http, name)
    dp = await kong.data_plane()
    requests = 20
    assert (await client_requests(dp, requests, host))[0] == requests
    assert s.total == requests

    await _update_target(kong, http, uid, target, weight=0)
    await kong.synced()
    s.ok = 0
    assert (await client_requests(dp, requests, host))[0] == 0
    assert s.total == 0

    await _update_target(kong, http, uid, target, weight=100)
    await kong.synced()
    assert (await client_requests(dp, requests, host))[0] == requests
    assert s.total == requests
