"""A real ``ferry data-plane`` with an ``ssl`` proxy listener (Kong's 8443): HTTPS
through it with ``curl``, the default certificate kept in the data directory, and the
listeners and certificate expiry in ``GET /status`` and ``/metrics``; the same with
``--workers 2``."""

from __future__ import annotations

import asyncio
import subprocess
import time
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from tests.support.admin import admin
from tests.support.backends import start_backend
from tests.support.ferry_cluster import Cluster, DataPlaneProc, dp_status, wait_dp_synced
from tests.support.http import wait_http_ok
from tests.support.metrics import scrape
from tests.support.polling import wait_for
from tests.support.tls import make_authority


def _curl_https(port: int, path: str, *, ca: Path | None = None, name: str = "shop.test") -> tuple[int, str]:
    """``curl`` over HTTPS with SNI ``name``: (status, stderr); status 0 when the
    certificate did not verify against ``ca`` (without ``ca``: not verified)."""
    trust = ["--cacert", str(ca)] if ca is not None else ["-k"]
    done = subprocess.run(
        ["curl", "-sS", *trust, "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
         "--resolve", f"{name}:{port}:127.0.0.1", f"https://{name}:{port}{path}"],
        capture_output=True, text=True, timeout=30,
    )
    if ca is not None and done.returncode == 60:
        return 0, done.stderr
    assert done.returncode == 0, done.stderr
    return int(done.stdout), done.stderr


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


async def test_a_certificate_made_through_the_admin_api_is_served_by_sni_and_swapped_live(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        dp = await _node_with_tls(cluster, http, stack)
        ca = make_authority(cluster.tmp_path / "ca", "Shop CA")
        first = ca.issue(cluster.tmp_path / "ca", "first", ["shop.test"])
        created = await admin(http, "POST", f"{cluster.admin}/certificates", {
            "cert": first.cert.read_text(), "key": first.key.read_text(), "snis": ["shop.test"],
        })

        async def verified() -> bool:
            await wait_dp_synced(http, cluster, dp.status)
            code, _ = await asyncio.to_thread(_curl_https, dp.tls_port, "/shop/", ca=ca.pair.cert)
            return code == 200

        await wait_for(verified, timeout=15, message="the SNI certificate served")
        # Another name still gets the default certificate, which the CA did not sign.
        code, _ = await asyncio.to_thread(_curl_https, dp.tls_port, "/shop/", ca=ca.pair.cert, name="other.test")
        assert code == 0

        status = await dp_status(http, dp.status)
        served = {row["id"]: row["snis"] for row in status["tls"]["certificates"]}
        assert served == {"default": [], created["id"]: ["shop.test"]}

        # Deleting it falls back to the default certificate, without a restart.
        await admin(http, "DELETE", f"{cluster.admin}/certificates/{created['id']}")
        await wait_dp_synced(http, cluster, dp.status)
        code, _ = await asyncio.to_thread(_curl_https, dp.tls_port, "/shop/", ca=ca.pair.cert)
        assert code == 0
        assert dp.process.returncode is None
