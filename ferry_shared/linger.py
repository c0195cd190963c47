"""A write-behind's wait: linger so that a burst of changes is written once, unless
someone is waiting for the write (shutdown, tests).

Used by the data plane's disk-cache saves and the control plane's sync-row writes.
One event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class Linger:
    """``await wait()`` lasts ``delay`` seconds, or less once :meth:`flush` runs."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._now = asyncio.Event()

    async def wait(self) -> None:
        """Linger before a write (returns at once with no delay or during a flush)."""
        if self.delay > 0 and not self._now.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self.delay)

    async def flush(self, writer: Callable[[], asyncio.Task[None] | None]) -> None:
        """Cut the lingering short and wait until the task ``writer()`` returns (it
        may start another) is done. Cancelling the caller leaves the writes running."""
        self._now.set()
        try:
            while (task := writer()) is not None and not task.done():
                await asyncio.shield(task)
        finally:
            self._now.clear()
