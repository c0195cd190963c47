"""Kong's ``spec/02-integration/08-status_api/02-targets_routes_spec.lua``, case by case.

Kong's data plane serves the targets of the config it holds, read-only, on its status
port. Here: a real ``ferry control-plane`` holds the entities, a real ``ferry
data-plane`` (whose target names resolve through a DNS server of this module that
knows only ``custom_localhost``, as Kong's DNS mock) serves them on ``--status-listen``.

Kong's setup: an upstream with targets ``api-1:80`` .. ``api-4:80`` (weights 10..40,
no health checks), an upstream with passive checks and targets ``hc-api-1:80`` ..
``hc-api-4:80``, and an empty upstream. Kong's ``pending`` case "returns HEALTHY if
failure not detected" is not run by Kong (it contradicts the DNS_ERROR case on the
same targets) and has no test here.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from tests.support.ferry_cluster import DataPlaneProc
from tests.support.kong import KongCluster, unique
from tests.support.polling import wait_for

SPEC = "spec/02-integration/08-status_api/02-targets_routes_spec.lua"


class _NxDnsServer:
    """A real UDP DNS server on a free loopback port that knows one name
    (``custom_localhost`` → 127.0.0.1, as Kong's DNS mock) and answers NXDOMAIN
    for every other, in a thread so it outlives each case's event loop."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kong-spec-dns", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                query = dns.message.from_wire(data)
            except Exception:  # noqa: BLE001 - not a DNS query: ignore it
                continue
            answer = dns.message.make_response(query)
            question = query.question[0] if query.question else None
            if question is not None and question.name.to_text().rstrip(".") == "custom_localhost":
                if question.rdtype == dns.rdatatype.A:
                    answer.answer.append(
                        dns.rrset.from_text(question.name, 30, "IN", "A", "127.0.0.1")
                    )
            else:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            self.sock.sendto(answer.to_wire(), peer)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def _admin(kong: KongCluster, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{kong.admin}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
        return json.loads(response.read() or b"null")


@dataclass
class Setup:
    """Kong's ``lazy_setup``: the entities as the Admin API created them."""

    upstream: dict[str, Any]
    apis: list[dict[str, Any]]
    healthcheck_upstream: dict[str, Any]
    healthcheck_apis: list[dict[str, Any]]
    empty_upstream: dict[str, Any]
    dns_port: int


@pytest.fixture(scope="module")
def setup(kong: KongCluster) -> Iterator[Setup]:
    dns_server = _NxDnsServer()
    try:
        upstream = _admin(kong, "POST", "/upstreams", {"name": unique("u")})
        apis = [
            _admin(kong, "POST", f"/upstreams/{upstream['id']}/targets",
                   {"target": f"api-{i}:80", "weight": 10 * i})
            for i in range(1, 5)
        ]
        healthcheck_upstream = _admin(
            kong,
            "POST",
            "/upstreams",
            {
                "name": unique("hc"),
                "healthchecks": {
                    "passive": {
                        "healthy": {"successes": 1},
                        "unhealthy": {"tcp_failures": 1, "http_failures": 1, "timeouts": 1},
                    }
                },
            },
        )
        healthcheck_apis = [
            _admin(kong, "POST", f"/upstreams/{healthcheck_upstream['id']}/targets",
                   {"target": f"hc-api-{i}:80", "weight": 10 * i})
            for i in range(1, 5)
        ]
        empty_upstream = _admin(kong, "POST", "/upstreams", {"name": unique("empty")})
        yield Setup(upstream, apis, healthcheck_upstream, healthcheck_apis, empty_upstream,
                    dns_server.port)
    finally:
        dns_server.stop()


async def _status_port(kong: KongCluster, setup: Setup) -> DataPlaneProc:
    """The module's data plane (its names resolved by the module's DNS server), synced."""
    return await kong.data_plane("--dns-resolver", f"127.0.0.1:{setup.dns_port}")


def _ids(entities: list[dict[str, Any]]) -> dict[str, str]:
    return {e["id"]: e["target"] for e in entities}


# ------------------------------------------------------- /upstreams/{upstream}/targets/


async def test_status_api_post_upstreams_u_targets_is_not_exposed(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "is not exposed" (/upstreams/{upstream}/targets/, POST), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/"
    async with http.post(url, json={"target": "mashape.com"}) as response:
        assert response.status == 405
        assert await response.json() == {"message": "Method not allowed"}
        assert "GET" in response.headers["Allow"]


async def test_status_api_get_upstreams_u_targets_shows_all_targets(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "shows all targets" (/upstreams/{upstream}/targets/, GET), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    for append in ("", "/"):
        async with http.get(f"{dp.status}/upstreams/{setup.upstream['name']}/targets{append}") as response:
            assert response.status == 200
            body = await response.json()
        assert len(body["data"]) == 4
        assert _ids(body["data"]) == _ids(setup.apis)


async def test_status_api_get_upstreams_u_targets_empty_results_data_property_is_an_empty_array(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "data property is an empty array" (/upstreams/{upstream}/targets/,
    GET, empty results), in spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    async with http.get(f"{dp.status}/upstreams/{setup.empty_upstream['name']}/targets") as response:
        assert response.status == 200
        assert '"data":[]' in await response.text()


# -------------------------------------------------------- /upstreams/{upstream}/health/


async def _check_health_endpoint(
    http: aiohttp.ClientSession,
    dp: DataPlaneProc,
    targets: list[dict[str, Any]],
    upstream: dict[str, Any],
    n: int,
    health: str,
) -> None:
    """Kong's ``check_health_endpoint``: with and without a trailing slash, the ``n``
    targets by id, each (and each of its addresses) with ``health``. Polled: the data
    plane resolves target names in the background."""

    async def answers() -> str | None:
        for append in ("", "/"):
            async with http.get(f"{dp.status}/upstreams/{upstream['name']}/health{append}") as response:
                assert response.status == 200
                body = await response.json()
            assert len(body["data"]) == n
            assert _ids(body["data"]) == _ids(targets)
            for item in body["data"]:
                states = [item["health"], *(a["health"] for a in item["data"]["addresses"])]
                if any(state != health for state in states):
                    return None
        return "ok"

    await wait_for(answers, timeout=15, message=f"every target {health}")


async def test_status_api_get_upstreams_u_health_returns_healthchecks_off_for_targets_that_resolve(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "returns HEALTHCHECKS_OFF for targets that resolve" (/upstreams/{upstream}/health/,
    GET, with healthchecks off), in spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    await _check_health_endpoint(http, dp, setup.apis, setup.upstream, 4, "HEALTHCHECKS_OFF")


async def test_status_api_get_upstreams_u_health_returns_dns_error_if_dns_cannot_be_resolved(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "returns DNS_ERROR if DNS cannot be resolved" (/upstreams/{upstream}/health/,
    GET, with healthchecks on), in spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    await _check_health_endpoint(
        http, dp, setup.healthcheck_apis, setup.healthcheck_upstream, 4, "DNS_ERROR"
    )


# --------------------------------------------------- /upstreams/{upstream}/targets/all/


async def test_status_api_get_upstreams_u_targets_all_retrieves_the_first_page(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "retrieves the first page" (/upstreams/{upstream}/targets/all/, GET), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    async with http.get(f"{dp.status}/upstreams/{setup.upstream['name']}/targets/all") as response:
        assert response.status == 200
        assert len((await response.json())["data"]) == 4


async def test_status_api_get_upstreams_u_targets_all_offset_is_a_string(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "offset is a string" (/upstreams/{upstream}/targets/all/, GET; Kong asks
    /targets?size=2), in spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets"
    async with http.get(url, params={"size": "2"}) as response:
        assert response.status == 200
        assert isinstance((await response.json())["offset"], str)


async def test_status_api_get_upstreams_u_targets_all_paginates_a_set(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "paginates a set" (/upstreams/{upstream}/targets/all/, GET), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua: pages of 2, 2, then 0."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/all"
    pages: list[dict[str, Any]] = []
    offset: str | None = None
    for i in range(1, 4):
        params = {"size": "2", **({"offset": offset} if offset else {})}
        async with http.get(url, params=params) as response:
            assert response.status == 200
            body = await response.json()
        assert len(body["data"]) == (2 if i < 3 else 0)
        if pages:
            assert body != pages[-1]  # every page differs
        offset = body.get("offset")
        pages.append(body)
    seen = [t["id"] for page in pages for t in page["data"]]
    assert sorted(seen) == sorted(t["id"] for t in setup.apis)


async def test_status_api_get_upstreams_u_targets_all_ingores_filters(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "ingores filters" [sic] (/upstreams/{upstream}/targets/all/, GET), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/all"
    async with http.get(url, params={"foo": "bar"}) as response:
        assert response.status == 200


async def test_status_api_get_upstreams_u_targets_all_ignores_an_invalid_body(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "ignores an invalid body" (/upstreams/{upstream}/targets/all/, GET), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/all"
    async with http.get(
        url, data=b"this fails if decoded as json", headers={"Content-Type": "application/json"}
    ) as response:
        assert response.status == 200


async def test_status_api_get_upstreams_u_targets_all_empty_results_data_property_is_an_empty_array(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "data property is an empty array" (/upstreams/{upstream}/targets/all/, GET,
    empty results), in spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    async with http.get(f"{dp.status}/upstreams/{setup.empty_upstream['name']}/targets/all") as response:
        assert response.status == 200
        text = await response.text()
    assert json.loads(text) == {"data": [], "next": None}
    assert '"data":[]' in text


# ---------------------------------------- /upstreams/{upstream}/targets/{target}/(un)healthy


async def test_status_api_post_upstreams_u_targets_t_unhealthy_is_not_exposed(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "is not exposed" (/upstreams/{upstream}/targets/{target}/(un)healthy, POST),
    in spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/{setup.apis[0]['target']}/unhealthy"
    async with http.post(url) as response:
        assert response.status == 404, await response.text()
        assert await response.json() == {"message": "Not found"}


# ------------------------------------------------- /upstreams/{upstream}/targets/{target}


async def test_status_api_get_upstreams_u_targets_t_returns_target_entity(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "returns target entity" (/upstreams/{upstream}/targets/{target}, GET), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua: the entity as the
    control plane's Admin API created it (by host:port, and by id here too)."""
    dp = await _status_port(kong, setup)
    target = setup.apis[0]
    base = f"{dp.status}/upstreams/{setup.upstream['name']}/targets"
    for ref in (target["target"], target["id"]):
        async with http.get(f"{base}/{ref}") as response:
            assert response.status == 200
            assert await response.json() == target
    async with http.get(f"{base}/nowhere:80") as response:
        assert response.status == 404
        assert await response.json() == {"message": "Not found"}


async def test_status_api_patch_upstreams_u_targets_t_is_not_exposed(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "is not exposed" (/upstreams/{upstream}/targets/{target}, PATCH), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/{setup.apis[0]['target']}"
    async with http.patch(url, json={"weight": 659}) as response:
        assert response.status == 405
        assert await response.json() == {"message": "Method not allowed"}


async def test_status_api_put_upstreams_u_targets_t_is_not_exposed(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "is not exposed" (/upstreams/{upstream}/targets/{target}, PUT), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    target = setup.apis[0]["target"]
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/{target}"
    async with http.put(url, json={"target": target}) as response:
        assert response.status == 405
        assert await response.json() == {"message": "Method not allowed"}


async def test_status_api_delete_upstreams_u_targets_t_is_not_exposed(
    kong: KongCluster, setup: Setup, http: aiohttp.ClientSession
) -> None:
    """Kong case "is not exposed" (/upstreams/{upstream}/targets/{target}, DELETE), in
    spec/02-integration/08-status_api/02-targets_routes_spec.lua."""
    dp = await _status_port(kong, setup)
    url = f"{dp.status}/upstreams/{setup.upstream['name']}/targets/{setup.apis[0]['target']}"
    async with http.delete(url) as response:
        assert response.status == 405
        assert await response.json() == {"message": "Method not allowed"}
    # Still there: the status API wrote nothing.
    assert _admin(kong, "GET", f"/upstreams/{setup.upstream['id']}/targets/{setup.apis[0]['id']}")
