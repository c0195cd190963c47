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
from ferry_shared.linger import Linger

#: Kong's default purge delay: 14 days.
DEFAULT_PURGE_DELAY = 14 * 24 * 3600

#: Rows per HSET: a thousand DPs syncing at once go out in a few commands of
#: bounded size rather than one huge one.
MAX_ROWS_PER_WRITE = 256
#: Seconds the writer waits for more rows before it writes: a change's ACKs from
#: many DPs arrive within a few milliseconds of each other.
WRITE_LINGER = 0.05


class DataPlaneRegistry:
    """Reads and writes DP rows. Safe to share across tasks of one event loop.

    Writes are coalesced: :meth:`save_soon` and :meth:`save_quietly` hand their row
    to one writer task, which waits :data:`WRITE_LINGER` seconds, then writes every
    row handed over by then in one ``HSET`` (each DP's newest state only), one write
    at a time. A config change makes every stream save its DP's row twice
    (``STALE`` when sent, ``SYNCED`` on the ACK); written one command each, those
    writes were a third of the control plane's CPU per change with ten DPs, spent
    while the DPs were still applying the change. One write at a time also keeps
    the rows of one DP in order and bounds the connections used, whatever the
    number of DPs. A row is shown at most about :data:`WRITE_LINGER` seconds late.
    """

    def __init__(
        self, redis: aioredis.Redis, prefix: str = "ferry", *, purge_delay: int = DEFAULT_PURGE_DELAY,
        max_rows_per_write: int = MAX_ROWS_PER_WRITE, linger: float = WRITE_LINGER,
    ) -> None:
        self._redis = redis
        self._key = f"{prefix}:data_planes"
        self._purge_delay = purge_delay
        self._max_rows = max_rows_per_write
        self._linger = Linger(linger)
        #: Rows waiting for the next write (DP id -> its newest row), and the future
        #: that write resolves (True: written).
        self._pending: dict[str, DataPlaneRow] = {}
        self._pending_done: asyncio.Future[bool] | None = None
        self._writer: asyncio.Task[None] | None = None

    async def save(self, row: DataPlaneRow) -> None:
        """Write ``row`` now (raises on a Redis error)."""
        await self._write([row])

    async def _write(self, rows: list[DataPlaneRow]) -> None:
        now = int(time.time())
        mapping: dict[Any, str] = {}  # redis-py types the keys as any encodable value
        for row in rows:
            row.last_seen = now
            row.updated_at = now
            mapping[row.id] = json.dumps(row.to_api())
        await self._redis.hset(self._key, mapping=mapping)

    async def save_quietly(self, row: DataPlaneRow) -> bool:
        """Store ``row`` with the next coalesced write; True once it is written, False
        (never raised) when that write failed: a Redis outage must not break the
        DP's stream. The row's state is read when the write goes out, so a later
        change to it before then is written too."""
        return await asyncio.shield(self._hand_over(row))

    def save_soon(self, row: DataPlaneRow) -> None:
        """Store ``row`` with the next coalesced write, without waiting for it (a
        failed write is not reported: the DP's next save writes its row again)."""
        self._hand_over(row)

    async def flush(self) -> None:
        """Write what is pending now and wait for it (shutdown)."""
        await self._linger.flush(lambda: self._writer)

    def _hand_over(self, row: DataPlaneRow) -> asyncio.Future[bool]:
        self._pending[row.id] = row
        if self._pending_done is None:
            self._pending_done = asyncio.get_running_loop().create_future()
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_pending(), name="ferry-dp-registry")
        return self._pending_done

    async def _write_pending(self) -> None:
        """Write what is pending, again while saves arrive during a write."""
        done: asyncio.Future[bool] | None = None
        try:
            while self._pending:
                await self._linger.wait()
                rows, self._pending = list(self._pending.values()), {}
                done, self._pending_done = self._pending_done, None
                ok = True
                for start in range(0, len(rows), self._max_rows):
                    try:
                        await self._write(rows[start:start + self._max_rows])
                    except (RedisError, OSError):
                        ok = False
                _resolve(done, ok)
        finally:
            # Cancelled (shutdown) or failed unexpectedly: no save waits forever.
            _resolve(done, False)
            if self._pending_done is not None and not self._pending:
                _resolve(self._pending_done, False)
                self._pending_done = None

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


def _resolve(future: asyncio.Future[bool] | None, ok: bool) -> None:
    if future is not None and not future.done():
        future.set_result(ok)
