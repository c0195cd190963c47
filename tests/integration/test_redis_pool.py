"""The control plane's Redis client waits for a free connection instead of failing."""

from __future__ import annotations

import asyncio

from control_plane.redis_connection import POOL_SIZE, create_redis_client


async def test_more_concurrent_commands_than_connections_all_succeed(redis_url: str) -> None:
    client = create_redis_client(redis_url)
    try:
        # Each BLPOP holds its connection for 0.2 s: half again as many as the pool
        # has must queue for a connection, not fail with "Too many connections".
        results = await asyncio.gather(
            *(client.blpop(["ferry:test:nothing"], timeout=0.2) for _ in range(POOL_SIZE * 3 // 2))
        )
        assert results == [None] * (POOL_SIZE * 3 // 2)
    finally:
        await client.aclose()
