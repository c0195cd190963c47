"""mTLS between real ``ferry`` processes: the operator's path from ``ferry cert generate`` on."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from ferry_shared.listen import free_port
from tests.support.ferry_cluster import dp_status
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess


def generate(directory: Path) -> list[str]:
    """Run ``ferry cert generate`` into ``directory``; return the planes' TLS flags for that pair."""
    directory.mkdir(parents=True)
    cert, key = directory / "cluster.crt", directory / "cluster.key"
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "cert", "generate", "--cert", str(cert), "--key", str(key)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return ["--cluster-mtls", "shared", "--cluster-cert", str(cert), "--cluster-cert-key", str(key)]


@pytest.fixture
def processes() -> Iterator[list[FerryProcess]]:
    started: list[FerryProcess] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            process.stop()


async def test_a_data_plane_with_the_wrong_certificate_is_rejected_and_its_log_says_why(
    tmp_path: Path, redis_url: str, processes: list[FerryProcess]
) -> None:
    cluster_flags, foreign_flags = generate(tmp_path / "cluster"), generate(tmp_path / "foreign")
    admin_port, cluster_port = free_port(), free_port()
    cp = FerryProcess(
        ["control-plane", "--admin-listen", f"127.0.0.1:{admin_port}",
         "--cluster-listen", f"127.0.0.1:{cluster_port}", "--data-dir", str(tmp_path / "cp"),
         "--redis-url", redis_url, "--merge-window", "0.01", *cluster_flags],
        tmp_path / "cp.log",
    )
    processes.append(cp)

    def data_plane(name: str, flags: list[str]) -> tuple[FerryProcess, str]:
        status_port = free_port()
        process = FerryProcess(
            ["data-plane", "--control-plane", f"127.0.0.1:{cluster_port}",
             "--proxy-listen", f"127.0.0.1:{free_port()}", "--status-listen", f"127.0.0.1:{status_port}",
             "--data-dir", str(tmp_path / name), "--hostname", name, *flags],
            tmp_path / f"{name}.log",
        )
        processes.append(process)
        return process, f"http://127.0.0.1:{status_port}"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        await wait_http_ok(http, f"http://127.0.0.1:{admin_port}/status", cp)
        assert "mTLS shared" in cp.log()
        right, right_status = data_plane("dp-right", cluster_flags)
        wrong, wrong_status = data_plane("dp-wrong", foreign_flags)

        await wait_http_ok(http, f"{right_status}/status/ready", right)
        await wait_for(lambda: "TLS handshake with the control plane failed" in wrong.log(), timeout=15,
                       message="the wrong-certificate DP to log why it is rejected")
        assert "--cluster-cert" in wrong.log()
        status = await dp_status(http, wrong_status)
        assert status["cluster"]["connected"] is False
        assert "TLS handshake with the control plane failed" in status["cluster"]["last_error"]
        assert status["configuration_hash"] is None

        async def listed() -> list[tuple[str, str]]:
            async with http.get(f"http://127.0.0.1:{admin_port}/clustering/data-planes") as response:
                rows = (await response.json())["data"]
            return [(r["hostname"], r["sync_status"]) for r in rows]

        async def right_synced() -> bool:
            return ("dp-right", "SYNCED") in await listed()

        await wait_for(right_synced, message="the right DP to be SYNCED")
        assert await listed() == [("dp-right", "SYNCED")], "only the DP with the cluster certificate"
