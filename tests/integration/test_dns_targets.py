"""DNS-named targets over real DNS: a tiny authoritative DNS server on a free UDP port
(dnspython builds its answers), :class:`TargetResolver` pointed at it, and the real proxy
for the end-to-end case. Records and TTLs change while the test runs; the tests poll
with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import json
import os
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import aiohttp
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from aiohttp import web

from data_plane.access_log import AccessLog
from data_plane.balancers import Address, Balancer, BalancerHandle
from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import ResolvedAddress, TargetResolver, parse_nameservers
from data_plane.health.checker import endpoint_of, target_key_of
from data_plane.health.supervisor import HealthSupervisor
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config
from data_plane.server import DataPlane, DataPlaneSettings
from ferry_shared.listen import free_port
from ferry_shared.snapshot_format import canonical_json, config_hash
from proto import cluster_pb2
from tests.support.polling import wait_for

# ------------------------------------------------------------------ the DNS server


class DnsServer(asyncio.DatagramProtocol):
    """An authoritative DNS server for test names.

    ``records[name][type]`` lists rdata texts (``"A"``, ``"AAAA"``, ``"CNAME"``);
    ``ttl`` is the TTL of every answer; names in ``servfail`` answer SERVFAIL, names in
    ``silent`` are never answered (a timeout); unknown names answer NXDOMAIN.
    ``queries`` records ``(name, type)`` of every question received.
    """

    def __init__(self) -> None:
        self.records: dict[str, dict[str, list[str]]] = {}
        self.ttl = 1
        self.servfail: set[str] = set()
        self.silent: set[str] = set()
        self.queries: list[tuple[str, str]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0

    def count(self, name: str, rdtype: str | None = None) -> int:
        return sum(1 for n, t in self.queries if n == name and (rdtype is None or t == rdtype))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport does not subclass asyncio.DatagramTransport
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        self.queries.append((name, rdtype))
        if name in self.silent:
            return
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        if name in self.servfail:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif name not in self.records:
            response.set_rcode(dns.rcode.NXDOMAIN)
        else:
            owner, current = question.name, name
            for _ in range(8):  # follow CNAMEs inside the zone, as a server would
                zone = self.records.get(current, {})
                if zone.get("CNAME"):
                    target = zone["CNAME"][0]
                    response.answer.append(dns.rrset.from_text(owner, self.ttl, "IN", "CNAME", target))
                    owner = dns.name.from_text(target)
                    current = owner.to_text(omit_final_dot=True).lower()
                    continue
                if zone.get(rdtype):
                    response.answer.append(dns.rrset.from_text(owner, self.ttl, "IN", rdtype, *zone[rdtype]))
                break
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@pytest.fixture
async def dns_server(stack: AsyncExitStack) -> DnsServer:
    loop = asyncio.get_running_loop()
    _, server = await loop.create_datagram_endpoint(DnsServer, local_addr=("127.0.0.1", 0))
    assert server.transport is not None
    stack.callback(server.transport.close)
    server.port = server.transport.get_extra_info("sockname")[1]
    return server


def empty_hosts(tmp_path: Path) -> Path:
    path = tmp_path / "hosts"
    path.write_text("# no entries\n")
    return path


async def start_resolver(
    stack: AsyncExitStack, server: DnsServer, tmp_path: Path, **kwargs: Any
) -> TargetResolver:
    """A resolver on ``server`` with its refresh loop running; stopped by ``stack``."""
    kwargs.setdefault("hosts_file", empty_hosts(tmp_path))
    kwargs.setdefault("lifetime", 1.0)
    resolver = TargetResolver([("127.0.0.1", server.port)], **kwargs)
    task = asyncio.create_task(resolver.run())

    async def stop() -> None:
        resolver.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    stack.push_async_callback(stop)
    return resolver


def make_config(
    version: int,
    upstreams: dict[str, list[tuple[str, int]]],
    previous: RuntimeConfig | None = None,
    **upstream_fields: Any,
) -> RuntimeConfig:
    """Upstreams by name with ``(target, weight)`` lists; a service "svc-<name>" and a
    route ``/<name>`` for each; ``upstream_fields`` are set on every upstream."""
    entities: dict[str, list[dict[str, Any]]] = {"upstreams": [], "targets": [], "services": [], "routes": []}
    for i, (name, targets) in enumerate(upstreams.items()):
        entities["upstreams"].append(
            {"id": f"u{i}", "name": name, "algorithm": "round-robin", **upstream_fields}
        )
        for j, (target, weight) in enumerate(targets):
            entities["targets"].append(
                {"id": f"t{i}-{j}", "target": target, "weight": weight, "upstream": {"id": f"u{i}"}}
            )
        entities["services"].append(
            {"id": f"s{i}", "name": f"svc-{name}", "protocol": "http", "host": name, "port": 80, "retries": 2}
        )
        entities["routes"].append({"id": f"r{i}", "paths": [f"/{name}"], "service": {"id": f"s{i}"}})
    return compile_config(version, f"hash-{version}", entities, previous=previous)


def balancer(config: RuntimeConfig, name: str) -> Balancer:
    upstream = config.upstream_by_name(name)
    assert upstream is not None
    return upstream.balancer


def summary(b: Balancer) -> list[tuple[str, int]]:
    """``(address as the health view shows it, weight)`` per balanced address."""
    return [(endpoint_of(a), a.weight) for a in b.addresses]


# -------------------------------------------------------------------------- tests


async def test_two_a_records_become_two_weighted_addresses(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["backend.test"] = {"A": ["10.0.0.2", "10.0.0.1"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("backend.test:8080", 30), ("10.9.9.9:81", 5)]})
    await resolver.apply(config, timeout=5)
    addresses = balancer(config, "api").addresses
    # configuration order (sorted targets), each name's records sorted
    assert summary(balancer(config, "api")) == [
        ("10.9.9.9:81", 5),
        ("10.0.0.1:8080", 30),
        ("10.0.0.2:8080", 30),
    ]
    resolved = [a for a in addresses if isinstance(a, ResolvedAddress)]
    assert [a.hostname for a in resolved] == ["backend.test", "backend.test"]
    # the Host header sent to a resolved peer names the target, as in Kong
    assert resolved[0].key_bytes == b"backend.test:8080"
    assert resolver.dns_errors() == {}


async def test_record_change_is_picked_up_after_the_ttl(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["backend.test"] = {"A": ["10.0.0.1"]}
    dns_server.ttl = 1
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("backend.test:8080", 100)]})
    await resolver.apply(config, timeout=5)
    b = balancer(config, "api")
    assert summary(b) == [("10.0.0.1:8080", 100)]
    b.set_address_health(b.addresses[0].key, False)

    dns_server.records["backend.test"] = {"A": ["10.0.0.1", "10.0.0.3"]}
    await wait_for(lambda: len(b.addresses) == 2, timeout=10, message="the new record")
    assert summary(b) == [("10.0.0.1:8080", 100), ("10.0.0.3:8080", 100)]
    # an address that stays keeps its health mark
    assert not b.is_usable(b.addresses[0]) and b.is_usable(b.addresses[1])

    dns_server.records["backend.test"] = {"A": ["10.0.0.4"]}
    await wait_for(lambda: summary(b) == [("10.0.0.4:8080", 100)], timeout=10, message="the replaced record")


async def test_cname_and_aaaa_only_names(stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path) -> None:
    dns_server.records["alias.test"] = {"CNAME": ["backend.test."]}
    dns_server.records["backend.test"] = {"A": ["10.0.0.7"]}
    dns_server.records["v6.test"] = {"AAAA": ["fd00::2", "fd00::1"]}
    dns_server.records["both.test"] = {"A": ["10.0.0.8"], "AAAA": ["fd00::8"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(
        1, {"a": [("alias.test:80", 10)], "b": [("v6.test:90", 20)], "c": [("both.test:70", 1)]}
    )
    await resolver.apply(config, timeout=5)
    assert summary(balancer(config, "a")) == [("10.0.0.7:80", 10)]
    assert summary(balancer(config, "b")) == [("[fd00::1]:90", 20), ("[fd00::2]:90", 20)]
    # A before AAAA, first type with records wins (Kong's dns_order)
    assert summary(balancer(config, "c")) == [("10.0.0.8:70", 1)]
    assert dns_server.count("both.test", "AAAA") == 0


@pytest.mark.parametrize("failure", ["nxdomain", "servfail", "no-answer"])
async def test_failing_lookup_leaves_no_address_after_the_stale_window(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path, failure: str
) -> None:
    dns_server.records["backend.test"] = {"A": ["10.0.0.1"]}
    resolver = await start_resolver(
        stack, dns_server, tmp_path, stale_ttl=1.0, error_ttl=0.2, not_found_ttl=0.2
    )
    config = make_config(1, {"api": [("backend.test:8080", 100), ("10.9.9.9:81", 5)]})
    await resolver.apply(config, timeout=5)
    b = balancer(config, "api")
    assert len(b.addresses) == 2

    failed_at = time.monotonic()
    if failure == "nxdomain":
        del dns_server.records["backend.test"]
    elif failure == "servfail":
        dns_server.servfail.add("backend.test")
    else:
        dns_server.records["backend.test"] = {"TXT": ['"no addresses"']}
    await wait_for(lambda: summary(b) == [("10.9.9.9:81", 5)], timeout=10, message="the address to go")
    # the last good answer served for its TTL (1 s) plus the stale window (1 s)
    assert time.monotonic() - failed_at >= 1.0
    expected = {
        "nxdomain": "dns server error: 3 name error",
        "servfail": "dns server error: 2 server failure",
        "no-answer": "dns client error: 101 empty record received",
    }[failure]
    assert resolver.dns_errors() == {"backend.test:8080": expected}
    assert resolver.addresses_of("backend.test") == ()

    # and it comes back when DNS does
    dns_server.servfail.clear()
    dns_server.records["backend.test"] = {"A": ["10.0.0.5"]}
    await wait_for(lambda: len(b.addresses) == 2, timeout=10, message="the name to come back")
    assert summary(b) == [("10.9.9.9:81", 5), ("10.0.0.5:8080", 100)]
    assert resolver.dns_errors() == {}


async def test_unknown_name_has_no_address_from_the_start(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("missing.test:8080", 100)]})
    await resolver.apply(config, timeout=5)
    assert balancer(config, "api").addresses == ()
    assert resolver.dns_errors() == {"missing.test:8080": "dns server error: 3 name error"}


async def test_apply_is_bounded_and_a_pending_name_stays_a_hostname(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.silent.add("slow.test")
    resolver = await start_resolver(stack, dns_server, tmp_path, lifetime=1.5)
    config = make_config(1, {"api": [("slow.test:8080", 100)]})
    started = time.monotonic()
    await resolver.apply(config, timeout=0.2)
    assert time.monotonic() - started < 1.0
    # not answered yet: the connection pool resolves the name per connection
    assert summary(balancer(config, "api")) == [("slow.test:8080", 100)]
    assert resolver.dns_errors() == {}
    # the lookup times out: a failed lookup leaves no address
    await wait_for(lambda: balancer(config, "api").addresses == (), timeout=10, message="the timeout")
    assert resolver.dns_errors() == {"slow.test:8080": "dns client error: timeout"}


async def test_ip_targets_are_never_resolved(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("10.0.0.1:80", 10), ("[fd00::1]:81", 20)]})
    before = balancer(config, "api").addresses
    await resolver.apply(config, timeout=5)
    assert balancer(config, "api").addresses == before
    assert all(type(a) is Address for a in before)
    assert dns_server.queries == []


async def test_shared_name_is_queried_once_per_ttl(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["backend.test"] = {"A": ["10.0.0.1", "10.0.0.2"]}
    dns_server.ttl = 1
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(
        1,
        {
            "one": [("backend.test:8001", 10), ("backend.test:8002", 20)],
            "two": [("backend.test:8001", 30), ("BACKEND.test:8003", 40)],
        },
    )
    await resolver.apply(config, timeout=5)
    assert dns_server.count("backend.test", "A") == 1
    assert summary(balancer(config, "two")) == [
        ("10.0.0.1:8001", 30),
        ("10.0.0.2:8001", 30),
        ("10.0.0.1:8003", 40),
        ("10.0.0.2:8003", 40),
    ]
    await wait_for(lambda: dns_server.count("backend.test", "A") >= 2, timeout=10, message="a refresh")
    assert dns_server.count("backend.test", "A") == 2

    # a new config version reuses the cached answer
    config2 = make_config(2, {"three": [("backend.test:9000", 1)]}, previous=config)
    await resolver.apply(config2, timeout=5)
    assert dns_server.count("backend.test", "A") == 2
    assert summary(balancer(config2, "three")) == [("10.0.0.1:9000", 1), ("10.0.0.2:9000", 1)]


async def test_hosts_file_and_localhost(stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts.custom"
    hosts.write_text("10.1.1.1 pinned.test  # comment\nfd00::9 pinned.test\nfd00::10 six.test\n")
    resolver = await start_resolver(stack, dns_server, tmp_path, hosts_file=hosts)
    config = make_config(
        1, {"api": [("pinned.test:80", 1), ("six.test:80", 1), ("localhost:8080", 1)]}
    )
    await resolver.apply(config, timeout=5)
    assert summary(balancer(config, "api")) == [
        ("127.0.0.1:8080", 1),  # localhost works even when the hosts file lacks it
        ("10.1.1.1:80", 1),
        ("[fd00::10]:80", 1),
    ]
    assert dns_server.queries == []


async def test_targets_resolving_to_the_same_address_stay_two_addresses(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    """Issue 13 theme 6: Kong keeps each target's addresses apart, so one of two
    targets sharing an IP can be marked unhealthy on its own."""
    dns_server.records["a.test"] = {"A": ["10.0.0.1"]}
    dns_server.records["b.test"] = {"A": ["10.0.0.1", "10.0.0.2"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("a.test:80", 10), ("b.test:80", 20), ("10.0.0.2:80", 5)]})
    await resolver.apply(config, timeout=5)
    b = balancer(config, "api")
    # targets in configuration order: 10.0.0.2:80, a.test:80, b.test:80
    assert summary(b) == [("10.0.0.2:80", 5), ("10.0.0.1:80", 10), ("10.0.0.1:80", 20), ("10.0.0.2:80", 20)]
    assert [target_key_of(a) for a in b.addresses] == ["10.0.0.2:80", "a.test:80", "b.test:80", "b.test:80"]
    assert len({a.key for a in b.addresses}) == 4
    b.set_address_health(b.addresses[1].key, False)  # a.test's 10.0.0.1
    assert [b.is_usable(a) for a in b.addresses] == [True, False, True, True]


async def test_stop_ends_the_refresh_loop(dns_server: DnsServer, tmp_path: Path) -> None:
    dns_server.records["backend.test"] = {"A": ["10.0.0.1"]}
    resolver = TargetResolver([("127.0.0.1", dns_server.port)], hosts_file=empty_hosts(tmp_path))
    task = asyncio.create_task(resolver.run())
    try:
        await resolver.apply(make_config(1, {"api": [("backend.test:80", 1)]}), timeout=5)
        resolver.stop()
        await asyncio.wait_for(task, 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_parse_nameservers() -> None:
    assert parse_nameservers("") == []
    assert parse_nameservers("10.0.0.1, 127.0.0.1:5353,[::1]:54,::2") == [
        ("10.0.0.1", 53),
        ("127.0.0.1", 5353),
        ("::1", 54),
        ("::2", 53),
    ]
    for bad in ("dns.example:53", "10.0.0.1:0", "10.0.0.1:x", "[::1"):
        with pytest.raises(ValueError):
            parse_nameservers(bad)


# ------------------------------------------------------------------ end to end


async def start_backend(stack: AsyncExitStack, seen_hosts: list[str]) -> int:
    """A real aiohttp backend on 127.0.0.1 recording the Host headers; returns its port."""

    async def handler(request: web.Request) -> web.Response:
        seen_hosts.append(request.headers["Host"])
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(runner.addresses[0][1])


async def test_request_through_the_proxy_to_a_dns_named_target(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    seen_hosts: list[str] = []
    port = await start_backend(stack, seen_hosts)
    dns_server.records["backend.test"] = {"A": ["127.0.0.1"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [(f"backend.test:{port}", 100)]})
    await resolver.apply(config, timeout=5)
    assert summary(balancer(config, "api")) == [(f"127.0.0.1:{port}", 100)]

    holder = ConfigHolder(config)
    read_fd, write_fd = os.pipe()
    stack.callback(os.close, read_fd)
    stack.callback(os.close, write_fd)
    access_log = AccessLog("json", component="data-plane", fd=write_fd)
    proxy = ProxyServer(holder, "127.0.0.1", 0, access_log=access_log)
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)
    async with session.get(f"http://127.0.0.1:{proxy.port}/api/x") as resp:
        assert resp.status == 200
        assert await resp.json() == {"ok": True}
    assert seen_hosts == [f"backend.test:{port}"]
    access_log.flush()
    [line] = os.read(read_fd, 1 << 16).decode().splitlines()
    # The address the request went to, not the internal key that also names the target.
    assert json.loads(line)["upstream"] == f"127.0.0.1:{port}"


async def test_data_plane_resolves_the_cached_config_with_its_dns_resolver_flag(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    """A DP started from its disk cache (no CP answers) resolves target names through
    ``dns_resolver`` before serving, and proxies to the resolved address."""
    seen_hosts: list[str] = []
    port = await start_backend(stack, seen_hosts)
    dns_server.records["backend.test"] = {"A": ["127.0.0.1"]}
    entities: dict[str, list[dict[str, Any]]] = {
        "upstreams": [{"id": "u1", "name": "api", "algorithm": "round-robin"}],
        "targets": [{"id": "t1", "target": f"backend.test:{port}", "weight": 100, "upstream": {"id": "u1"}}],
        "services": [{"id": "s1", "name": "svc", "protocol": "http", "host": "api", "port": 80}],
        "routes": [{"id": "r1", "paths": ["/api"], "service": {"id": "s1"}}],
    }
    resources = [(kind, e["id"], canonical_json(e)) for kind, items in entities.items() for e in items]
    snapshot = cluster_pb2.Snapshot(
        version=3,
        hash=config_hash(resources),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in resources],
    )
    data_dir = tmp_path / "dp"
    ConfigCache(data_dir).save(snapshot)
    plane = DataPlane(
        DataPlaneSettings(
            control_plane=f"127.0.0.1:{free_port()}",  # nothing listens: serve from the cache
            proxy_listen="127.0.0.1:0",
            status_listen="127.0.0.1:0",
            data_dir=data_dir,
            cluster_insecure=True,
            dns_resolver=f"127.0.0.1:{dns_server.port}",
        )
    )
    stack.push_async_callback(plane.stop, 2.0)
    await plane.start()
    config = plane.holder.current
    assert config is not None
    assert summary(balancer(config, "api")) == [(f"127.0.0.1:{port}", 100)]
    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)
    async with session.get(f"http://127.0.0.1:{plane.proxy_port}/api/x") as resp:
        assert resp.status == 200
    assert seen_hosts == [f"backend.test:{port}"]
    assert dns_server.count("backend.test") >= 1


async def test_a_record_change_re_reports_the_health_view_with_the_new_addresses(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["backend.test"] = {"A": ["10.0.0.1"]}
    dns_server.ttl = 1
    resolver = await start_resolver(stack, dns_server, tmp_path)
    health = HealthSupervisor()
    resolver.on_change = health.addresses_changed
    stack.push_async_callback(health.stop)
    config = make_config(1, {"api": [("backend.test:8080", 100)]})
    await resolver.apply(config, timeout=5)
    health.apply(config)
    # Held down by an operator, so this check-less upstream is part of the view.
    assert health.override("u0", "backend.test:8080", "10.0.0.1:8080", False)
    while not health.reports.empty():
        health.reports.get_nowait()

    dns_server.records["backend.test"] = {"A": ["10.0.0.1", "10.0.0.3"]}

    def full_view() -> list[tuple[str, str]] | None:
        latest = None
        while not health.reports.empty():
            full, rows = health.reports.get_nowait()
            if full:
                latest = sorted((r.address, r.state) for r in rows)
        return latest

    view = await wait_for(full_view, timeout=10, message="a full view after the record change")
    assert view == [("10.0.0.1:8080", "UNHEALTHY"), ("10.0.0.3:8080", "HEALTHCHECKS_OFF")]


async def test_two_targets_on_one_ip_are_balanced_and_held_down_separately(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    """target1.test and target2.test both resolve to 127.0.0.1 (same port): each is its
    own address with its own weight, and an operator's override of target2 leaves
    target1 serving (issue 13 theme 6)."""
    seen_hosts: list[str] = []
    port = await start_backend(stack, seen_hosts)
    dns_server.records["target1.test"] = {"A": ["127.0.0.1"]}
    dns_server.records["target2.test"] = {"A": ["127.0.0.1"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    health = HealthSupervisor()
    resolver.on_change = health.addresses_changed
    stack.push_async_callback(health.stop)
    config = make_config(1, {"api": [(f"target1.test:{port}", 10), (f"target2.test:{port}", 10)]})
    await resolver.apply(config, timeout=5)
    health.apply(config)
    assert summary(balancer(config, "api")) == [(f"127.0.0.1:{port}", 10), (f"127.0.0.1:{port}", 10)]

    holder = ConfigHolder(config)
    proxy = ProxyServer(holder, "127.0.0.1", 0)
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)

    async def send(n: int) -> None:
        for _ in range(n):
            async with session.get(f"http://127.0.0.1:{proxy.port}/api/x") as resp:
                assert resp.status == 200

    await send(10)
    assert sorted(set(seen_hosts)) == [f"target1.test:{port}", f"target2.test:{port}"]
    assert seen_hosts.count(f"target1.test:{port}") == 5

    assert health.override("u0", f"target2.test:{port}", f"127.0.0.1:{port}", False)
    seen_hosts.clear()
    await send(10)
    assert seen_hosts == [f"target1.test:{port}"] * 10
    rows = {(r.target, r.address, r.state) for r in health.all_rows()}
    assert rows == {
        (f"target1.test:{port}", f"127.0.0.1:{port}", "HEALTHCHECKS_OFF"),
        (f"target2.test:{port}", f"127.0.0.1:{port}", "UNHEALTHY"),
    }

    assert health.override("u0", f"target2.test:{port}", f"127.0.0.1:{port}", True)
    seen_hosts.clear()
    await send(10)
    assert seen_hosts.count(f"target2.test:{port}") == 5


# ------------------------------------------------------------------ SRV records


def srv(priority: int, weight: int, port: int, target: str) -> str:
    return f"{priority} {weight} {port} {target}"


async def test_srv_records_give_their_ports_and_weights_lowest_priority_only(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["api.srv.test"] = {
        "SRV": [
            srv(10, 5, 8001, "a.test."),
            srv(10, 15, 8002, "b.test."),
            srv(10, 7, 8003, "10.0.0.9."),  # an IP as the record's target
            srv(20, 50, 9000, "backup.test."),  # a higher priority value: not used
        ]
    }
    dns_server.records["a.test"] = {"A": ["10.0.0.1"]}
    dns_server.records["b.test"] = {"A": ["10.0.0.3", "10.0.0.2"]}
    dns_server.records["backup.test"] = {"A": ["10.0.0.99"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("api.srv.test:80", 100)]})
    await resolver.apply(config, timeout=5)
    addresses = balancer(config, "api").addresses
    # the record's port and weight replace the target's; names shown as Kong shows them
    assert summary(balancer(config, "api")) == [
        ("10.0.0.9:8003", 7),
        ("a.test:8001", 5),
        ("b.test:8002", 15),
        ("b.test:8002", 15),
    ]
    assert [(a.host, a.port) for a in addresses] == [
        ("10.0.0.9", 8003), ("10.0.0.1", 8001), ("10.0.0.2", 8002), ("10.0.0.3", 8002)
    ]
    assert {target_key_of(a) for a in addresses} == {"api.srv.test:80"}
    # the Host header names the target (the SRV name), as in Kong
    assert {a.key_bytes for a in addresses} == {b"api.srv.test:8003", b"api.srv.test:8001", b"api.srv.test:8002"}
    assert dns_server.count("backup.test") == 0
    assert resolver.addresses_of("api.srv.test") == ("10.0.0.9", "10.0.0.1", "10.0.0.2", "10.0.0.3")


async def test_srv_records_are_re_resolved_on_their_ttl(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.ttl = 1
    dns_server.records["api.srv.test"] = {"SRV": [srv(1, 10, 8001, "a.test.")]}
    dns_server.records["a.test"] = {"A": ["10.0.0.1"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("api.srv.test:80", 100)]})
    await resolver.apply(config, timeout=5)
    b = balancer(config, "api")
    assert summary(b) == [("a.test:8001", 10)]
    b.set_address_health(b.addresses[0].key, False)

    # a new record, and a lower priority value taking over from it later
    dns_server.records["api.srv.test"] = {"SRV": [srv(1, 10, 8001, "a.test."), srv(1, 30, 8005, "a.test.")]}
    await wait_for(lambda: len(b.addresses) == 2, timeout=10, message="the new SRV record")
    assert summary(b) == [("a.test:8001", 10), ("a.test:8005", 30)]
    assert [b.is_usable(a) for a in b.addresses] == [False, True]  # health kept
    # the record target's own A record changing is picked up too (second level)
    dns_server.records["a.test"] = {"A": ["10.0.0.4"]}
    await wait_for(
        lambda: {a.host for a in b.addresses} == {"10.0.0.4"}, timeout=10, message="the new A record"
    )
    dns_server.records["api.srv.test"] = {"SRV": [srv(0, 1, 7000, "10.0.0.5."), srv(1, 30, 8005, "a.test.")]}
    await wait_for(lambda: summary(b) == [("10.0.0.5:7000", 1)], timeout=10, message="priority 0 only")


async def test_srv_record_whose_target_does_not_resolve_is_left_out(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["api.srv.test"] = {"SRV": [srv(1, 10, 8001, "gone.test."), srv(1, 10, 8002, "a.test.")]}
    dns_server.records["a.test"] = {"A": ["10.0.0.1"]}
    dns_server.records["only-gone.srv.test"] = {"SRV": [srv(1, 10, 8001, "gone.test.")]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("api.srv.test:80", 100)], "other": [("only-gone.srv.test:80", 1)]})
    await resolver.apply(config, timeout=5)
    assert summary(balancer(config, "api")) == [("a.test:8002", 10)]
    assert balancer(config, "other").addresses == ()
    assert resolver.dns_errors() == {"only-gone.srv.test:80": "dns server error: 3 name error"}


async def start_named_backend(stack: AsyncExitStack, name: str, seen: list[tuple[str, str]]) -> int:
    """A backend recording ``(name, Host header)`` of each request, ``/status`` included."""

    async def handler(request: web.Request) -> web.Response:
        seen.append((name, request.headers["Host"]))
        if request.path == "/status" and getattr(handler, "down", False):
            return web.json_response({"down": True}, status=500)
        return web.json_response({"name": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = int(runner.addresses[0][1])
    _HANDLERS[port] = handler
    return port


_HANDLERS: dict[int, Any] = {}


@pytest.mark.parametrize("use_srv_name", [False, True])
async def test_proxy_balances_over_srv_records_and_use_srv_name_sets_the_host(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path, use_srv_name: bool
) -> None:
    seen: list[tuple[str, str]] = []
    port1 = await start_named_backend(stack, "one", seen)
    port2 = await start_named_backend(stack, "two", seen)
    dns_server.records["api.srv.test"] = {
        "SRV": [srv(1, 10, port1, "node1.test."), srv(1, 30, port2, "node2.test.")]
    }
    dns_server.records["node1.test"] = {"A": ["127.0.0.1"]}
    dns_server.records["node2.test"] = {"A": ["127.0.0.1"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    config = make_config(1, {"api": [("api.srv.test:1", 100)]}, use_srv_name=use_srv_name)
    await resolver.apply(config, timeout=5)

    holder = ConfigHolder(config)
    proxy = ProxyServer(holder, "127.0.0.1", 0)
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    session = aiohttp.ClientSession()
    stack.push_async_callback(session.close)
    for _ in range(40):
        async with session.get(f"http://127.0.0.1:{proxy.port}/api/x") as resp:
            assert resp.status == 200
    # weights 10 and 30 from the records; the target's port (1) is never used
    assert sum(1 for n, _ in seen if n == "one") == 10
    assert sum(1 for n, _ in seen if n == "two") == 30
    hosts = {n: h for n, h in seen}
    if use_srv_name:
        assert hosts == {"one": f"node1.test:{port1}", "two": f"node2.test:{port2}"}
    else:
        assert hosts == {"one": f"api.srv.test:{port1}", "two": f"api.srv.test:{port2}"}


async def test_active_checks_probe_each_srv_record_and_recover_it(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    seen: list[tuple[str, str]] = []
    port1 = await start_named_backend(stack, "one", seen)
    port2 = await start_named_backend(stack, "two", seen)
    dns_server.records["api.srv.test"] = {"SRV": [srv(1, 10, port1, "localhost."), srv(1, 10, port2, "localhost.")]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    health = HealthSupervisor()
    resolver.on_change = health.addresses_changed
    stack.push_async_callback(health.stop)
    checks = {
        "active": {
            "http_path": "/status",
            "healthy": {"interval": 0.05, "successes": 1},
            "unhealthy": {"interval": 0.05, "http_failures": 1},
        }
    }
    config = make_config(1, {"api": [("api.srv.test:80", 100)]}, healthchecks=checks)
    await resolver.apply(config, timeout=5)
    health.apply(config)
    upstream = config.upstream_by_name("api")
    assert upstream is not None and upstream.health is not None
    checker = upstream.health

    def states() -> dict[str, str]:
        return {endpoint_of(v.address): v.state for v in checker.view()}

    assert states() == {f"localhost:{port1}": "HEALTHY", f"localhost:{port2}": "HEALTHY"}
    await wait_for(
        lambda: {n for n, _ in seen} == {"one", "two"}, timeout=10, message="probes of both records"
    )
    assert {h for _, h in seen} == {"api.srv.test"}  # probes name the target
    _HANDLERS[port2].down = True
    await wait_for(
        lambda: states()[f"localhost:{port2}"] == "UNHEALTHY", timeout=10, message="record 2 down"
    )
    assert states()[f"localhost:{port1}"] == "HEALTHY"
    rows = {(r.target, r.address, r.state) for r in health.all_rows()}
    assert ("api.srv.test:80", f"localhost:{port2}", "UNHEALTHY") in rows
    _HANDLERS[port2].down = False
    await wait_for(lambda: states()[f"localhost:{port2}"] == "HEALTHY", timeout=10, message="record 2 back")


async def test_every_address_of_a_failover_target_is_a_failover_address(
    stack: AsyncExitStack, dns_server: DnsServer, tmp_path: Path
) -> None:
    dns_server.records["standby.test"] = {"A": ["10.0.0.2", "10.0.0.1"]}
    resolver = await start_resolver(stack, dns_server, tmp_path)
    entities: dict[str, list[dict[str, Any]]] = {
        "upstreams": [{"id": "u0", "name": "api"}],
        "targets": [
            {"id": "t0", "target": "10.9.9.9:81", "upstream": {"id": "u0"}},
            {"id": "t1", "target": "standby.test:8080", "failover": True, "upstream": {"id": "u0"}},
        ],
        "services": [],
        "routes": [],
    }
    config = compile_config(1, "h1", entities)
    await resolver.apply(config, timeout=5)
    b = balancer(config, "api")
    assert [(endpoint_of(a), a.failover) for a in b.addresses] == [
        ("10.9.9.9:81", False),
        ("10.0.0.1:8080", True),
        ("10.0.0.2:8080", True),
    ]
    handle = BalancerHandle()
    assert {b.pick(handle).key for _ in range(4)} == {"10.9.9.9:81"}  # type: ignore[union-attr]
    b.set_address_health("10.9.9.9:81", False)
    picked = {endpoint_of(b.pick(BalancerHandle())) for _ in range(4)}  # type: ignore[arg-type]
    assert picked == {"10.0.0.1:8080", "10.0.0.2:8080"}
