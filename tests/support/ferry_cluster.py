"""Real ``ferry control-plane`` / ``ferry data-plane`` child processes on free ports.

:class:`Cluster` starts them (plaintext cluster link) and stops them all; the helpers
read a data plane's ``/status`` and wait until it serves what the control plane holds.
:func:`start_two_worker_node` and :func:`worker_pids` serve the multi-worker tests.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from ferry_shared.listen import free_port
from tests.support.admin import admin
from tests.support.backends import FlipBackend
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess


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
        self, name: str = "dp1", *extra: str, cluster_port: int | None = None, tls: bool = False,
        http2: bool = False,
    ) -> DataPlaneProc:
        """A data plane on free ports; with ``tls``, a second proxy listener with ``ssl``;
        with ``http2``, Kong's ``http2`` flag on each listener."""
        proxy_port, status_port = free_port(), free_port()
        tls_port = free_port() if tls else 0
        flag = " http2" if http2 else ""
        listen = f"127.0.0.1:{proxy_port}{flag}" + (f", 127.0.0.1:{tls_port} ssl{flag}" if tls else "")
        process = FerryProcess(
            [
                "data-plane",
                "--control-plane", f"127.0.0.1:{cluster_port or self.cluster_port}",
                "--proxy-listen", listen,
                "--status-listen", f"127.0.0.1:{status_port}",
                "--data-dir", str(self.tmp_path / name),
                "--hostname", name,
                "--cluster-insecure",
                *extra,
            ],
            self.tmp_path / f"{name}.log",
        )
        self.processes.append(process)
        return DataPlaneProc(process, proxy_port, status_port, tls_port)

    def stop_all(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class DataPlaneProc:
    def __init__(self, process: FerryProcess, proxy_port: int, status_port: int, tls_port: int = 0) -> None:
        self.process = process
        self.proxy = f"http://127.0.0.1:{proxy_port}"
        self.status = f"http://127.0.0.1:{status_port}"
        #: The ``ssl`` proxy listener's port (0: none).
        self.tls_port = tls_port


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


async def start_two_worker_node(
    cluster: Cluster, http: aiohttp.ClientSession, stack: AsyncExitStack, checks: dict[str, Any]
) -> tuple[DataPlaneProc, FlipBackend, FlipBackend]:
    """A control plane, two :class:`FlipBackend` targets of upstream and service "shop"
    (route ``/shop``, ``checks`` as its health checks) and a data-plane node "node" with
    two workers, serving that config: (node, target a, target b)."""
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    a, b = FlipBackend("a"), FlipBackend("b")
    await a.start(stack)
    await b.start(stack)
    await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "shop", "healthchecks": checks})
    for backend in (a, b):
        await admin(http, "POST", f"{cluster.admin}/upstreams/shop/targets", {"target": backend.key})
    await admin(http, "POST", f"{cluster.admin}/services", {"name": "shop", "host": "shop", "port": 80})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
    dp = cluster.start_data_plane("node", "--workers", "2")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)
    return dp, a, b


async def worker_pids(dp: DataPlaneProc) -> list[int]:
    """The node's worker processes, from /proc (children of the node process)."""
    node = dp.process.process.pid
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        if int(fields[1]) == node and b"data-plane-worker" in cmdline and fields[0] != "Z":
            children.append(int(entry))
    return sorted(children)
