"""Kong's other ``spec/02-integration/08-status_api/*`` specs, case by case.

- ``01-core_routes_spec.lua``: ``/status`` on the status port, and plugin endpoints;
- ``03-readiness_endpoint_spec.lua``: ``/status/ready``;
- ``04-config_spec.lua``: the status API is on by default;
- ``05-dns_client_spec.lua``: ``/status/dns`` (Kong's new DNS client's statistics);
- ``05-metrics_api_spec.lua``: ``/metrics`` while the database is down.

(``02-targets_routes_spec.lua`` is ``test_status_api_targets.py``.) Kong runs the
status port on a traditional node or on a hybrid data plane; Ferry's status port is its
data plane's, so each case runs against a real ``ferry data-plane`` with its real
``ferry control-plane``. Kong repeats the first two files per database strategy (and
its Enterprise copy once more with RBAC on); a Ferry data plane has one mode, so each
``it`` is one test.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from control_plane.embedded_redis import EmbeddedRedis
from ferry_shared.listen import free_port
from tests.support.ferry_cluster import Cluster
from tests.support.kong import KongCluster
from tests.support.polling import wait_for

CORE = "spec/02-integration/08-status_api/01-core_routes_spec.lua"
READINESS = "spec/02-integration/08-status_api/03-readiness_endpoint_spec.lua"
CONFIG = "spec/02-integration/08-status_api/04-config_spec.lua"
DNS = "spec/02-integration/08-status_api/05-dns_client_spec.lua"
METRICS = "spec/02-integration/08-status_api/05-metrics_api_spec.lua"

#: Kong's valid declarative config, and its unparsable one (sent as multipart form data).
VALID_CONFIG = """
_format_version: "3.0"
services:
  - name: test
    url: http://mockbin.org
"""
INVALID_CONFIG = """
  _format"\\!@#$
"""

_SERVER_COUNTERS = (
    "connections_accepted",
    "connections_active",
    "connections_handled",
    "connections_reading",
    "connections_writing",
    "connections_waiting",
    "total_requests",
)


def _assert_status_info(body: dict[str, object], *, database: bool = True) -> None:
    """Kong's assertions on ``/status``: a ``server`` table of numbers (nginx's
    counters) and, in 01-core_routes_spec, ``database.reachable`` a boolean."""
    server = body["server"]
    assert isinstance(server, dict)
    for counter in _SERVER_COUNTERS:
        assert isinstance(server[counter], int), counter
    if database:
        db = body["database"]
        assert isinstance(db, dict)
        assert isinstance(db["reachable"], bool)


async def _status_code(http: aiohttp.ClientSession, url: str) -> int | None:
    try:
        async with http.get(url) as response:
            return response.status
    except aiohttp.ClientConnectionError:
        return None


async def _post_config(http: aiohttp.ClientSession, admin: str, text: str) -> int:
    """Kong's ``POST /config`` with ``config`` as multipart form data."""
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("config", text)
    async with http.post(f"{admin}/config", data=form) as response:
        return response.status


async def _stop(cluster: Cluster) -> None:
    """Data planes first (a control plane gives open streams a grace period), then the rest."""
    for process in cluster.processes:
        if "data-plane" in process.args:
            await asyncio.to_thread(process.stop)
    await asyncio.to_thread(cluster.stop_all)


# ------------------------------------------------------------ 01-core_routes_spec.lua


async def test_status_api_core_status_returns_status_info(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong case "/status returns status info" (Status API, core), in
    spec/02-integration/08-status_api/01-core_routes_spec.lua. The counters count
    the proxy's clients: one proxied request shows."""
    dp = await kong.data_plane()
    await wait_for(lambda: _ready_is(http, dp.status, 200), timeout=15, message="a config")
    async with http.get(f"{dp.proxy}/no-route-here") as response:
        assert response.status == 404  # no route matches
    async with http.get(f"{dp.status}/status") as response:
        assert response.status == 200
        body = await response.json()
    _assert_status_info(body)
    assert body["database"]["reachable"] is True  # it holds a configuration
    assert body["server"]["total_requests"] >= 1
    assert body["server"]["connections_accepted"] >= 1


async def test_status_api_plugins_can_add_endpoints() -> None:
    """Kong case "can add endpoints" (Status API, plugins), in
    spec/02-integration/08-status_api/01-core_routes_spec.lua."""
    pytest.skip(
        "Kong case 'can add endpoints': a plugin (admin-api-method) adds GET /hello to the "
        "status API; Ferry has no plugins"
    )


# ------------------------------------------------------ 03-readiness_endpoint_spec.lua


async def test_status_api_readiness_should_return_200_in_db_mode(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong case "should return 200 in db mode" (status readiness endpoint), in
    spec/02-integration/08-status_api/03-readiness_endpoint_spec.lua: a data plane
    that holds its control plane's configuration is ready."""
    dp = await kong.data_plane()
    async with http.get(f"{dp.status}/status/ready") as response:
        assert response.status == 200


async def test_status_api_readiness_should_return_200_after_loading_an_invalid_config_following_a_previously_uploaded_valid_config(  # noqa: E501
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong case "should return 200 after loading an invalid config following a previously
    uploaded valid config." (status readiness endpoint), in
    spec/02-integration/08-status_api/03-readiness_endpoint_spec.lua."""
    dp = await kong.data_plane()
    async with http.get(f"{dp.status}/status/ready") as response:
        assert response.status == 200
    assert await _post_config(http, kong.admin, INVALID_CONFIG) == 400
    await wait_for(
        lambda: _ready_is(http, dp.status, 200), timeout=5, message="/status/ready 200"
    )


async def _configuration_version(http: aiohttp.ClientSession, status: str) -> int:
    """The data plane's configuration version (0 when it holds none or does not answer)."""
    try:
        async with http.get(f"{status}/status") as response:
            return int((await response.json()).get("configuration_version") or 0)
    except (aiohttp.ClientError, ValueError):
        return 0


async def _ready_is(http: aiohttp.ClientSession, status: str, code: int) -> bool:
    return await _status_code(http, f"{status}/status/ready") == code


async def test_status_api_readiness_should_return_503_when_no_config_and_return_200_after_a_valid_config_is_uploaded(  # noqa: E501
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Kong case "should return 503 when no config, and return 200 after a valid config is
    uploaded" (Status API - with strategy #off, status readiness endpoint), in
    spec/02-integration/08-status_api/03-readiness_endpoint_spec.lua: a data plane
    with no configuration (its control plane not up yet, no cache) is not ready; once
    the control plane is up and a configuration is posted, it is, and an invalid one
    posted after (400) leaves it ready."""
    cluster = Cluster(tmp_path, redis_url=None)
    try:
        cluster_port = free_port()
        dp = cluster.start_data_plane("dp", cluster_port=cluster_port)
        await wait_for(
            lambda: _ready_is(http, dp.status, 503), timeout=15, message="/status/ready 503"
        )
        cluster.start_control_plane("--cluster-listen", f"127.0.0.1:{cluster_port}")
        await wait_for(
            lambda: _status_code(http, f"{cluster.admin}/status"), timeout=30, message="the CP"
        )
        assert await _post_config(http, cluster.admin, VALID_CONFIG) == 201
        # The control plane's first snapshot (version 0, empty) may reach the data plane
        # before the posted one: wait until the posted configuration is the one loaded.
        await wait_for(
            lambda: _configuration_version(http, dp.status), timeout=30,
            message="the posted configuration on the data plane",
        )
        async with http.get(f"{dp.status}/status/ready") as response:
            assert response.status == 200

        assert await _post_config(http, cluster.admin, INVALID_CONFIG) == 400
        await wait_for(
            lambda: _ready_is(http, dp.status, 200), timeout=5, message="/status/ready 200"
        )
    finally:
        await _stop(cluster)


# ---------------------------------------------------------------- 04-config_spec.lua


async def test_status_api_default_enable(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong case "default enable", in spec/02-integration/08-status_api/04-config_spec.lua:
    the status API listens without being configured and ``/status`` has the server
    counters. The default address (127.0.0.1:8100, Kong's) is read from the real
    command's help rather than bound, so the case needs no fixed port."""
    shown = subprocess.run(
        [sys.executable, "-m", "ferry", "data-plane", "--help"],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout
    option = shown[shown.index("\n  --status-listen STATUS_LISTEN") :]
    assert "(default: 127.0.0.1:8100)" in " ".join(option.split()[:12])
    dp = await kong.data_plane()
    async with http.get(f"{dp.status}/status") as response:
        assert response.status == 200
        _assert_status_info(await response.json(), database=False)


# ------------------------------------------------------------ 05-dns_client_spec.lua

_NO_DNS_STATS = (
    "Kong's new DNS client's statistics endpoint; Ferry's resolver keeps no per-query "
    "statistics and serves no /status/dns (names that do not resolve show as DNS_ERROR in "
    "/upstreams/{u}/health and in /metrics)"
)


async def test_status_api_traditional_status_dns_status_code_200() -> None:
    """Kong case "/status/dns - status code 200" ([#traditional] Status API - DNS client
    route, new_dns_client on), in spec/02-integration/08-status_api/05-dns_client_spec.lua."""
    pytest.skip(
        "Kong case '/status/dns - status code 200' (traditional): a traditional node "
        f"(Ferry's data planes are hybrid only) and {_NO_DNS_STATS}"
    )


async def test_status_api_traditional_status_dns_status_code_501() -> None:
    """Kong case "/status/dns - status code 501" ([#traditional] Status API - DNS client
    route, new_dns_client off), in spec/02-integration/08-status_api/05-dns_client_spec.lua."""
    pytest.skip(
        "Kong case '/status/dns - status code 501': Kong's legacy DNS client "
        "(new_dns_client = off) on a traditional node; Ferry has one resolver and no "
        "traditional mode"
    )


async def test_status_api_hybrid_status_dns_status_code_200() -> None:
    """Kong case "/status/dns - status code 200" ([#hybrid] Status API - DNS client route),
    in spec/02-integration/08-status_api/05-dns_client_spec.lua."""
    pytest.skip(f"Kong case '/status/dns - status code 200' (hybrid): {_NO_DNS_STATS}")


# ----------------------------------------------------------- 05-metrics_api_spec.lua


async def test_metrics_api_can_work_even_if_database_is_down(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """Kong case " can work even if database is down" (Metrics API, `/metrics` endpoint),
    in spec/02-integration/08-status_api/05-metrics_api_spec.lua: a data plane's
    ``/metrics`` answers while the database (the control plane's Redis, a real
    redis-server of this case's own) is down."""
    redis = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    await asyncio.to_thread(redis.start)
    cluster = Cluster(tmp_path, redis_url=redis.url)
    try:
        kong = await asyncio.to_thread(KongCluster(cluster).start)
        dp = await kong.data_plane()
        async with http.get(f"{dp.status}/metrics") as response:
            assert response.status == 200

        await asyncio.to_thread(redis.stop)

        async def database_down() -> bool:
            async with http.get(f"{kong.admin}/status") as response:
                return (await response.json())["database"]["reachable"] is False

        await wait_for(database_down, timeout=10, message="the CP to see its database down")
        async with http.get(f"{dp.status}/metrics") as response:
            assert response.status == 200
            assert "kong_nginx_requests_total" in await response.text()
    finally:
        await _stop(cluster)
        await asyncio.to_thread(redis.stop)
