"""Kong's balancer specs about DNS: names with several A records, SRV records (two-level
DNS, record ports and weights), and targets that resolve to the same IP.

Translated case by case (facts: requests and expected answers) from Kong's
``spec/02-integration/05-proxy/10-balancer/01-healthchecks_spec.lua`` (describe
"Healthcheck" — the DNS-resolution cases, also found as "Ring-balancer resolution" in the
older ``01-ring-balancer_spec.lua`` — and the "#healthchecks" cases over SRV names and
same-IP names). Kong's ``dns_mock`` is a real UDP DNS server here (:class:`DnsZone`), given
to a real ``ferry data-plane`` with ``--dns-resolver``; Kong's test servers are real HTTP
backends that count requests per Host and turn unhealthy on ``/unhealthy``. Kong reads
health right after its requests on the one node; Ferry's control plane gets health from
the data plane's reports, so those reads poll with a deadline.

Departures, each deliberate: ports that "should fail to connect" (Kong's 80 and 90) are
free ports nothing listens on; Kong's ``HEALTHCHECK_INTERVAL`` probes run every 0.1 s.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ferry_shared.listen import free_port
from tests.support.kong import DnsZone, KongCluster, healthchecks_config, unique
from tests.support.tls import self_signed

SPEC = "spec/02-integration/05-proxy/10-balancer/01-healthchecks_spec.lua"
SLOTS = 10
HEALTHCHECK_INTERVAL = 0.1

PASSIVE_TCP_1 = {"passive": {"unhealthy": {"tcp_failures": 1}}}


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def zone(dns_zone: DnsZone) -> DnsZone:
    """The records of Kong's ``lazy_setup`` (ports that fail to connect are free ports)."""
    dns_zone.records.update(
        {
            "multiple-ips.test": {"A": ["127.0.0.1", "127.0.0.2"]},
            "another.multiple-ips.test": {"A": ["127.0.0.1", "127.0.0.2"]},
            "a.my.srv.test.com": {"A": ["127.0.0.1"]},
            "a-changes-port.test": {"A": ["127.0.0.3"]},
        }
    )
    return dns_zone


class Api:
    """The Admin API and proxy calls of Kong's ``balancer_utils``."""

    def __init__(self, kong: KongCluster, http: aiohttp.ClientSession, proxy: str) -> None:
        self.kong, self.http, self.proxy = kong, http, proxy

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.kong.admin}{path}", json=body) as response:
            text = await response.text()
            import json

            return response.status, json.loads(text) if text else None

    async def add_upstream(self, **fields: Any) -> tuple[str, str]:
        status, body = await self.call("POST", "/upstreams", {"name": unique("upstream"), "slots": SLOTS, **fields})
        assert status == 201, body
        return body["name"], body["id"]

    async def add_target(self, upstream_id: str, host: str, port: int, weight: int = 10) -> None:
        status, body = await self.call(
            "POST", f"/upstreams/{upstream_id}/targets", {"target": f"{host}:{port}", "weight": weight}
        )
        assert status == 201, body

    async def add_api(self, upstream_name: str, protocol: str = "http", **service: Any) -> str:
        host = unique("host")
        status, body = await self.call(
            "POST", "/services", {"host": upstream_name, "port": 80, "protocol": protocol, **service}
        )
        assert status == 201, body
        status, route = await self.call("POST", "/routes", {"hosts": [host], "service": {"id": body["id"]}})
        assert status == 201, route
        await self.kong.synced()
        return host

    async def client_requests(self, n: int, host: str) -> tuple[int, int, int | None]:
        oks = fails = 0
        last: int | None = None
        for _ in range(n):
            async with self.http.get(f"{self.proxy}/", headers={"Host": host}) as response:
                await response.read()
                last = response.status
            if last == 200:
                oks += 1
            elif last > 399:
                fails += 1
        return oks, fails, last

    async def health(self, upstream: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/upstreams/{upstream}/health")
        assert status == 200, body
        return dict(body)

    async def poll_health(
        self, upstream: str, ok: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """Kong reads its node's health at once; Ferry's CP hears the DP's report."""
        deadline = time.monotonic() + timeout
        while True:
            body = await self.health(upstream)
            try:
                if ok(body):
                    return body
            except (KeyError, IndexError, TypeError):
                pass
            assert time.monotonic() < deadline, f"health of {upstream} never matched: {body}"
            await _sleep(0.05)

    async def post_target_address_health(self, upstream_id: str, target: str, address: str, mode: str) -> int:
        status, _ = await self.call("POST", f"/upstreams/{upstream_id}/targets/{target}/{address}/{mode}", {})
        return status


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


@pytest.fixture
async def api(kong: KongCluster, zone: DnsZone, http: aiohttp.ClientSession) -> Api:
    dp = await kong.data_plane("--dns-resolver", zone.address)
    return Api(kong, http, dp.proxy)


class KongTestServer:
    """Kong's ``https_server`` fixture: counts proxied requests per Host name (``ok``
    while healthy, ``fail`` after ``/unhealthy`` for that Host, until ``/healthy``);
    active probes of ``/status`` follow the same health but are not counted."""

    def __init__(self) -> None:
        self.ok: dict[str, int] = {}
        self.fail: dict[str, int] = {}
        self.down: set[str] = set()
        self.runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        if request.path == "/unhealthy":
            self.down.add(host)
            return web.Response(text="down")
        if request.path == "/healthy":
            self.down.discard(host)
            return web.Response(text="up")
        healthy = host not in self.down
        if request.path != "/status":
            counts = self.ok if healthy else self.fail
            counts[host] = counts.get(host, 0) + 1
        return web.Response(status=200 if healthy else 500, text="ok" if healthy else "fail")

    def total_ok(self) -> int:
        return sum(self.ok.values())


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Start :class:`KongTestServer` s on given ports (``protocol`` http or https)."""
    runners: list[web.AppRunner] = []

    async def start(port: int, protocol: str = "http") -> KongTestServer:
        server = KongTestServer()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        runners.append(runner)
        context = None
        if protocol == "https":
            pair = self_signed(tmp_path, f"srv-{port}", "localhost")
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(pair.cert, pair.key)
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
        server.runner = runner
        return server

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def direct_request(port: int, path: str, host: str, protocol: str = "http") -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(
            f"{protocol}://127.0.0.1:{port}{path}", headers={"Host": host}, ssl=False
        ) as response:
            assert response.status == 200


def addresses(body: dict[str, Any]) -> list[dict[str, Any]]:
    return list(body["data"][0]["data"]["addresses"])


# ------------------------------------------------------------------ "Healthcheck" (DNS)


async def test_2_level_dns_sets_the_proper_health_check(api: Api, zone: DnsZone) -> None:
    """Kong: it("2-level dns sets the proper health-check") — 01-healthchecks_spec.lua.

    An SRV name pointing to an A record, on a port that refuses connections, with passive
    ``tcp_failures = 1``: SLOTS requests all fail, the last with 503, and the target is
    UNHEALTHY (the failed IP is found although the balancer knew it by name)."""
    closed = free_port()
    zone.records["my.srv.test.com"] = {"SRV": [f"10 10 {closed} a.my.srv.test.com."]}
    upstream_name, upstream_id = await api.add_upstream(healthchecks=healthchecks_config(PASSIVE_TCP_1))
    await api.add_target(upstream_id, "my.srv.test.com", 80)  # the port comes from the SRV record
    api_host = await api.add_api(upstream_name)

    oks, fails, last_status = await api.client_requests(SLOTS, api_host)
    assert (oks, fails, last_status) == (0, SLOTS, 503)

    health = await api.poll_health(upstream_name, lambda b: b["data"][0]["health"] == "UNHEALTHY")
    assert health["data"][0]["health"] == "UNHEALTHY"


async def _two_ips_report_health_separately(api: Api, **upstream: Any) -> None:
    closed = free_port()
    upstream_name, upstream_id = await api.add_upstream(
        healthchecks=healthchecks_config(PASSIVE_TCP_1), **upstream
    )
    await api.add_target(upstream_id, "multiple-ips.test", closed)
    api_host = await api.add_api(upstream_name, connect_timeout=100)

    oks, fails, last_status = await api.client_requests(SLOTS, api_host)
    assert (oks, fails, last_status) == (0, SLOTS, 503)

    def states(body: dict[str, Any]) -> list[tuple[str, str]]:
        return [(a["ip"], a["health"]) for a in addresses(body)]

    health = await api.poll_health(
        upstream_name, lambda b: states(b) == [("127.0.0.1", "UNHEALTHY"), ("127.0.0.2", "UNHEALTHY")]
    )
    assert health["data"][0]["health"] == "UNHEALTHY"

    target = f"multiple-ips.test:{closed}"
    assert await api.post_target_address_health(upstream_id, target, f"127.0.0.2:{closed}", "healthy") == 204
    health = await api.poll_health(
        upstream_name, lambda b: states(b) == [("127.0.0.1", "UNHEALTHY"), ("127.0.0.2", "HEALTHY")]
    )
    assert health["data"][0]["health"] == "HEALTHY"

    assert await api.post_target_address_health(upstream_id, target, f"127.0.0.2:{closed}", "unhealthy") == 204
    health = await api.poll_health(
        upstream_name, lambda b: states(b) == [("127.0.0.1", "UNHEALTHY"), ("127.0.0.2", "UNHEALTHY")]
    )
    assert health["data"][0]["health"] == "UNHEALTHY"


async def test_a_target_that_resolves_to_2_ips_reports_health_separately(api: Api) -> None:
    """Kong: it("a target that resolves to 2 IPs reports health separately") —
    01-healthchecks_spec.lua.

    ``multiple-ips.test`` has A records 127.0.0.1 and 127.0.0.2; refused connections with
    passive ``tcp_failures = 1`` make both addresses UNHEALTHY; marking 127.0.0.2 healthy
    makes the target HEALTHY with only that address healthy; marking it unhealthy again
    makes everything UNHEALTHY."""
    await _two_ips_report_health_separately(api)


async def test_a_target_that_resolves_to_2_ips_reports_health_separately_upstream_with_hostname_set(
    api: Api,
) -> None:
    """Kong: it("a target that resolves to 2 IPs reports health separately (upstream with
    hostname set)") — 01-healthchecks_spec.lua.

    The same, with the upstream's ``host_header = "another.multiple-ips.test"``."""
    await _two_ips_report_health_separately(api, host_header="another.multiple-ips.test")


async def test_a_target_that_resolves_to_an_srv_record_that_changes_port(api: Api, zone: DnsZone) -> None:
    """Kong: it("a target that resolves to an SRV record that changes port") —
    01-healthchecks_spec.lua.

    ``srv-changes-port.test`` has an SRV record to ``a-changes-port.test`` on another port
    (refusing connections): the address is listed by the record's name and port, turns
    UNHEALTHY, and can be marked healthy by that ``name:port``."""
    closed = free_port()
    zone.records["srv-changes-port.test"] = {"SRV": [f"10 10 {closed} a-changes-port.test."]}
    upstream_name, upstream_id = await api.add_upstream(healthchecks=healthchecks_config(PASSIVE_TCP_1))
    await api.add_target(upstream_id, "srv-changes-port.test", 80)
    api_host = await api.add_api(upstream_name, connect_timeout=100)

    oks, fails, last_status = await api.client_requests(SLOTS, api_host)
    assert (oks, fails, last_status) == (0, SLOTS, 503)

    health = await api.poll_health(upstream_name, lambda b: addresses(b)[0]["health"] == "UNHEALTHY")
    assert addresses(health)[0]["ip"] == "a-changes-port.test"
    assert addresses(health)[0]["port"] == closed
    assert health["data"][0]["health"] == "UNHEALTHY"

    status = await api.post_target_address_health(
        upstream_id, "srv-changes-port.test:80", f"a-changes-port.test:{closed}", "healthy"
    )
    assert status == 204
    health = await api.poll_health(upstream_name, lambda b: addresses(b)[0]["health"] == "HEALTHY")
    assert (addresses(health)[0]["ip"], addresses(health)[0]["port"]) == ("a-changes-port.test", closed)
    assert health["data"][0]["health"] == "HEALTHY"


async def test_a_target_that_has_healthchecks_disabled(api: Api) -> None:
    """Kong: it("a target that has healthchecks disabled") — 01-healthchecks_spec.lua.

    Every check off: the DNS target and its first address are HEALTHCHECKS_OFF."""
    upstream_name, upstream_id = await api.add_upstream(
        healthchecks=healthchecks_config(
            {
                "passive": {"unhealthy": {"http_failures": 0, "tcp_failures": 0, "timeouts": 0}},
                "active": {"healthy": {"interval": 0}, "unhealthy": {"interval": 0}},
            }
        )
    )
    await api.add_target(upstream_id, "multiple-ips.test", 80)
    await api.add_api(upstream_name)
    health = await api.poll_health(upstream_name, lambda b: len(addresses(b)) > 0)
    assert health["data"][0]["health"] == "HEALTHCHECKS_OFF"
    assert addresses(health)[0]["health"] == "HEALTHCHECKS_OFF"


# ------------------------------------------------------------------ "#healthchecks" over DNS


def active_checks(protocol: str, nchecks: int, verify: bool = False) -> dict[str, Any]:
    return healthchecks_config(
        {
            "active": {
                "type": protocol,
                "http_path": "/status",
                "https_verify_certificate": verify,
                "healthy": {"interval": HEALTHCHECK_INTERVAL, "successes": nchecks},
                "unhealthy": {"interval": HEALTHCHECK_INTERVAL, "http_failures": nchecks},
            }
        }
    )


def address_health(body: dict[str, Any], target: str, ip: str, port: int) -> str | None:
    for row in body["data"]:
        if row["target"] == target:
            for a in row["data"]["addresses"]:
                if a["ip"] == ip and a["port"] == port:
                    return str(a["health"])
    return None


def target_health(body: dict[str, Any], target: str) -> str | None:
    return next((str(r["health"]) for r in body["data"] if r["target"] == target), None)


@pytest.mark.parametrize("protocol", ["http", "https"])
@pytest.mark.parametrize("localhost", ["127.0.0.1", "localhost"], ids=["ipv4", "hostname"])
async def test_perform_active_health_checks_on_a_target_that_resolves_to_multiple_addresses_automatic_recovery(
    api: Api, zone: DnsZone, servers: Callable[..., Any], protocol: str, localhost: str
) -> None:
    """Kong: it("#flaky perform active health checks on a target that resolves to multiple
    addresses -- automatic recovery #" .. protocol) — 01-healthchecks_spec.lua.

    An SRV name with two records to ``localhost`` (one mode per Kong ``localhosts`` entry;
    its ipv6 mode is left out: the test servers listen on IPv4), one server per record
    port. With active checks (``nchecks`` 1, then 3): SLOTS requests spread over both;
    server 2 turns unhealthy and its address goes UNHEALTHY; SLOTS requests all go to
    server 1; server 2 recovers and goes HEALTHY; SLOTS requests spread again. Server 1
    answered 2×SLOTS, server 2 SLOTS, no failures."""
    for nchecks in (1, 3):
        hostname = unique("multiple-hosts") + ".test"
        port1, port2 = free_port(), free_port()
        zone.records[hostname] = {"SRV": [f"10 10 {port1} {localhost}.", f"10 10 {port2} {localhost}."]}
        server1 = await servers(port1, protocol)
        server2 = await servers(port2, protocol)
        upstream_name, upstream_id = await api.add_upstream(
            healthchecks=active_checks(protocol, nchecks, verify=protocol == "https" and hostname == "localhost")
        )
        await api.add_target(upstream_id, hostname, port1)  # the port gets overridden by the records
        api_host = await api.add_api(upstream_name, protocol=protocol)
        target = f"{hostname}:{port1}"

        oks, fails, _ = await api.client_requests(SLOTS, api_host)
        await direct_request(port2, "/unhealthy", hostname, protocol)
        await api.poll_health(upstream_name, lambda b, t=target, p=port2: address_health(b, t, localhost, p) == "UNHEALTHY")

        o, f, _ = await api.client_requests(SLOTS, api_host)
        oks, fails = oks + o, fails + f

        await direct_request(port2, "/healthy", hostname, protocol)
        await api.poll_health(upstream_name, lambda b, t=target, p=port2: address_health(b, t, localhost, p) == "HEALTHY")

        o, f, _ = await api.client_requests(SLOTS, api_host)
        oks, fails = oks + o, fails + f

        assert server1.total_ok() == SLOTS * 2, nchecks
        assert server2.total_ok() == SLOTS, nchecks
        assert sum(server1.fail.values()) == 0 and sum(server2.fail.values()) == 0
        assert (oks, fails) == (SLOTS * 3, 0)


@pytest.mark.parametrize("protocol", ["http", "https"])
async def test_perform_active_health_checks_on_targets_that_resolve_to_the_same_ip_automatic_recovery(
    api: Api, zone: DnsZone, servers: Callable[..., Any], protocol: str
) -> None:
    """Kong: it("#flaky perform active health checks on targets that resolve to the same IP
    -- automatic recovery #" .. protocol) — 01-healthchecks_spec.lua.

    ``target1.test`` and ``target2.test`` both resolve to 127.0.0.1 and share one server
    port; the server tells the two apart by Host. With active checks (``nchecks`` 1, then
    3): target2 turning unhealthy makes only target2 UNHEALTHY, all requests go to target1,
    and target2 comes back when healthy. target1 answered 2×SLOTS, target2 SLOTS."""
    zone.records["target1.test"] = {"A": ["127.0.0.1"]}
    zone.records["target2.test"] = {"A": ["127.0.0.1"]}
    for nchecks in (1, 3):
        port1 = free_port()
        server1 = await servers(port1, protocol)
        upstream_name, upstream_id = await api.add_upstream(healthchecks=active_checks(protocol, nchecks))
        await api.add_target(upstream_id, "target1.test", port1)
        await api.add_target(upstream_id, "target2.test", port1)
        api_host = await api.add_api(upstream_name, protocol=protocol)

        oks, fails, _ = await api.client_requests(SLOTS, api_host)
        await direct_request(port1, "/unhealthy", "target2.test", protocol)
        await api.poll_health(upstream_name, lambda b, t=f"target2.test:{port1}": target_health(b, t) == "UNHEALTHY")

        o, f, _ = await api.client_requests(SLOTS, api_host)
        oks, fails = oks + o, fails + f

        await direct_request(port1, "/healthy", "target2.test", protocol)
        await api.poll_health(upstream_name, lambda b, t=f"target2.test:{port1}": target_health(b, t) == "HEALTHY")

        o, f, _ = await api.client_requests(SLOTS, api_host)
        oks, fails = oks + o, fails + f

        assert server1.ok.get("target1.test") == SLOTS * 2, nchecks
        assert server1.ok.get("target2.test") == SLOTS, nchecks
        assert server1.fail.get("target1.test", 0) == 0
        assert (oks, fails) == (SLOTS * 3, 0)
