"""A real Prometheus server scrapes a real control plane (with a read-only admin token)
and a real data plane, and its HTTP API returns the series.

Prometheus is Debian's ``prometheus`` package: installed by this test's set-up when
missing, and the test is skipped, loudly, only when it cannot be installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from control_plane.admin_tokens import add_token
from ferry_shared.listen import free_port
from tests.support.ferry_cluster import Cluster
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for

PROMETHEUS = "/usr/bin/prometheus"


def _install_prometheus() -> str | None:
    """Install Debian's prometheus if missing; ``None`` on success, else why not."""
    if shutil.which("prometheus") or os.path.exists(PROMETHEUS):
        return None
    if shutil.which("apt-get") is None:
        return "apt-get is not available"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        return f"`{' '.join(install)}` failed ({result.returncode}): {(result.stdout + result.stderr)[-1500:]}"
    return None


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    why_not = _install_prometheus()
    if why_not is not None:
        pytest.skip(f"PROMETHEUS NOT AVAILABLE, the real-Prometheus test did not run: {why_not}")
    return shutil.which("prometheus") or PROMETHEUS


class Prometheus:
    """A ``prometheus`` child process on a free port with its own TSDB directory."""

    def __init__(self, binary: str, config: dict[str, Any], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config_path = workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture
def prometheus_server(prometheus_binary: str, tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Prometheus]]:
    started: list[Prometheus] = []

    def start(config: dict[str, Any]) -> Prometheus:
        server = Prometheus(prometheus_binary, config, tmp_path / "prometheus")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()


async def query(http: aiohttp.ClientSession, prom: Prometheus, expr: str) -> list[dict[str, Any]]:
    """The instant vector Prometheus answers for ``expr`` ([] while not scraped yet)."""
    try:
        async with http.get(f"{prom.url}/api/v1/query", params={"query": expr}) as response:
            if response.status != 200:
                return []
            body = await response.json()
    except (aiohttp.ClientError, OSError):
        return []
    assert body["status"] == "success", body
    return list(body["data"]["result"])


async def test_prometheus_scrapes_the_control_plane_and_the_data_plane(
    cluster: Cluster,
    http: aiohttp.ClientSession,
    backends: Callable[[str], Any],
    prometheus_server: Callable[[dict[str, Any]], Prometheus],
    tmp_path: Path,
) -> None:
    tokens = tmp_path / "tokens.yaml"
    admin_token = add_token(tokens, "ops", "admin")
    scraper_token = add_token(tokens, "prometheus", "read-only")
    cp = cluster.start_control_plane("--admin-tokens", str(tokens))
    auth = {"Ferry-Admin-Token": admin_token}
    await wait_for(lambda: _ok(http, f"{cluster.admin}/status", auth, cp), timeout=30,
                   message="the control plane to answer")
    port = await backends("a")  # type: ignore[misc]
    for path, body in [
        ("/upstreams", {"name": "shop"}),
        ("/upstreams/shop/targets", {"target": f"127.0.0.1:{port}"}),
        ("/services", {"name": "shop", "host": "shop", "port": 80}),
        ("/services/shop/routes", {"name": "shop-route", "paths": ["/shop"]}),
    ]:
        async with http.post(cluster.admin + path, json=body, headers=auth) as response:
            assert response.status == 201, await response.text()
    dp = cluster.start_data_plane("dp-prom")
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    for _ in range(5):
        async with http.get(f"{dp.proxy}/shop") as response:
            assert response.status == 200

    prom = prometheus_server({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "ferry-control-plane",
                "authorization": {"type": "Bearer", "credentials": scraper_token},
                "static_configs": [{"targets": [f"127.0.0.1:{cluster.admin_port}"]}],
            },
            {
                "job_name": "ferry-data-plane",
                "static_configs": [{"targets": [dp.status.removeprefix("http://")]}],
            },
        ],
    })

    async def series(expr: str) -> list[dict[str, Any]]:
        assert prom.process.poll() is None, f"prometheus exited:\n{prom.log()}"
        return await query(http, prom, expr)

    async def both_up() -> bool:
        return len(await series("up == 1")) == 2

    try:
        await wait_for(both_up, timeout=60, interval=0.5, message="Prometheus to scrape both planes")
    except AssertionError:
        raise AssertionError(f"targets: {await series('up')}\n{prom.log()[-3000:]}") from None

    [requests] = await wait_for(
        lambda: series('kong_http_requests_total{service="shop",route="shop-route",code="200"}'),
        timeout=30, interval=0.5, message="the DP's request counter in Prometheus",
    )
    assert float(requests["value"][1]) >= 5
    assert requests["metric"]["job"] == "ferry-data-plane"
    [health] = await wait_for(
        lambda: series('kong_upstream_target_health{upstream="shop",state="healthchecks_off"}'),
        timeout=30, interval=0.5, message="target health in Prometheus",
    )
    assert health["value"][1] == "1"
    assert await wait_for(lambda: series('kong_request_latency_ms_count{service="shop"} >= 5'),
                          timeout=30, interval=0.5, message="the latency histogram")
    [seen] = await wait_for(lambda: series('kong_data_plane_last_seen{hostname="dp-prom"}'),
                            timeout=30, interval=0.5, message="the CP's data-plane series")
    assert seen["metric"]["job"] == "ferry-control-plane"
    [synced] = await wait_for(
        lambda: series('ferry_data_plane_sync_status{hostname="dp-prom",sync_status="SYNCED"} == 1'),
        timeout=30, interval=0.5, message="the DP's sync status on the CP",
    )
    assert synced["metric"]["job"] == "ferry-control-plane"
    assert await series("kong_datastore_reachable == 1")
    assert await series('ferry_config_version{job="ferry-data-plane"}')


async def _ok(http: aiohttp.ClientSession, url: str, headers: dict[str, str], process: Any) -> bool:
    assert process.returncode is None, f"exited {process.returncode}:\n{process.log()}"
    try:
        async with http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False
