"""Fixtures that run real ``ferry control-plane`` / ``ferry data-plane`` processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from control_plane.embedded_redis import EmbeddedRedis
from ferry.demo_backend import start_demo_backend
from ferry_shared.listen import free_port
from tests.support import FerryProcess, wait_for


class Cluster:
    """Starts ferry processes on free ports and stops them all at teardown."""

    def __init__(self, tmp_path: Path, redis_url: str | None) -> None:
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.processes: list[FerryProcess] = []
        self.admin_port = 0
        self.cluster_port = 0

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start_control_plane(self, *extra: str, name: str = "cp") -> FerryProcess:
        self.admin_port = free_port()
        self.cluster_port = free_port()
        args = [
            "control-plane",
            "--admin-listen", f"127.0.0.1:{self.admin_port}",
            "--cluster-listen", f"127.0.0.1:{self.cluster_port}",
            "--data-dir", str(self.tmp_path / name),
            "--cluster-insecure",
            "--merge-window", "0.01",
            *extra,
        ]
        if self.redis_url:
            args += ["--redis-url", self.redis_url]
        process = FerryProcess(args, self.tmp_path / f"{name}.log")
        self.processes.append(process)
        return process

    def start_data_plane(
        self, name: str = "dp1", *extra: str, cluster_port: int | None = None
    ) -> DataPlaneProc:
        proxy_port, status_port = free_port(), free_port()
        process = FerryProcess(
            [
                "data-plane",
                "--control-plane", f"127.0.0.1:{cluster_port or self.cluster_port}",
                "--proxy-listen", f"127.0.0.1:{proxy_port}",
                "--status-listen", f"127.0.0.1:{status_port}",
                "--data-dir", str(self.tmp_path / name),
                "--hostname", name,
                "--cluster-insecure",
                *extra,
            ],
            self.tmp_path / f"{name}.log",
        )
        self.processes.append(process)
        return DataPlaneProc(process, proxy_port, status_port)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class DataPlaneProc:
    def __init__(self, process: FerryProcess, proxy_port: int, status_port: int) -> None:
        self.process = process
        self.proxy = f"http://127.0.0.1:{proxy_port}"
        self.status = f"http://127.0.0.1:{status_port}"


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


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[str], object]]:
    """Start named demo backends on free ports; all stopped at teardown."""
    runners: list[web.AppRunner] = []

    async def start(name: str) -> int:
        runner, port = await start_demo_backend(name)
        runners.append(runner)
        return port

    try:
        yield start  # type: ignore[misc]
    finally:
        for runner in runners:
            await runner.cleanup()


async def http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def wait_http_ok(session: aiohttp.ClientSession, url: str, process: FerryProcess, timeout: float = 30) -> None:
    async def ready() -> bool:
        assert process.returncode is None, f"process exited {process.returncode}:\n{process.log()}"
        return await http_ok(session, url)

    await wait_for(ready, timeout=timeout, message=f"{url} to answer 200")


async def admin(http: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    async with http.request(method, url, json=body) as response:
        payload = await response.json(content_type=None) if response.status != 204 else None
        assert response.status < 300, f"{method} {url} → {response.status} {payload}"
        return payload


async def backend_of(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        assert response.status == 200, await response.text()
        return str((await response.json())["backend"])


async def dp_status(http: aiohttp.ClientSession, status_url: str) -> dict[str, Any]:
    async with http.get(f"{status_url}/status") as response:
        return dict(await response.json())


async def cp_version(http: aiohttp.ClientSession, cluster: Cluster) -> int:
    async with http.get(f"{cluster.admin}/status") as response:
        return int((await response.json())["configuration_version"])


async def wait_dp_synced(http: aiohttp.ClientSession, cluster: Cluster, status_url: str) -> dict[str, Any]:
    wanted = await cp_version(http, cluster)

    async def synced() -> dict[str, Any] | None:
        status = await dp_status(http, status_url)
        return status if (status["configuration_version"] or 0) >= wanted else None

    result = await wait_for(synced, timeout=15, message=f"data plane at version {wanted}")
    assert result is not None
    return result
