"""Load balancing and proxy semantics through real processes.

One control plane, one data plane and three demo backends (real processes) are
started once for this module; each test creates its own upstream, service and
route through the Admin API, waits until the data plane applied them, and sends
real requests through the proxy.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import redis

import ferry
from control_plane.embedded_redis import EmbeddedRedis
from ferry_shared.listen import free_port
from tests.support.admin import admin
from tests.support.http import wait_http_ok_sync
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess

_names = itertools.count(1)


class Gateway:
    def __init__(self, admin_url: str, proxy: str, status: str, backends: dict[str, int]) -> None:
        self.admin = admin_url
        self.proxy = proxy
        self.status = status
        self.backends = backends  # name → port
        self.dead_port = free_port()  # nothing listens here


@pytest.fixture(scope="module")
def gateway(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    client.close()
    tmp = tmp_path_factory.mktemp("lb")
    admin_port, cluster_port, proxy_port, status_port = (free_port() for _ in range(4))
    processes: list[FerryProcess] = []
    backends: list[subprocess.Popen[bytes]] = []
    try:
        cp = FerryProcess(
            ["control-plane", "--admin-listen", f"127.0.0.1:{admin_port}",
             "--cluster-listen", f"127.0.0.1:{cluster_port}", "--data-dir", str(tmp / "cp"),
             "--redis-url", redis_server.url, "--cluster-insecure", "--merge-window", "0.01"],
            tmp / "cp.log",
        )
        processes.append(cp)
        ports: dict[str, int] = {}
        for name in ("a", "b", "c"):
            ports[name] = free_port()
            backends.append(subprocess.Popen(
                [sys.executable, "-m", "ferry.demo_backend", "--name", name, "--port", str(ports[name])],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        dp = FerryProcess(
            ["data-plane", "--control-plane", f"127.0.0.1:{cluster_port}",
             "--proxy-listen", f"127.0.0.1:{proxy_port}", "--status-listen", f"127.0.0.1:{status_port}",
             "--data-dir", str(tmp / "dp"), "--cluster-insecure"],
            tmp / "dp.log",
        )
        processes.append(dp)
        wait_http_ok_sync(f"http://127.0.0.1:{admin_port}/status", cp)
        for name, backend in zip(ports, backends, strict=True):
            wait_http_ok_sync(f"http://127.0.0.1:{ports[name]}/", backend)
        wait_http_ok_sync(f"http://127.0.0.1:{status_port}/status/ready", dp)
        yield Gateway(f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{proxy_port}",
                      f"http://127.0.0.1:{status_port}", ports)
    finally:
        for backend in backends:
            backend.terminate()
        for backend in backends:
            try:
                backend.wait(10)
            except subprocess.TimeoutExpired:
                backend.kill()
                backend.wait()
        for process in reversed(processes):
            process.stop()


async def synced(http: aiohttp.ClientSession, gw: Gateway) -> None:
    """Wait until the data plane applied every write made so far."""
    async with http.get(f"{gw.admin}/status") as response:
        wanted = (await response.json())["configuration_version"]

    async def applied() -> bool:
        async with http.get(f"{gw.status}/status") as response:
            return bool(((await response.json())["configuration_version"] or 0) >= wanted)

    await wait_for(applied, timeout=15, message=f"the data plane to apply version {wanted}")


class Exposer:
    """Creates upstream + targets + service + route per call; deletes them after the test.

    Deleting keeps one test's config (say, one a data plane rejects) from leaking
    into the next test's snapshots.
    """

    def __init__(self, http: aiohttp.ClientSession, gw: Gateway) -> None:
        self.http = http
        self.gw = gw
        self.names: list[str] = []

    async def __call__(
        self,
        targets: list[str | tuple[str, int]],
        *,
        upstream: dict[str, Any] | None = None,
        service: dict[str, Any] | None = None,
        route: dict[str, Any] | None = None,
    ) -> str:
        """Return the route's base URL once the data plane applied it."""
        http, gw = self.http, self.gw
        name = f"lb{next(_names)}"
        self.names.append(name)
        await admin(http, "POST", f"{gw.admin}/upstreams", {"name": name, **(upstream or {})})
        for target in targets:
            address, weight = (target, 100) if isinstance(target, str) else target
            if address in gw.backends:
                address = f"127.0.0.1:{gw.backends[address]}"
            await admin(http, "POST", f"{gw.admin}/upstreams/{name}/targets",
                        {"target": address, "weight": weight})
        await admin(http, "POST", f"{gw.admin}/services",
                    {"name": name, "host": name, "port": 80, **(service or {})})
        await admin(http, "POST", f"{gw.admin}/services/{name}/routes",
                    {"name": name, "paths": [f"/{name}"], **(route or {})})
        await synced(http, gw)
        return f"{gw.proxy}/{name}"

    async def cleanup(self) -> None:
        for name in self.names:
            for path in (f"/routes/{name}", f"/services/{name}", f"/upstreams/{name}"):
                async with self.http.delete(f"{self.gw.admin}{path}"):
                    pass


@pytest.fixture
async def expose(gateway: Gateway, http: aiohttp.ClientSession) -> Any:
    exposer = Exposer(http, gateway)
    try:
        yield exposer
    finally:
        await exposer.cleanup()


async def call(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
    async with http.get(url, **kw) as response:
        body = await response.json(content_type=None)
        return response.status, dict(response.headers), body


async def backend(http: aiohttp.ClientSession, url: str, **kw: Any) -> str:
    status, _, body = await call(http, url, **kw)
    assert status == 200, body
    return str(body["backend"])


# ------------------------------------------------------------------ round-robin


async def test_round_robin_splits_by_weight_without_bursts(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose([("a", 300), ("b", 100)])
    seen = [await backend(http, f"{url}/") for _ in range(40)]
    assert Counter(seen) == {"a": 30, "b": 10}
    assert "bb" not in "".join(seen), "smooth: the light target never gets two in a row"


async def test_a_weight_zero_target_gets_nothing(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", ("b", 0)])
    assert {await backend(http, f"{url}/") for _ in range(10)} == {"a"}


# ------------------------------------------------------------- consistent hashing


def hashing(hash_on: str, **fields: Any) -> dict[str, Any]:
    return {"algorithm": "consistent-hashing", "hash_on": hash_on, **fields}


async def spread(http: aiohttp.ClientSession, urls_and_kw: list[tuple[str, dict[str, Any]]]) -> dict[int, set[str]]:
    """Send each request twice; map request index → the backends that answered it."""
    answers: dict[int, set[str]] = {}
    for _ in range(2):
        for index, (url, kw) in enumerate(urls_and_kw):
            answers.setdefault(index, set()).add(await backend(http, url, **kw))
    return answers


def assert_sticky_and_spread(answers: dict[int, set[str]]) -> None:
    assert all(len(seen) == 1 for seen in answers.values()), f"a key always lands on one target: {answers}"
    assert len(set().union(*answers.values())) >= 2, f"different keys spread over targets: {answers}"


async def test_hash_on_header_sends_each_header_value_to_one_target(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b", "c"], upstream=hashing("header", hash_on_header="X-User"))
    answers = await spread(http, [(f"{url}/", {"headers": {"X-User": f"user-{i}"}}) for i in range(20)])
    assert_sticky_and_spread(answers)


async def test_hash_on_path_sends_each_path_to_one_target(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b", "c"], upstream=hashing("path"))
    assert_sticky_and_spread(await spread(http, [(f"{url}/item/{i}", {}) for i in range(20)]))


async def test_hash_on_query_arg_ignores_the_order_of_repeated_values(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b", "c"], upstream=hashing("query_arg", hash_on_query_arg="cart"))
    assert_sticky_and_spread(await spread(http, [(f"{url}/?cart={i}", {}) for i in range(20)]))
    for i in range(10):
        assert await backend(http, f"{url}/?cart={i}&cart=x") == await backend(http, f"{url}/?cart=x&cart={i}")


async def test_hash_on_uri_capture_uses_the_named_capture_of_the_route(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    name = f"cap{next(_names)}"
    url = await expose(
        ["a", "b", "c"],
        upstream=hashing("uri_capture", hash_on_uri_capture="account"),
        route={"paths": [rf"~/{name}/(?<account>\d+)/"]},
    )
    base = url.rsplit("/", 1)[0] + f"/{name}"
    assert_sticky_and_spread(await spread(http, [(f"{base}/{i}/orders/{i % 3}", {}) for i in range(20)]))
    # The rest of the path does not matter, only the capture.
    assert await backend(http, f"{base}/7/x") == await backend(http, f"{base}/7/y/z")


async def test_hash_on_ip_keeps_one_client_on_one_target(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b", "c"], upstream=hashing("ip"))
    assert len({await backend(http, f"{url}/{i}") for i in range(10)}) == 1


async def test_hash_on_cookie_sets_a_cookie_and_then_sticks_to_its_target(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b", "c"],
                       upstream=hashing("cookie", hash_on_cookie="ferry-sticky", hash_on_cookie_path="/app"))
    cookies: list[str] = []
    for _ in range(12):
        async with http.get(f"{url}/", headers={"Cookie": ""}) as response:
            set_cookie = response.headers.get("Set-Cookie", "")
            assert set_cookie.startswith("ferry-sticky="), set_cookie
            assert "Path=/app" in set_cookie and "HttpOnly" in set_cookie
            cookies.append(set_cookie.split(";", 1)[0])
            http.cookie_jar.clear()
    assert len(set(cookies)) == 12, "a fresh value for each client without the cookie"
    answers = await spread(http, [(f"{url}/", {"headers": {"Cookie": cookie}}) for cookie in cookies])
    assert_sticky_and_spread(answers)
    async with http.get(f"{url}/", headers={"Cookie": cookies[0]}) as response:
        assert "Set-Cookie" not in response.headers, "no new cookie when the client sent one"


async def test_hash_fallback_is_used_when_the_primary_value_is_missing(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b", "c"],
                       upstream=hashing("header", hash_on_header="X-User", hash_fallback="query_arg",
                                        hash_fallback_query_arg="session"))
    assert_sticky_and_spread(await spread(http, [(f"{url}/?session={i}", {}) for i in range(20)]))


async def test_hash_on_consumer_without_consumers_uses_the_fallback(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    # Ferry has no consumers (no auth plugins yet), so a consumer key never exists and
    # every request hashes on the fallback, as Kong does for an anonymous request.
    url = await expose(["a", "b", "c"],
                       upstream=hashing("consumer", hash_fallback="header", hash_fallback_header="X-Team"))
    assert_sticky_and_spread(await spread(http, [(f"{url}/", {"headers": {"X-Team": f"t{i}"}}) for i in range(20)]))


async def test_hash_on_none_with_consistent_hashing_still_serves(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a", "b"], upstream={"algorithm": "consistent-hashing"})
    assert all([await backend(http, f"{url}/") in {"a", "b"} for _ in range(6)])


async def test_least_connections_and_latency_balance_over_live_targets(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    for algorithm in ("least-connections", "latency"):
        url = await expose(["a", "b"], upstream={"algorithm": algorithm})
        seen = {await backend(http, f"{url}/") for _ in range(20)}
        assert seen <= {"a", "b"} and seen, (algorithm, seen)


# ------------------------------------------------------------------ error answers


async def test_502_when_the_only_target_refuses_connections(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose([f"127.0.0.1:{gateway.dead_port}"], service={"retries": 2})
    status, _, body = await call(http, f"{url}/")
    assert status == 502
    assert body == {"message": "An invalid response was received from the upstream server"}


async def test_503_when_the_upstream_has_no_usable_target(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    for targets in ([], [("a", 0)]):
        url = await expose(targets)  # type: ignore[arg-type]
        status, _, body = await call(http, f"{url}/")
        assert status == 503
        assert body == {"message": "failure to get a peer from the ring-balancer"}


async def test_504_when_the_target_answers_slower_than_read_timeout(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"], service={"read_timeout": 200, "retries": 0})
    status, _, body = await call(http, f"{url}/delay/5000")
    assert status == 504
    assert body == {"message": "The upstream server is timing out"}


async def test_a_pooled_connection_times_out_by_the_read_timeout_of_the_request_it_carries(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    # Both services reach target "a", so the second request reuses the connection the
    # first (60 s timeout) left in the pool: its own 200 ms must still apply.
    patient = await expose(["a"], service={"read_timeout": 60000, "retries": 0})
    hasty = await expose(["a"], service={"read_timeout": 200, "retries": 0})
    assert await backend(http, f"{patient}/") == "a"
    status, _, body = await call(http, f"{hasty}/delay/5000", timeout=aiohttp.ClientTimeout(total=4))
    assert status == 504
    assert body == {"message": "The upstream server is timing out"}


async def test_a_request_is_answered_by_another_target_when_the_first_refuses(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose([f"127.0.0.1:{gateway.dead_port}", "a"])
    assert [await backend(http, f"{url}/") for _ in range(10)] == ["a"] * 10


# ---------------------------------------------------------- paths and Host header


async def test_strip_path_false_keeps_the_matched_prefix_and_service_path_is_prepended(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"], service={"path": "/base"}, route={"strip_path": False})
    prefix = url.rsplit("/", 1)[1]
    _, _, body = await call(http, f"{url}/x?y=1")
    assert body["path"] == f"/base/{prefix}/x"
    assert body["query"] == "y=1"


async def test_strip_path_true_removes_the_matched_prefix(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"])
    _, _, body = await call(http, f"{url}/x/y")
    assert body["path"] == "/x/y"


async def test_preserve_host_sends_the_clients_host(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"], route={"preserve_host": True})
    _, _, body = await call(http, f"{url}/", headers={"Host": "shop.example.com"})
    assert body["headers"]["Host"] == "shop.example.com"


async def test_upstream_host_header_is_sent_when_host_is_not_preserved(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"], upstream={"host_header": "internal.example"})
    _, _, body = await call(http, f"{url}/", headers={"Host": "shop.example.com"})
    assert body["headers"]["Host"] == "internal.example"


async def test_without_host_header_the_target_address_is_the_host(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"])
    _, _, body = await call(http, f"{url}/", headers={"Host": "shop.example.com"})
    assert body["headers"]["Host"] == f"127.0.0.1:{gateway.backends['a']}"
    assert body["headers"]["X-Forwarded-Host"] == "shop.example.com"


async def test_routes_match_on_hosts_with_wildcards_and_methods(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"], route={"hosts": ["*.shop.test"], "methods": ["GET"]})
    assert (await call(http, f"{url}/", headers={"Host": "eu.shop.test"}))[0] == 200
    assert (await call(http, f"{url}/", headers={"Host": "shop.other"}))[0] == 404
    async with http.post(f"{url}/", headers={"Host": "eu.shop.test"}) as response:
        assert response.status == 404




async def test_a_real_data_plane_names_itself_once_in_via_and_server(gateway: Gateway, http: aiohttp.ClientSession, expose: Exposer) -> None:
    url = await expose(["a"])
    status, headers, _ = await call(http, f"{url}/")
    assert status == 200
    assert headers["Via"] == f"1.1 ferry/{ferry.__version__}"
    assert int(headers["X-Ferry-Upstream-Latency"]) >= 0 and int(headers["X-Ferry-Proxy-Latency"]) >= 0
    status, headers, _ = await call(http, f"{gateway.proxy}/no-such-route-here")
    assert status == 404 and headers["Server"] == f"ferry/{ferry.__version__}"
