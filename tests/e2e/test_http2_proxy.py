"""A real ``ferry data-plane`` whose listeners carry Kong's ``http2`` flag: ``curl
--http2`` (ALPN) and ``--http2-prior-knowledge`` (h2c) through it, alone and with
``--workers 2``; HTTP/1.1 clients on the same ports."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from contextlib import AsyncExitStack

import aiohttp
import pytest

from tests.support.admin import admin
from tests.support.backends import start_backend
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.http import wait_http_ok


def _curl(*args: str) -> str:
    """``curl`` → ``"<http_version> <status>"``."""
    done = subprocess.run(
        ["curl", "-sS", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
@pytest.mark.parametrize("workers", [1, 2])
async def test_curl_gets_http2_on_listeners_with_the_http2_flag(
    cluster: Cluster, http: aiohttp.ClientSession, workers: int
) -> None:
    async with AsyncExitStack() as stack:
        cp = cluster.start_control_plane()
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        backend = await start_backend(stack, "shop")
        await admin(http, "POST", f"{cluster.admin}/services",
                    {"name": "shop", "host": "127.0.0.1", "port": backend.port})
        await admin(http, "POST", f"{cluster.admin}/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
        extra = ("--workers", str(workers)) if workers > 1 else ()
        dp = cluster.start_data_plane("node", *extra, tls=True, http2=True)
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        await wait_dp_synced(http, cluster, dp.status)
        tls_url = f"https://127.0.0.1:{dp.tls_port}/shop/"
        assert await asyncio.to_thread(_curl, "--http2", tls_url) == "2 200"
        assert await asyncio.to_thread(_curl, "--http1.1", tls_url) == "1.1 200"
        assert await asyncio.to_thread(_curl, "--http2-prior-knowledge", f"{dp.proxy}/shop/") == "2 200"
        assert await asyncio.to_thread(_curl, f"{dp.proxy}/shop/") == "1.1 200"
        assert await asyncio.to_thread(_curl, "--http2-prior-knowledge", f"{dp.proxy}/none") == "2 404"
        assert dp.process.returncode is None
