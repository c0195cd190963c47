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

It is a :class:`~control_plane.stream_follower.StreamFollower` of the change
stream with hooks: started after the last entry the first load read (not at
the tip), it takes each ``XREAD`` answer as one batch (waits out the merge
window, reloads, and reads on after what it loaded), and reloads on each retry
after an outage, since changes may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, Protocol

import redis.asyncio as aioredis

from control_plane.snapshot import Change, SnapshotBuilder, SnapshotStore
from control_plane.stream_follower import Batch, StreamFollower

log = logging.getLogger("ferry.control_plane.follower")

#: Stream entries read per XRANGE call.
_CHUNK = 1000


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _stream_id(entry_id: str) -> tuple[int, int]:
    millis, _, seq = entry_id.partition("-")
    return int(millis), int(seq or 0)


def _change(raw: Mapping[Any, Any]) -> Change:
    """The change-stream entry ``raw`` (raises KeyError/ValueError when malformed)."""
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return Change(int(fields["version"]), fields["kind"], fields["id"])


def _change_or_none(raw: Mapping[Any, Any]) -> Change | None:
    try:
        return _change(raw)
    except (KeyError, ValueError):
        return None


class ConfigSource(Protocol):
    """What the follower needs from the entity store."""

    @property
    def changes_stream_key(self) -> str: ...

    async def load_all_raw(self) -> tuple[int, dict[str, list[str | bytes]]]:
        """The version and each entity's stored JSON text, read atomically."""
        ...


class ConfigFollower:
    """Owns one background task (its stream follower's); ``start`` loads the first
    snapshot before returning (and raises on a Redis error)."""

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
        #: The id of the last change-stream entry handed to the store.
        self._last_id = "0-0"
        #: The config version of the last load (what the store was handed).
        self._version = 0
        self._loaded = False
        #: When the last load finished (event-loop time): the merge window runs from it.
        self._published = 0.0
        #: Re-encodes only the entities whose stored text changed since the last load.
        self._builder = SnapshotBuilder()
        # The stream follower's XREAD only wakes the follower: each reload reads the
        # entries itself (XRANGE up to the loaded version) and says where to read next.
        self._stream: StreamFollower[Change] = StreamFollower(
            redis,
            source.changes_stream_key,
            _change_or_none,
            on_batch=self._on_changes,
            on_resume=self._on_resume,
            what="config changes",
            outage_note="serving the last snapshot",
            # Must stay below the client's socket timeout (redis-py's default is 5 s),
            # or an idle XREAD is mistaken for a dead Redis.
            block_ms=block_ms,
        )

    async def start(self) -> None:
        await self._reload()
        await self._stream.start(after=self._last_id)

    async def stop(self) -> None:
        """Stop following (see :meth:`StreamFollower.stop`). Idempotent."""
        await self._stream.stop()

    async def _on_changes(self, batch: Batch[Change]) -> str:
        """A batch of new entries: reload, at most once per merge window."""
        # At most one update per merge window: a change after a quiet window goes
        # out at once; changes arriving within a window of the last update wait for
        # its end and go out together (a burst of writes: the first, then the rest).
        wait = self._merge_window - (asyncio.get_running_loop().time() - self._published)
        if wait > 0:
            await asyncio.sleep(wait)
        await self._reload()
        # Entries written after the load stay unread: the next XREAD returns them at once.
        return self._last_id

    async def _on_resume(self) -> str:
        """After an outage, resynchronise (changes may have been missed, the stream trimmed)."""
        await self._reload()
        return self._last_id

    async def _reload(self) -> None:
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
                change = _change(raw)
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
        self._published = asyncio.get_running_loop().time()


def _contiguous(changes: list[Change], since: int, version: int) -> bool:
    """Whether ``changes`` has entries for every version in ``(since, version]``."""
    seen = {c.version for c in changes if c.version > since}
    return seen == set(range(since + 1, version + 1))
