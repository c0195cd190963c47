"""Follow one Redis Stream and hand its decoded entries to a callback.

The one follow/retry loop of the control plane: every CP follows the streams
CPs write to (config changes, manual overrides, health-check verdicts) the same
way. By default it records the stream's tip at start-up, then ``XREAD BLOCK``
after the last entry delivered: entries are events, and a CP that starts later
does not receive earlier ones. After a Redis error the follower retries with
jittered exponential backoff and resumes after the last entry it delivered, so
entries written meanwhile are delivered late rather than lost (unless the
stream's ``MAXLEN`` trimmed them away).

Three hooks serve a follower that keeps state derived from the whole stream
(:class:`~control_plane.config_follower.ConfigFollower`):

- ``start(after=...)`` follows the entries after a given id instead of the tip;
- ``on_batch`` (instead of ``deliver``) is awaited with each ``XREAD`` answer at
  once and says where to read next;
- ``on_resume`` is awaited before each attempt after a Redis error (entries may
  have been missed or trimmed meanwhile) and may move the read position.

For one event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

log = logging.getLogger("ferry.control_plane.streams")

T = TypeVar("T")

#: ``on_batch``'s argument: each decoded entry of one ``XREAD`` answer with its id, in order.
Batch = Sequence[tuple[str, T]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class StreamFollower(Generic[T]):
    """Follows ``stream_key``; ``decode`` turns each entry's fields into a ``T``.

    ``decode`` returns None for an entry that is not one Ferry wrote (it is
    logged and skipped). Exactly one of two consumers is given:

    - ``deliver`` is called synchronously, in stream order, from the
      follower's task, once per entry; it must not block. An exception it
      raises is logged and the entry skipped.
    - ``on_batch`` is awaited with the decoded entries of each ``XREAD``
      answer (never empty; malformed entries are left out) and returns the
      entry id to read after next, or None for after the batch's last entry.
      A Redis error it raises counts as an outage: the position stays before
      the batch, unless ``on_resume`` moves it.

    ``on_resume``, if given, is awaited before each attempt after a Redis
    error (not at ``start``) and returns the entry id to read after next, or
    None to keep the position. A Redis error it raises is retried like a
    failed ``XREAD``. An exception other than a Redis error from ``on_batch``
    or ``on_resume`` ends the follower; :meth:`stop` re-raises it.

    ``what`` names the entries in log messages ("health overrides");
    ``outage_note`` is what the outage warning says the CP does meanwhile
    (default: "<what> paused"). Owns one background task.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        stream_key: str,
        decode: Callable[[Mapping[Any, Any]], T | None],
        deliver: Callable[[T], object] | None = None,
        *,
        on_batch: Callable[[Batch[T]], Awaitable[str | None]] | None = None,
        on_resume: Callable[[], Awaitable[str | None]] | None = None,
        what: str,
        outage_note: str | None = None,
        block_ms: int = 1000,
    ) -> None:
        if (deliver is None) == (on_batch is None):
            raise TypeError("StreamFollower takes exactly one of deliver and on_batch")
        self._redis = redis
        self._key = stream_key
        self._decode = decode
        self._deliver = deliver
        self._on_batch = on_batch
        self._on_resume = on_resume
        self._what = what
        self._outage_note = outage_note or f"{what} paused"
        # Below the client's socket timeout, or an idle XREAD looks like a dead Redis.
        self._block_ms = block_ms
        #: The id of the last entry consumed: the next XREAD reads after it.
        self._last_id = "0-0"
        #: Whether the next attempt follows a Redis error (and runs on_resume).
        self._resuming = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def stream_key(self) -> str:
        return self._key

    async def start(self, *, after: str | None = None) -> None:
        """Start following the entries after ``after``, or by default after the stream's tip.

        With the default, reads the tip first (raises on a Redis error, like the
        config follower): every entry appended after ``start`` returns is
        delivered, and none appended before. With ``after`` (an entry id,
        "0-0" for the whole stream) it reads nothing before returning.
        """
        if after is None:
            tip: Any = await self._redis.xrevrange(self._key, count=1)
            after = _text(tip[0][0]) if tip else "0-0"
        self._last_id = after
        self._resuming = False
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
                    "redis unavailable (%s); %s, retrying",
                    state.outcome.exception() if state.outcome else "?",
                    self._outage_note,
                ),
            ):
                with attempt:
                    await self._follow()

    async def _follow(self) -> None:
        """Follow until stopped. A Redis error raises (retry after the next wait) unless
        an ``XREAD`` answered since this call: then it returns, for a fresh retry loop."""
        progressed = False
        try:
            if self._resuming and self._on_resume is not None:
                self._seek(await self._on_resume())
            # Every later attempt comes after a Redis error.
            self._resuming = True
            while not self._stopping:
                answer: Any = await self._redis.xread({self._key: self._last_id}, block=self._block_ms)
                progressed = True
                entries = [(_text(i), fields) for _stream, got in answer or () for i, fields in got]
                if not entries:
                    continue
                if self._on_batch is not None:
                    await self._handle_batch(self._on_batch, entries)
                else:
                    self._deliver_each(entries)
        except (RedisError, OSError) as exc:
            if not progressed:
                raise
            log.warning("redis unavailable (%s); %s, retrying", exc, self._outage_note)

    def _seek(self, entry_id: str | None) -> None:
        if entry_id is not None:
            self._last_id = entry_id

    def _decoded(self, entry_id: str, fields: Mapping[Any, Any]) -> T | None:
        item = self._decode(fields)
        if item is None:
            log.warning("ignoring malformed entry %s of %s", entry_id, self._key)
        return item

    def _deliver_each(self, entries: list[tuple[str, Mapping[Any, Any]]]) -> None:
        assert self._deliver is not None
        for entry_id, fields in entries:
            # Past the entry before delivering it: a bad entry is skipped, not re-read.
            self._last_id = entry_id
            item = self._decoded(entry_id, fields)
            if item is None:
                continue
            try:
                self._deliver(item)
            except Exception:  # a bad entry must not stop the follower
                log.exception("could not deliver entry %s of %s", entry_id, self._key)

    async def _handle_batch(
        self,
        on_batch: Callable[[Batch[T]], Awaitable[str | None]],
        entries: list[tuple[str, Mapping[Any, Any]]],
    ) -> None:
        batch = [
            (entry_id, item)
            for entry_id, fields in entries
            if (item := self._decoded(entry_id, fields)) is not None
        ]
        if not batch:
            self._last_id = entries[-1][0]
            return
        # The position moves only once on_batch has returned: a batch whose handling
        # failed on a Redis error is read again after the outage.
        position = await on_batch(batch)
        self._last_id = entries[-1][0] if position is None else position
