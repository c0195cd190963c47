"""Fixtures for Kong's own specs, translated case by case.

Each spec module gets one real ``ferry control-plane`` process (with its own embedded
Redis under a temporary directory) and, where the spec proxies traffic, one real
``ferry data-plane`` process: starting them per case would cost seconds each. Cases keep
apart by using fresh entity names (:func:`unique`); a case that needs an empty database
asks for ``fresh_kong`` instead, which starts a control plane for it alone.

Module fixtures are synchronous (they poll with urllib), so cases stay ordinary
function-scoped asyncio tests with their own ``http`` session.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import Cluster, DataPlaneProc
from tests.e2e.conftest import backends as backends  # noqa: F401  (re-exported fixture)
from tests.support import FerryProcess


def unique(prefix: str = "k") -> str:
    """A name no other case in the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"null")


def _wait_ok(url: str, process: FerryProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.returncode is None, f"exited {process.returncode}:\n{process.log()}"
        try:
            _get_json(url)
            return
        except (urllib.error.URLError, OSError, ValueError):
            if time.monotonic() > deadline:
                raise AssertionError(f"{url} did not answer 200 in {timeout}s:\n{process.log()}") from None
            time.sleep(0.05)


class KongCluster:
    """A running control plane (and, once asked for, one data plane) for spec cases."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cp: FerryProcess | None = None
        self.dp: DataPlaneProc | None = None
        self._dp_args: tuple[str, ...] = ()

    @property
    def admin(self) -> str:
        return self.cluster.admin

    def start(self, *cp_args: str) -> KongCluster:
        self.cp = self.cluster.start_control_plane(*cp_args)
        _wait_ok(f"{self.admin}/status", self.cp)
        return self

    async def data_plane(self, *dp_args: str) -> DataPlaneProc:
        """The module's data plane (started on first use) once it serves the CP's
        current configuration."""
        if self.dp is None:
            self.dp = self.cluster.start_data_plane("dp1", *dp_args)
            _wait_ok(f"{self.dp.status}/status", self.dp.process)
        await self.synced()
        return self.dp

    async def synced(self, timeout: float = 15.0) -> None:
        """Wait until the data plane serves what the CP holds now (no-op without one)."""
        if self.dp is None:
            return
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.admin}/status") as response:
                wanted = int((await response.json())["configuration_version"] or 0)
            deadline = time.monotonic() + timeout
            while True:
                async with http.get(f"{self.dp.status}/status") as response:
                    status = await response.json()
                if (status.get("configuration_version") or 0) >= wanted:
                    return
                assert time.monotonic() < deadline, f"data plane not at version {wanted}: {status}"
                await _sleep(0.02)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def _stopped(cluster: Cluster) -> None:
    cluster.stop_all()
    for process in cluster.processes:
        if process.returncode not in (0, None, -15):
            print(f"--- {process.log_path.name} (exit {process.returncode}) ---\n{process.log()}")


@pytest.fixture(scope="module")
def kong(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KongCluster]:
    """The module's control plane (its own embedded Redis), started once."""
    cluster = Cluster(Path(tmp_path_factory.mktemp("kong-spec")), redis_url=None)
    try:
        yield KongCluster(cluster).start()
    finally:
        _stopped(cluster)


@pytest.fixture
def fresh_kong(tmp_path: Path) -> Iterator[KongCluster]:
    """A control plane of its own, with an empty database, for one case."""
    cluster = Cluster(tmp_path, redis_url=None)
    try:
        yield KongCluster(cluster).start()
    finally:
        _stopped(cluster)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session
