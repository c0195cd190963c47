"""A route regex the CP accepts is one every DP compiles: real CP, Redis and DP.

Issue 12, case 9: ``{"paths": ["~/\\u0041bc"]}`` was accepted (the CP compiled it as
text) and every DP NACKed it (the router compiles bytes), then NACKed every later
change too. Both planes now compile with :mod:`ferry_shared.route_regex`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from control_plane.server import ControlPlane
from data_plane.server import DataPlane, DataPlaneSettings
from tests.support.admin import AdminClient
from tests.support.control_planes import start_control_plane
from tests.support.polling import wait_for


class Cluster(AdminClient):
    """A control plane, its one data plane, and the control plane's Admin API."""

    def __init__(self, cp: ControlPlane, dp: DataPlane, http: aiohttp.ClientSession) -> None:
        super().__init__(http, cp)
        self.cp = cp
        self.dp = dp

    async def dp_status(self) -> dict[str, Any]:
        async with self.http.get(f"http://127.0.0.1:{self.dp.status_port}/status") as response:
            assert response.status == 200
            body: dict[str, Any] = await response.json()
            return body

    async def synced(self) -> bool:
        """The DP serves the config of every acknowledged write, and the CP says SYNCED."""
        status, body = await self.call("GET", "/status")
        assert status == 200
        current = self.cp.snapshots.current
        held = self.dp.holder.current
        if current is None or current.version < body["configuration_version"]:
            return False
        if held is None or held.hash != current.hash:
            return False
        status, body = await self.call("GET", "/clustering/data-planes")
        assert status == 200
        return [row["sync_status"] for row in body["data"]] == ["SYNCED"]


@pytest.fixture
async def cluster(redis_url: str, tmp_path: Any, stack: AsyncExitStack) -> AsyncIterator[Cluster]:
    cp = await start_control_plane(redis_url, tmp_path / "cp")
    stack.push_async_callback(cp.stop, 0.2)
    http = await stack.enter_async_context(aiohttp.ClientSession())
    dp = DataPlane(
        DataPlaneSettings(
            control_plane=f"127.0.0.1:{cp.cluster_port}",
            proxy_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            data_dir=tmp_path / "dp",
            hostname="regex-dp",
            cluster_insecure=True,
        )
    )
    stack.push_async_callback(dp.stop, 1.0)
    await dp.start()
    yield Cluster(cp, dp, http)


async def test_a_route_regex_a_data_plane_cannot_compile_is_a_400_and_the_fleet_stays_synced(
    cluster: Cluster,
) -> None:
    status, _ = await cluster.call("POST", "/services", {"name": "s", "host": "example.com"})
    assert status == 201
    status, _ = await cluster.call("POST", "/services/s/routes", {"name": "ok", "paths": ["/ok"]})
    assert status == 201
    await wait_for(cluster.synced, message="the DP to apply the first routes")

    # The exact body of the report: a JSON string holding backslash, "u0041bc".
    status, body = await cluster.call(
        "POST", "/services/s/routes", raw=b'{"paths": ["~/\\\\u0041bc"]}'
    )
    reason = "invalid regex: '/\\u0041bc' (PCRE returned: bad escape \\u at position 1)"
    assert (status, body) == (400, {
        "code": 2,
        "name": "schema violation",
        "message": f"schema violation (paths.1: {reason})",
        "fields": {"paths": [reason]},
    })
    status, body = await cluster.call(
        "POST", "/services/s/routes", {"headers": {"x-version": ["~*\\u0041"]}}
    )
    assert status == 400
    assert body["fields"] == {
        "headers": "invalid regex: '\\u0041' (PCRE returned: bad escape \\u at position 0)"
    }

    # A later valid change applies: nothing poisoned the config.
    status, _ = await cluster.call(
        "POST", "/services/s/routes",
        {"name": "items", "paths": ["~/items/(?<id>\\d+)$", "~/\\x41bc"],
         "headers": {"x-version": ["~*^v\\d$"]}},
    )
    assert status == 201
    await wait_for(cluster.synced, message="the DP to apply the valid change")
    held = cluster.dp.holder.current
    assert held is not None
    found = held.router.match(b"GET", b"example.com", b"/items/42", {b"x-version": b"V2"})
    assert found is not None and found.route.name == "items" and found.captures == {"id": "42"}
    status_body = await cluster.dp_status()
    assert status_body["cluster"]["last_nack"] is None


async def test_values_the_admin_api_accepts_that_every_data_plane_once_nacked(
    cluster: Cluster,
) -> None:
    """Found while comparing what each plane checks: each was a 201, then a NACK."""
    for path, body in [
        ("/services", {"name": "v6", "host": "[::1]", "port": 9}),
        ("/services/v6/routes", {"paths": ["/big"], "regex_priority": 2**70}),
        ("/upstreams", {"name": "u"}),
        ("/upstreams/u/targets", {"target": "a.example:0"}),
    ]:
        status, answer = await cluster.call("POST", path, body)
        assert status == 201, (path, answer)
    await wait_for(cluster.synced, message="the DP to apply every change")
    assert (await cluster.dp_status())["cluster"]["last_nack"] is None
