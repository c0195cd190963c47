"""Follow one Redis Stream from its tip and hand each decoded entry to a callback.

Every control plane follows the streams other CPs write to (manual overrides,
health-check verdicts) the same way: record the stream's tip at start-up, then
``XREAD BLOCK`` after the last entry delivered. Entries are events: a CP that
starts later does not receive earlier ones. After a Redis error the follower
retries with jittered exponential backoff and resumes after the last entry it
delivered, so entries written meanwhile are delivered late rather than lost
(unless the stream's ``MAXLEN`` trimmed them away).

For one event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

log = logging.getLogger("ferry.control_plane.streams")

T = TypeVar("T")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamFollower(Generic[T]):
    """Follows ``stream_key``; ``decode`` turns each entry's fields into a ``T``.

    ``decode`` returns None for an entry that is not one Ferry wrote (it is
    logged and skipped). ``deliver`` is called synchronously, in stream order,
    from the follower's task; it must not block. ``what`` names the entries in
    log messages ("health overrides"). Owns one background task.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream_key: str,
        decode: Callable[[Mapping[Any, Any]], T | None],
        deliver: Callable[[T], object],
        *,
        what: str,
        block_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self._key = stream_key
        self._decode = decode
        self._deliver = deliver
        self._what = what
        # Below the client's socket timeout, or an idle XREAD looks like a dead Redis.
        self._block_ms = block_ms
        self._last_id = "0-0"
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def stream_key(self) -> str:
        return self._key

    async def start(self) -> None:
        """Read the tip (raises on a Redis error, like the config follower) and start following.

        Every entry appended after ``start`` returns is delivered, and none
        appended before.
        """
        tip: Any = await self._redis.xrevrange(self._key, count=1)
        if tip:
            self._last_id = _text(tip[0][0])
        self._task = asyncio.create_task(self._run(), name=f"ferry-follower-{self._key}")

    async def stop(self) -> None:
        """Cancel the task and wait for it. Idempotent.

        The task also checks a flag after each read: on Python 3.11 a cancel that
        lands as a Redis command completes is lost (``asyncio.wait_for`` inside
        redis-py returns the result instead), and the next ``XREAD`` ends within
        ``block_ms``.
        """
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            # One retry loop per outage (see _follow): each outage's back-off starts
            # from its shortest wait, however many outages came before.
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type((RedisError, OSError)),
                wait=wait_random_exponential(multiplier=0.2, max=10),
                before_sleep=lambda state: log.warning(
                    "redis unavailable (%s); %s paused, retrying",
                    state.outcome.exception() if state.outcome else "?",
                    self._what,
                ),
            ):
                with attempt:
                    await self._follow()

    async def _follow(self) -> None:
        """Follow until stopped. A Redis error raises (retry after the next wait) unless
        an ``XREAD`` answered since this call: then it returns, for a fresh retry loop."""
        progressed = False
        while not self._stopping:
            try:
                batch: Any = await self._redis.xread({self._key: self._last_id}, block=self._block_ms)
            except (RedisError, OSError) as exc:
                if not progressed:
                    raise
                log.warning("redis unavailable (%s); %s paused, retrying", exc, self._what)
                return
            progressed = True
            for _stream, entries in batch or ():
                for entry_id, fields in entries:
                    self._last_id = _text(entry_id)
                    item = self._decode(fields)
                    if item is None:
                        log.warning("ignoring malformed entry %s of %s", self._last_id, self._key)
                        continue
                    try:
                        self._deliver(item)
                    except Exception:  # a bad entry must not stop the follower
                        log.exception("could not deliver entry %s of %s", self._last_id, self._key)
