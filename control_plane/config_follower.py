"""Follows Redis's change stream and publishes snapshots into a SnapshotStore.

Every control plane runs one follower, so a write through any CP's Admin API
reaches the data planes of every CP. On each batch of changes it waits a short
merge window (changes arriving together go out as one update), then reloads the
whole config in one consistent read. When Redis is unreachable it keeps the
last snapshot published and retries with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from control_plane.snapshot import SnapshotStore, build_snapshot

log = logging.getLogger("ferry.control_plane.follower")


class ConfigSource(Protocol):
    """What the follower needs from the entity store."""

    @property
    def changes_stream_key(self) -> str: ...

    async def load_all(self) -> tuple[int, dict[str, list[dict]]]: ...


class ConfigFollower:
    """Owns one background task; ``start`` loads the first snapshot before returning."""

    def __init__(
        self,
        redis: aioredis.Redis,
        source: ConfigSource,
        snapshots: SnapshotStore,
        *,
        merge_window: float = 0.05,
        block_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self._source = source
        self._snapshots = snapshots
        self._merge_window = merge_window
        # Must stay below the client's socket timeout (redis-py's default is 5 s),
        # or an idle XREAD is mistaken for a dead Redis.
        self._block_ms = block_ms
        self._task: asyncio.Task[None] | None = None
        self._last_id = "0-0"
        # Stop by flag as well as by cancel: on Python 3.11 a cancel that lands as an
        # asyncio.wait_for (redis-py wraps every command in one) completes is lost, and
        # the loop would go on; the flag ends it at the next XREAD (<= block_ms).
        self._stopping = False

    async def start(self) -> None:
        await self._reload_from_tip()
        self._task = asyncio.create_task(self._run(), name="ferry-config-follower")

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _reload_from_tip(self) -> None:
        # Read the stream's tip *before* the config: a change landing between
        # the two reads is then seen by the next XREAD and reloaded, never lost.
        tip = await self._redis.xrevrange(self._source.changes_stream_key, count=1)
        if tip:
            entry_id = tip[0][0]
            self._last_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        version, entities = await self._source.load_all()
        if self._snapshots.set(build_snapshot(version, entities)):
            log.info("config version %d loaded", version)

    async def _run(self) -> None:
        while not self._stopping:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((RedisError, OSError)),
                wait=wait_random_exponential(multiplier=0.2, max=10),
                before_sleep=lambda state: log.warning(
                    "redis unavailable (%s); serving the last snapshot, retrying",
                    state.outcome.exception() if state.outcome else "?",
                ),
            ):
                with attempt:
                    await self._follow()

    async def _follow(self) -> None:
        key = self._source.changes_stream_key
        # After an outage, resynchronise from the tip (the stream may have been trimmed).
        await self._reload_from_tip()
        while not self._stopping:
            batch = await self._redis.xread({key: self._last_id}, block=self._block_ms)
            if not batch:
                continue
            if self._merge_window > 0:
                await asyncio.sleep(self._merge_window)
            await self._reload_from_tip()
