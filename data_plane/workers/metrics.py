"""How proxy workers (``--workers N``) hand their request counts to the node.

Each worker writes its :meth:`~data_plane.request_metrics.RequestMetrics.snapshot`
to ``<data-dir>/worker-metrics/worker-<index>.json`` every :data:`PUBLISH_INTERVAL`
seconds and when it stops (written to a temporary file and renamed, so a reader never
sees half of one). The node's ``/metrics`` sums the files of its workers: its figures
lag the workers' by at most that interval. A restarted worker starts from the counts
its predecessor published, so every counter the node exports only grows, as
Prometheus expects of a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

from data_plane.request_metrics import Snapshot, merge_snapshots

__all__ = ["PUBLISH_INTERVAL", "publish_periodically", "read_node_snapshot", "read_snapshot", "snapshot_path", "write_snapshot"]

log = logging.getLogger(__name__)

#: Seconds between two snapshots of one worker.
PUBLISH_INTERVAL = 1.0


def snapshot_path(data_dir: Path, index: int) -> Path:
    return data_dir / "worker-metrics" / f"worker-{index}.json"


def write_snapshot(path: Path, snapshot: Snapshot) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(snapshot, separators=(",", ":")))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> Snapshot | None:
    """The snapshot in ``path``; ``None`` when there is none or it is unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_node_snapshot(data_dir: Path, workers: int) -> Snapshot:
    """The sum of the snapshots of workers ``0 .. workers-1``."""
    found = (read_snapshot(snapshot_path(data_dir, i)) for i in range(workers))
    return merge_snapshots([s for s in found if s is not None])


async def publish_periodically(
    path: Path, snapshot: Callable[[], Snapshot], interval: float = PUBLISH_INTERVAL
) -> None:
    """Write ``snapshot()`` to ``path`` every ``interval`` s until cancelled, and once
    more then."""
    try:
        while True:
            await asyncio.sleep(interval)
            try:
                write_snapshot(path, snapshot())
            except OSError as exc:
                log.warning("cannot write the worker's metrics to %s: %s", path, exc)
    finally:
        with contextlib.suppress(OSError):
            write_snapshot(path, snapshot())
