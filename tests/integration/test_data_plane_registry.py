"""The data-plane registry's writes: coalesced, newest state per DP, never raised."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from control_plane.data_planes import DataPlaneRegistry, DataPlaneRow
from ferry_shared.listen import free_port


def _rows(count: int) -> list[DataPlaneRow]:
    return [
        DataPlaneRow(id=f"dp-{n:03d}", hostname=f"h{n}", ip="127.0.0.1", version="0.1.0")
        for n in range(count)
    ]


async def test_many_data_planes_syncing_at_once_all_show_their_newest_state(redis_url: str) -> None:
    # A pool smaller than the number of DPs: past it redis-py fails a command
    # instead of waiting, so the registry must not write each row on its own.
    client = aioredis.Redis.from_url(redis_url, max_connections=4)
    registry = DataPlaneRegistry(client, prefix="regtest", max_rows_per_write=16)
    rows = _rows(60)

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


def _counting_hset(client: aioredis.Redis) -> list[int]:
    """Record how many rows each HSET on ``client`` writes."""
    commands: list[int] = []
    hset = client.hset

    async def counting_hset(*args, **kwargs):  # type: ignore[no-untyped-def]
        commands.append(len(kwargs.get("mapping") or {}))
        return await hset(*args, **kwargs)

    client.hset = counting_hset  # type: ignore[method-assign]
    return commands


async def test_saves_made_while_a_write_is_in_flight_go_out_together_in_the_next(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    registry = DataPlaneRegistry(client, prefix="regbatch", linger=0)
    commands = _counting_hset(client)
    rows = _rows(10)
    try:
        first = asyncio.create_task(registry.save_quietly(rows[0]))
        await asyncio.sleep(0)  # the writer has taken rows[0] and is writing it
        assert all(await asyncio.gather(*(registry.save_quietly(r) for r in rows[1:])))
        assert await first
        assert commands == [1, 9]
        assert len(await registry.list_data_planes()) == 10
    finally:
        await client.aclose()


async def test_rows_handed_over_within_the_linger_are_written_once_each_in_one_command(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    registry = DataPlaneRegistry(client, prefix="reglinger", linger=30.0)
    commands = _counting_hset(client)
    rows = _rows(10)
    try:
        for row in rows:  # each DP: STALE when sent, then SYNCED on its ACK
            row.sync_status = "STALE"
            registry.save_soon(row)
        for row in rows:
            row.sync_status = "SYNCED"
            registry.save_soon(row)
        assert commands == []  # still lingering (30 s): flush writes at once
        await registry.flush()
        assert commands == [10]
        listed = await registry.list_data_planes()
        assert [r["sync_status"] for r in listed] == ["SYNCED"] * 10
    finally:
        await client.aclose()


async def test_saves_when_redis_is_down_answer_false_rather_than_raise_or_hang() -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    registry = DataPlaneRegistry(dead, prefix="regdown")
    rows = _rows(3)
    try:
        assert await asyncio.gather(*(registry.save_quietly(r) for r in rows)) == [False] * 3
        assert await registry.save_quietly(rows[0]) is False
    finally:
        await dead.aclose()
