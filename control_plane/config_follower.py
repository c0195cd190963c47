"""Follows Redis's change stream and publishes snapshots into a SnapshotStore.

Every control plane runs one follower, so a write through any CP's Admin API
reaches the data planes of every CP. It publishes at most one update per merge
window: a change after a quiet window is reloaded at once, changes arriving
within a window of the last update wait for its end and go out as one update.
Each reload reads the whole config in one consistent read. When Redis is
unreachable it keeps the last snapshot published and retries with jittered
exponential backoff.

With each snapshot it hands the store the change stream's entries up to that
snapshot's version, which is what deltas are computed from. Entries of every
version up to the loaded one are in the stream by then (the store's Lua scripts
bump the version and append its entries atomically). At start it reads the
whole stream, so a restarted CP can still send deltas to DPs that reconnect.
When entries may be missing (the stream was trimmed past the last one read, or
a version has none) it says so, and the store answers with full snapshots for
versions before that point.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from control_plane.snapshot import Change, SnapshotBuilder, SnapshotStore

log = logging.getLogger("ferry.control_plane.follower")

#: Stream entries read per XRANGE call.
_CHUNK = 1000


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


class ConfigSource(Protocol):
    """What the follower needs from the entity store."""

    @property
    def changes_stream_key(self) -> str: ...

    async def load_all_raw(self) -> tuple[int, dict[str, list[str | bytes]]]:
        """The version and each entity's stored JSON text, read atomically."""
        ...


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
        #: The config version of the last load (what the store was handed).
        self._version = 0
        self._loaded = False
        #: Re-encodes only the entities whose stored text changed since the last load.
        self._builder = SnapshotBuilder()
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
        """Publish the current config with every stream entry since the last one read."""
        key = self._source.changes_stream_key
        version, texts = await self._source.load_all_raw()
        resuming = self._loaded
        since: int | None = None
        start = "(" + self._last_id
        if resuming:
            since = self._version
            if self._last_id != "0-0":
                # Entries after the last one read were trimmed if the stream now starts later.
                first = await self._redis.xrange(key, count=1)
                if first and _stream_id(_text(first[0][0])) > _stream_id(self._last_id):
                    since = None
        changes: list[Change] = []
        done = False
        while not done:
            batch: list[Any] = await self._redis.xrange(key, min=start, count=_CHUNK) or []
            for entry_id, raw in batch:
                fields = {_text(k): _text(v) for k, v in raw.items()}
                change = Change(int(fields["version"]), fields["kind"], fields["id"])
                if change.version > version:
                    done = True  # written after the load: the next round's
                    break
                changes.append(change)
                self._last_id = _text(entry_id)
            if len(batch) < _CHUNK:
                done = True
            start = "(" + self._last_id
        if not resuming and changes:
            # The oldest version read may have lost some entries to trimming,
            # unless it is the very first.
            oldest = changes[0].version
            since = 0 if oldest == 1 else oldest
        if since is not None and not _contiguous(changes, since, version):
            since = None
        if version < self._version:
            # Redis lost its data or was swapped: the store keeps serving the newer
            # config it holds rather than push an older (maybe empty) one to every DP.
            log.error(
                "config version went back from %d to %d (Redis lost data or was replaced); "
                "data planes keep version %d until the version passes it",
                self._version, version, self._version,
            )
        self._version = version
        self._loaded = True
        if self._snapshots.set(self._builder.build(version, texts), changes, since=since):
            log.info("config version %d loaded", version)

    async def _run(self) -> None:
        while not self._stopping:
            # One retry loop per outage: after the follower made progress, the next
            # outage's back-off starts again from its shortest wait (a CP that lived
            # through many outages must not wait the longest one after each).
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
        """Follow until stopped. A Redis error raises (retry after the next wait) unless
        an ``XREAD`` answered since this call: then the outage is a new one, and this
        returns for a fresh retry loop."""
        key = self._source.changes_stream_key
        loop = asyncio.get_running_loop()
        progressed = False
        try:
            # After an outage, resynchronise from the tip (the stream may have been trimmed).
            await self._reload_from_tip()
            published = loop.time()
            while not self._stopping:
                batch = await self._redis.xread({key: self._last_id}, block=self._block_ms)
                progressed = True
                if not batch:
                    continue
                # At most one update per merge window: a change after a quiet window goes
                # out at once; changes arriving within a window of the last update wait for
                # its end and go out together (a burst of writes: the first, then the rest).
                wait = self._merge_window - (loop.time() - published)
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._reload_from_tip()
                published = loop.time()
        except (RedisError, OSError) as exc:
            if not progressed:
                raise
            log.warning("redis unavailable (%s); serving the last snapshot, retrying", exc)


def _contiguous(changes: list[Change], since: int, version: int) -> bool:
    """Whether ``changes`` has entries for every version in ``(since, version]``."""
    seen = {c.version for c in changes if c.version > since}
    return seen == set(range(since + 1, version + 1))
