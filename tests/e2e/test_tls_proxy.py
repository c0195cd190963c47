"""A real ``ferry data-plane`` with an ``ssl`` proxy listener (Kong's 8443): HTTPS
through it with ``curl``, the default certificate kept in the data directory, and the
listeners and certificate expiry in ``GET /status`` and ``/metrics``; the same with
``--workers 2``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from contextlib import AsyncExitStack

import aiohttp
import pytest

from tests.support.admin import admin
from tests.support.backends import start_backend
from tests.support.ferry_cluster import Cluster, DataPlaneProc, dp_status, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.metrics import scrape


def _curl_https(port: int, path: str) -> tuple[int, str]:
    done = subprocess.run(
        ["curl", "-sS", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code} %{ssl_verify_result}",
         "--resolve", f"shop.test:{port}:127.0.0.1", f"https://shop.test:{port}{path}"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    code, _ = done.stdout.split()
    return int(code), done.stderr


async def _node_with_tls(
    cluster: Cluster, http: aiohttp.ClientSession, stack: AsyncExitStack, *extra: str
) -> DataPlaneProc:
    cp = cluster.start_control_plane()
    await wait_http_ok(http, f"{cluster.admin}/status", cp)
    backend = await start_backend(stack, "shop")
    await admin(http, "POST", f"{cluster.admin}/services",
                {"name": "shop", "host": "127.0.0.1", "port": backend.port})
    await admin(http, "POST", f"{cluster.admin}/services/shop/routes",
                {"name": "shop", "paths": ["/shop"], "protocols": ["https"]})
    dp = cluster.start_data_plane("node", *extra, tls=True)
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    await wait_dp_synced(http, cluster, dp.status)
    return dp


@pytest.mark.parametrize("workers", [1, 2])
async def test_https_on_the_ssl_listener_with_the_default_certificate(
    cluster: Cluster, http: aiohttp.ClientSession, workers: int
) -> None:
    async with AsyncExitStack() as stack:
        extra = ("--workers", str(workers)) if workers > 1 else ()
        dp = await _node_with_tls(cluster, http, stack, *extra)
        codes = [await asyncio.to_thread(_curl_https, dp.tls_port, "/shop/") for _ in range(6)]
        assert {code for code, _ in codes} == {200}
        # The route is https-only: plaintext gets Kong's 426.
        async with http.get(f"{dp.proxy}/shop/") as response:
            assert response.status == 426

        status = await dp_status(http, dp.status)
        assert status["tls"]["listeners"] == [dp.proxy.removeprefix("http://"), f"127.0.0.1:{dp.tls_port} ssl"]
        (default,) = status["tls"]["certificates"]
        assert default["id"] == "default"
        assert default["expires_in_seconds"] > 300 * 86400
        assert (cluster.tmp_path / "node" / "tls" / "default.key").exists()

        metrics = await scrape(http, dp.status)
        not_after = metrics.value("ferry_certificate_not_after_seconds", certificate="default", slot="cert")
        assert not_after == pytest.approx(time.time() + default["expires_in_seconds"], abs=60)
