"""StreamFollower against a real Redis: the start position, ``on_batch`` and ``on_resume``.

The config follower is built on these hooks (its reload on resume is tested here;
``tests/integration/test_cluster_deltas.py`` and ``test_redis_outage.py`` cover
it end to end); the override and verdict followers use the default start at the
tip with ``deliver``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from control_plane.config_follower import ConfigFollower
from control_plane.snapshot import SnapshotStore
from control_plane.store import EntityStore
from control_plane.stream_follower import Batch, StreamFollower
from tests.support.polling import wait_for

_KEY = "test:events"
_NAME = "stream-follower-under-test"
#: Short blocks: ``stop`` can wait out one ``XREAD`` (a cancel lost on Python 3.11).
_BLOCK_MS = 100


def _value(fields: Mapping[Any, Any]) -> str | None:
    """The entry's ``v`` field; None (malformed) when it has none."""
    value = fields.get(b"v")
    return value.decode() if isinstance(value, bytes) else None


@pytest.fixture
async def follower_redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """The follower's client: bytes replies like Ferry's, and no command retries, so a
    dropped connection reaches the follower as an error instead of being retried inside
    redis-py. Named, so a test can find its blocked ``XREAD`` in ``CLIENT LIST``."""
    client = aioredis.Redis.from_url(redis_url, retry=Retry(NoBackoff(), 0), client_name=_NAME)
    try:
        yield client
    finally:
        await client.aclose()


def _follower(
    redis: aioredis.Redis, deliver: Callable[[str], object] | None = None, **hooks: Any
) -> StreamFollower[str]:
    return StreamFollower(redis, _KEY, _value, deliver, what="events", block_ms=_BLOCK_MS, **hooks)


async def _add(redis: aioredis.Redis, value: str) -> str:
    entry_id = await redis.xadd(_KEY, {"v": value})
    return entry_id if isinstance(entry_id, str) else entry_id.decode()


async def _kill_blocked_xread(redis: aioredis.Redis) -> None:
    """Close the follower's connection while it blocks in ``XREAD`` (its next read fails)."""

    async def blocked() -> int | None:
        for client in await redis.client_list():
            if client["name"] == _NAME and client["cmd"] == "xread" and "b" in client["flags"]:
                return int(client["id"])
        return None

    client_id = await wait_for(blocked, message="the follower blocked in XREAD")
    assert await redis.client_kill_filter(_id=client_id) == 1


async def test_exactly_one_of_deliver_and_on_batch_is_taken(follower_redis: aioredis.Redis) -> None:
    async def on_batch(batch: Batch[str]) -> None:
        return None

    with pytest.raises(TypeError):
        StreamFollower(follower_redis, _KEY, _value, what="events")
    with pytest.raises(TypeError):
        StreamFollower(follower_redis, _KEY, _value, print, on_batch=on_batch, what="events")


async def test_by_default_only_entries_appended_after_start_are_delivered(
    redis_client: aioredis.Redis, follower_redis: aioredis.Redis
) -> None:
    await _add(redis_client, "before")
    delivered: list[str] = []
    follower = _follower(follower_redis, delivered.append)
    await follower.start()
    try:
        await _add(redis_client, "after")
        await wait_for(lambda: delivered, message="the entry appended after start")
        await _add(redis_client, "later")
        await wait_for(lambda: len(delivered) == 2, message="the next entry")
        assert delivered == ["after", "later"]
    finally:
        await follower.stop()


async def test_start_after_an_id_delivers_every_entry_after_it(
    redis_client: aioredis.Redis, follower_redis: aioredis.Redis
) -> None:
    first = await _add(redis_client, "a")
    await _add(redis_client, "b")
    await _add(redis_client, "c")
    delivered: list[str] = []
    follower = _follower(follower_redis, delivered.append)
    await follower.start(after=first)
    try:
        await wait_for(lambda: len(delivered) == 2, message="the entries after the first")
        await _add(redis_client, "d")
        await wait_for(lambda: len(delivered) == 3, message="the entry appended after start")
        assert delivered == ["b", "c", "d"]
    finally:
        await follower.stop()


async def test_on_batch_takes_each_answer_at_once_and_says_where_to_read_next(
    redis_client: aioredis.Redis, follower_redis: aioredis.Redis
) -> None:
    ids = [await _add(redis_client, value) for value in ("a", "b", "c")]
    await redis_client.xadd(_KEY, {"other": "x"})  # malformed: left out of the batch
    batches: list[list[tuple[str, str]]] = []

    async def on_batch(batch: Batch[str]) -> str | None:
        batches.append(list(batch))
        # The first time, ask for the entries after the first one again.
        return ids[0] if len(batches) == 1 else None

    follower = _follower(follower_redis, on_batch=on_batch)
    await follower.start(after="0-0")
    try:
        await wait_for(lambda: len(batches) == 2, message="the batch read again")
        last = await _add(redis_client, "d")
        await wait_for(lambda: len(batches) == 3, message="the next batch")
        everything = [(ids[0], "a"), (ids[1], "b"), (ids[2], "c")]
        assert batches == [everything, everything[1:], [(last, "d")]]
    finally:
        await follower.stop()


async def test_on_resume_runs_after_a_dropped_connection_and_moves_the_position(
    redis_client: aioredis.Redis, follower_redis: aioredis.Redis
) -> None:
    delivered: list[str] = []
    resumes = 0

    async def on_resume() -> str:
        nonlocal resumes
        resumes += 1
        return "0-0"  # read the whole stream again

    follower = _follower(follower_redis, delivered.append, on_resume=on_resume)
    await follower.start()
    try:
        await _add(redis_client, "a")
        await wait_for(lambda: delivered == ["a"], message="the first entry")
        assert resumes == 0, "on_resume does not run at start"
        await _kill_blocked_xread(redis_client)
        await wait_for(lambda: delivered == ["a", "a"], message="the stream read again from 0-0")
        await _add(redis_client, "b")
        await wait_for(lambda: delivered == ["a", "a", "b"], message="following on")
        assert resumes == 1
    finally:
        await follower.stop()


async def test_a_redis_error_in_a_hook_is_an_outage_and_the_batch_is_read_again(
    redis_client: aioredis.Redis, follower_redis: aioredis.Redis
) -> None:
    batches: list[list[str]] = []
    resumes = 0

    async def on_batch(batch: Batch[str]) -> None:
        batches.append([value for _, value in batch])
        if len(batches) == 1:
            raise RedisConnectionError("lost while handling the batch")

    async def on_resume() -> None:
        nonlocal resumes
        resumes += 1
        if resumes == 1:  # retried after a back-off, like a failed XREAD
            raise RedisConnectionError("still down")

    follower = _follower(follower_redis, on_batch=on_batch, on_resume=on_resume)
    await follower.start()
    try:
        await _add(redis_client, "a")
        await wait_for(lambda: len(batches) == 2, message="the batch handed again")
        assert batches == [["a"], ["a"]]
        assert resumes == 2
        await _add(redis_client, "b")
        await wait_for(lambda: len(batches) == 3, message="following on")
        assert batches[2] == ["b"]
    finally:
        await follower.stop()


class CountingSource:
    """An :class:`EntityStore` as the config follower's source, counting whole-config loads."""

    def __init__(self, store: EntityStore) -> None:
        self._store = store
        self.loads = 0

    @property
    def changes_stream_key(self) -> str:
        return self._store.changes_stream_key

    async def load_all_raw(self) -> tuple[int, dict[str, list[str | bytes]]]:
        self.loads += 1
        return await self._store.load_all_raw()


async def test_the_config_follower_reloads_the_whole_config_after_a_dropped_connection(
    redis_client: aioredis.Redis, follower_redis: aioredis.Redis
) -> None:
    # Changes may have been missed during an outage: the reload does not wait for one.
    source = CountingSource(EntityStore(follower_redis))
    snapshots = SnapshotStore()
    follower = ConfigFollower(
        follower_redis, source, snapshots, merge_window=0.0, block_ms=_BLOCK_MS
    )
    await follower.start()
    try:
        first = snapshots.current
        assert first is not None and source.loads == 1
        await _kill_blocked_xread(redis_client)
        await wait_for(lambda: source.loads == 2, message="the reload on resume")
        assert snapshots.current is first, "the same config is not published again"
    finally:
        await follower.stop()
