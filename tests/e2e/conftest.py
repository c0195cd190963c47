"""Fixtures that run real ``ferry control-plane`` / ``ferry data-plane`` processes
(helpers: ``tests/support/ferry_cluster.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.embedded_redis import EmbeddedRedis
from tests.support.ferry_cluster import Cluster


@pytest.fixture
def http_timeout() -> float:
    """End-to-end tests bound each request of their ``http`` session to 10 s."""
    return 10.0


@pytest.fixture
def cluster(tmp_path: Path, redis_server: EmbeddedRedis, redis_url: str) -> Iterator[Cluster]:
    """A cluster whose CPs use the session's real Redis (flushed for this test)."""
    c = Cluster(tmp_path, redis_url)
    try:
        yield c
    finally:
        c.stop_all()
        for process in c.processes:
            if process.returncode not in (0, None):
                print(f"--- {process.log_path.name} (exit {process.returncode}) ---\n{process.log()}")
