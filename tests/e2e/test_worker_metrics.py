"""``/metrics`` of a ``ferry data-plane --workers 2`` node: the sum of its workers'
counts, which never goes down, not even when a worker is killed and replaced.

Real processes (control plane, node, two workers), real backends. Each request goes
over a fresh connection so that the kernel spreads them over both workers (see
tests/e2e/test_workers.py). Workers publish their counts every second: the tests
poll the node's ``/metrics`` with a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.ferry_cluster import (
    Cluster,
    DataPlaneProc,
    dp_status,
    start_two_worker_node,
    worker_pids,
)
from tests.support.http import fresh_get, wait_http_ok
from tests.support.metrics import Scrape, scrape
from tests.support.polling import wait_for

BATCH = 30
LABELS = {"service": "shop", "route": "shop"}
HISTOGRAMS = ("kong_kong_latency_ms", "kong_upstream_latency_ms", "kong_request_latency_ms")


def worker_index(pid: int) -> int:
    """A worker's ``--index``, from its command line."""
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        args = handle.read().split(b"\0")
    return int(args[args.index(b"--index") + 1])


def worker_file_count(data_dir: Path, index: int) -> int:
    """Requests counted in worker ``index``'s last published snapshot (0 if none yet)."""
    path = data_dir / "worker-metrics" / f"worker-{index}.json"
    try:
        snapshot: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return 0
    return sum(
        n for s in snapshot.get("series", []) for field in ("codes", "local_codes")
        for n in s[field].values()
    )


class Watcher:
    """Scrapes the node and checks, on every scrape, that no counter went down."""

    def __init__(self, http: aiohttp.ClientSession, dp: DataPlaneProc) -> None:
        self._http = http
        self._dp = dp
        self.highest = 0.0
        self.last: Scrape | None = None

    async def total(self) -> float:
        self.last = await scrape(self._http, self._dp.status)
        total = self.last.requests_total()
        assert total >= self.highest, f"the node's request count went down: {self.highest} -> {total}"
        self.highest = total
        return total

    async def until_total(self, expected: int, message: str) -> Scrape:
        async def reached() -> bool:
            total = await self.total()
            assert total <= expected, f"more requests counted ({total}) than sent ({expected})"
            return total == expected

        await wait_for(reached, timeout=15, interval=0.1, message=message)
        assert self.last is not None
        return self.last


def assert_counts(s: Scrape, sent: int) -> None:
    assert s.value("kong_http_requests_total", code="200", source="service", **LABELS) == sent
    assert s.requests_total() == sent, s.text
    assert s.value("kong_nginx_requests_total") == sent
    assert s.value("kong_nginx_connections_total", state="accepted") == sent
    for family in HISTOGRAMS:
        assert s.value(f"{family}_count", **LABELS) == sent, family
        assert s.value(f"{family}_bucket", le="+Inf", **LABELS) == sent, family


async def test_node_metrics_sum_the_workers_and_survive_a_killed_worker(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        dp, _, _ = await start_two_worker_node(cluster, http, stack, {})
        data_dir = cluster.tmp_path / "node"
        watch = Watcher(http, dp)
        assert await watch.total() == 0

        sent = 0
        for _ in range(BATCH):
            assert (await fresh_get(f"{dp.proxy}/shop/"))[0] == 200
            sent += 1
        s = await watch.until_total(sent, f"the node to count the {sent} requests")
        assert_counts(s, sent)
        per_worker = {i: worker_file_count(data_dir, i) for i in (0, 1)}
        assert sum(per_worker.values()) == sent
        assert all(per_worker.values()), f"both workers served requests: {per_worker}"
        status = await dp_status(http, dp.status)
        assert s.value("ferry_config_version") == status["configuration_version"]
        assert s.value("kong_control_plane_connected") == 1

        pids = await worker_pids(dp)
        assert len(pids) == 2, pids
        victim = pids[0]
        index = worker_index(victim)
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            await watch.total()  # the count holds while the worker is gone
            now = await worker_pids(dp)
            return len(now) == 2 and victim not in now

        await wait_for(replaced, timeout=20, interval=0.1, message="the node to start a new worker")
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        assert (await watch.until_total(sent, "the count after the restart")).requests_total() == sent
        assert worker_file_count(data_dir, index) == per_worker[index]

        # Send until the new worker has answered some requests itself (it may
        # listen an instant after it reports ready), then check the node's sum.
        async def new_worker_served() -> bool:
            nonlocal sent
            for _ in range(10):
                assert (await fresh_get(f"{dp.proxy}/shop/"))[0] == 200
                sent += 1
            await watch.total()
            return worker_file_count(data_dir, index) > per_worker[index]

        await wait_for(new_worker_served, timeout=20, interval=0.2,
                       message=f"the restarted worker {index} to serve and publish requests")
        s = await watch.until_total(sent, f"the node to count all {sent} requests")
        assert_counts(s, sent)
        assert sum(worker_file_count(data_dir, i) for i in (0, 1)) == sent
        # The new worker went on from its predecessor's counts.
        assert worker_file_count(data_dir, index) > per_worker[index]
