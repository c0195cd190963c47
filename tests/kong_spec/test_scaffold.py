"""The spec fixtures themselves: one control plane per module, a data plane on demand."""

from __future__ import annotations

import aiohttp

from tests.support.kong import KongCluster, unique


async def test_the_module_control_plane_answers_and_a_data_plane_syncs(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    name = unique("u")
    async with http.post(f"{kong.admin}/upstreams", json={"name": name}) as response:
        assert response.status == 201
    dp = await kong.data_plane()
    async with http.get(f"{dp.status}/status") as response:
        assert (await response.json())["configuration_version"] >= 1
