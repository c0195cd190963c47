"""Per-data-plane sync state, kept in Redis so every control plane shows all DPs.

One hash ``{prefix}:data_planes`` maps DP node id → JSON row in the shape of
Kong's ``/clustering/data-planes``. Rows of DPs not seen for ``purge_delay``
seconds are dropped when listed (Kong's ``cluster_data_plane_purge_delay``).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from control_plane.store import redis_reachable
from control_plane.sync_state import DataPlaneRow

#: Kong's default purge delay: 14 days.
DEFAULT_PURGE_DELAY = 14 * 24 * 3600

#: Row writes in flight at once (redis-py's pool holds 100 connections and fails,
#: rather than waits, past that; the Admin API and the followers need some too).
MAX_CONCURRENT_WRITES = 32


class DataPlaneRegistry:
    """Reads and writes DP rows. Safe to share across tasks of one event loop."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str = "ferry", *, purge_delay: int = DEFAULT_PURGE_DELAY,
        max_concurrent_writes: int = MAX_CONCURRENT_WRITES,
    ) -> None:
        self._redis = redis
        self._key = f"{prefix}:data_planes"
        self._purge_delay = purge_delay
        self._write_slots = asyncio.Semaphore(max_concurrent_writes)
        #: DPs whose row is being written by :meth:`save_quietly` → the newer row to
        #: write once that write is done (None: nothing newer yet).
        self._writing: dict[str, DataPlaneRow | None] = {}

    async def save(self, row: DataPlaneRow) -> None:
        now = int(time.time())
        row.last_seen = now
        row.updated_at = now
        await self._redis.hset(self._key, row.id, json.dumps(row.to_api()))

    async def save_quietly(self, row: DataPlaneRow) -> bool:
        """Like :meth:`save`, but a Redis outage must not break the DP's stream.

        One write per DP at a time, newest last: a save while that DP's row is
        being written only leaves the row to write next, and the writer writes it
        when its write is done. Concurrent writes of one row could otherwise land
        out of order (each command takes its own pooled connection, and a command
        retried after a full pool lands late: a DP that had acknowledged showed
        STALE for good). Writes of all DPs together are limited to
        :data:`MAX_CONCURRENT_WRITES`, so a thousand DPs syncing at once queue
        instead of exhausting the Redis connection pool. True when the row was
        written or handed to the write in flight.
        """
        if row.id in self._writing:
            self._writing[row.id] = row
            return True
        self._writing[row.id] = None
        try:
            ok = await self._write_quietly(row)
            while (newer := self._writing.get(row.id)) is not None:
                self._writing[row.id] = None
                ok = await self._write_quietly(newer)
            return ok
        finally:
            self._writing.pop(row.id, None)

    async def _write_quietly(self, row: DataPlaneRow) -> bool:
        try:
            async with self._write_slots:
                await self.save(row)
            return True
        except (RedisError, OSError):
            return False

    async def list_data_planes(self) -> list[dict[str, Any]]:
        """Kong's ``/clustering/data-planes`` rows; ``StoreUnavailable`` when Redis is down."""
        async with redis_reachable(self._redis):
            raw: dict[Any, Any] = await self._redis.hgetall(self._key)
        now = time.time()
        rows: list[dict[str, Any]] = []
        expired: list[Any] = []
        for node_id, value in raw.items():
            row = json.loads(value)
            if now - row.get("last_seen", 0) > self._purge_delay:
                expired.append(node_id)
                continue
            rows.append(row)
        if expired:
            async with redis_reachable(self._redis):
                await self._redis.hdel(self._key, *expired)
        rows.sort(key=lambda r: (r.get("hostname", ""), r["id"]))
        return rows
