"""The data-plane registry's writes: newest last per DP, queued rather than failed."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from control_plane.data_planes import DataPlaneRegistry, DataPlaneRow


async def test_many_data_planes_syncing_at_once_all_show_their_newest_state(redis_url: str) -> None:
    # A pool smaller than the number of DPs: past it redis-py fails a command
    # instead of waiting, so the registry must queue its writes.
    client = aioredis.Redis.from_url(redis_url, max_connections=4)
    registry = DataPlaneRegistry(client, prefix="regtest", max_concurrent_writes=2)
    rows = [DataPlaneRow(id=f"dp-{n:03d}", hostname=f"h{n}", ip="127.0.0.1", version="0.1.0")
            for n in range(60)]

    async def sync(row: DataPlaneRow) -> list[bool]:
        # The CP marks a DP STALE when it sends a version, SYNCED when the DP's
        # ACK arrives — possibly while the STALE write is still in flight.
        row.sync_status = "STALE"
        stale = asyncio.create_task(registry.save_quietly(row))
        await asyncio.sleep(0)
        row.sync_status = "SYNCED"
        row.config_version = 7
        return list(await asyncio.gather(stale, registry.save_quietly(row)))

    try:
        results = await asyncio.gather(*(sync(row) for row in rows))
        assert all(all(r) for r in results)
        listed = await registry.list_data_planes()
        assert len(listed) == len(rows)
        assert {(r["sync_status"], r["config_version"]) for r in listed} == {("SYNCED", 7)}
        # Nothing is left in flight: the next save writes at once.
        rows[0].sync_status = "NACKED"
        assert await registry.save_quietly(rows[0])
        assert (await registry.list_data_planes())[0]["sync_status"] == "NACKED"
    finally:
        await client.aclose()
