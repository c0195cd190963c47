"""Kong's ``spec/02-integration/05-proxy/10-balancer/05-recreate-request_spec.lua``,
case by case.

Kong's two targets are ``upstream.example.com:10001`` (answers after 700 s: times out)
and ``:10002`` (echoes its Host); the name resolves to 127.0.0.1. Here the targets are
127.0.0.1 itself (names and DNS are the DNS spec files' business), so the Host a retry
sends is ``127.0.0.1:<port>``: what matters is that the retry's Host names the target
it reached, not the one that timed out.
"""

from __future__ import annotations

import aiohttp

from tests.support.admin import admin_call
from tests.support.kong import KongCluster, add_target, add_upstream, unique
from tests.support.polling import wait_for

SPEC = "05-recreate-request_spec.lua"


async def _setup(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, **route: object):  # type: ignore[no-untyped-def]
    stuck, echo = await spec_servers(), await spec_servers()
    stuck.timeouts = 10**6  # every request hangs past read_timeout
    name, uid = await add_upstream(kong, http)
    await add_target(kong, http, uid, f"127.0.0.1:{stuck.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{echo.port}")
    _, svc = await admin_call(
        http, "POST", f"{kong.admin}/services",
        {"name": unique("svc"), "url": f"http://{name}", "read_timeout": 500}, 201,
    )
    await admin_call(http, "POST", f"{kong.admin}/routes", {"service": {"id": svc["id"]}, **route}, 201)
    return stuck, echo


async def test_balancer_retry_updates_host_header_in_request_buffer(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("balancer retry updates Host header in request buffer") —
    05-recreate-request_spec.lua: the answer comes from the second target, with its Host."""
    host = f"{unique('h')}.test"
    stuck, echo = await _setup(kong, http, spec_servers, hosts=[host], paths=["/"])
    dp = await kong.data_plane()

    async def answered() -> bool:
        async with http.get(f"{dp.proxy}/recreate_test", headers={"Host": host}) as response:
            await response.read()
            return response.status == 200

    await wait_for(answered, timeout=10, message="an answer from the second target")
    assert echo.hosts[-1] == f"127.0.0.1:{echo.port}"


async def test_balancer_retry_doesnt_update_host_if_preserve_host_is_true(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("balancer retry doesn't update Host if preserve_host is true") —
    05-recreate-request_spec.lua."""
    host = f"{unique('h')}.test"
    stuck, echo = await _setup(kong, http, spec_servers, hosts=[host], paths=["/"], preserve_host=True)
    dp = await kong.data_plane()
    async with http.get(f"{dp.proxy}/recreate_test", headers={"Host": host}) as response:
        await response.read()
        assert response.status == 200
    assert echo.hosts[-1] == host
