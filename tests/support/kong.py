"""Kong's own specs, translated: the cluster they run on and Kong's spec helpers.

:class:`KongCluster` is one real control plane (and, once asked for, one data plane),
shared by the cases of a module; :func:`unique` keeps their entities apart. The rest are
Kong's ``spec.fixtures.balancer_utils``, ``helpers.https_server`` and ``dns_mock`` as
Ferry helpers (facts of their behaviour, not their code). The fixtures built on them
live in ``tests/kong_spec/conftest.py``.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tests.support.admin import admin_call
from tests.support.ferry_cluster import Cluster, DataPlaneProc
from tests.support.http import wait_http_ok_sync
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess
from tests.support.tls import FIXTURES


def unique(prefix: str = "k") -> str:
    """A name no other case in the module uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class KongCluster:
    """A running control plane (and, once asked for, one data plane) for spec cases."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.cp: FerryProcess | None = None
        self.dp: DataPlaneProc | None = None
        self._dp_args: tuple[str, ...] = ()

    @property
    def admin(self) -> str:
        return self.cluster.admin

    def start(self, *cp_args: str) -> KongCluster:
        self.cp = self.cluster.start_control_plane(*cp_args)
        wait_http_ok_sync(f"{self.admin}/status", self.cp)
        return self

    async def data_plane(self, *dp_args: str) -> DataPlaneProc:
        """The module's data plane (started on first use) once it serves the CP's
        current configuration."""
        if self.dp is None:
            self.dp = self.cluster.start_data_plane("dp1", *dp_args)
            wait_http_ok_sync(f"{self.dp.status}/status/ready", self.dp.process)  # holds a config
        await self.synced()
        return self.dp

    async def synced(self, timeout: float = 15.0) -> None:
        """Wait until the data plane serves what the CP holds now (no-op without one)."""
        if self.dp is None:
            return
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{self.admin}/status") as response:
                wanted = int((await response.json())["configuration_version"] or 0)
            deadline = time.monotonic() + timeout
            while True:
                async with http.get(f"{self.dp.status}/status") as response:
                    status = await response.json()
                held = status.get("configuration_version")
                if held is not None and held >= wanted:
                    return
                assert time.monotonic() < deadline, f"data plane not at version {wanted}: {status}"
                await _sleep(0.02)


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def stop_cluster(cluster: Cluster) -> None:
    """Stop every process of ``cluster``; print the log of any that failed."""
    cluster.stop_all()
    for process in cluster.processes:
        if process.returncode not in (0, None, -15):
            print(f"--- {process.log_path.name} (exit {process.returncode}) ---\n{process.log()}")


# ---------------------------------------------------------------- balancer specs
# Kong's ``spec.fixtures.balancer_utils`` and ``helpers.https_server``, as Ferry helpers
# (facts of their behaviour, not their code): a target server that counts what it
# answers and can be told to fail, and the Admin API calls the balancer specs make.


class SpecServer:
    """A target: answers 200 (500 once told ``/unhealthy``), counts its answers.

    ``ok``/``fail`` count proxied requests (200 / 500 answers); ``status_ok`` and
    ``status_fail`` count probes of ``/status``. ``GET /healthy`` and ``/unhealthy``
    (sent directly, never counted) switch it; ``/timeout`` makes the next request
    hang past any read timeout. ``delay_ms`` delays every answer. ``hosts`` records
    the Host header of each proxied request.
    """

    def __init__(self, delay_ms: int = 0) -> None:
        self.delay_ms = delay_ms
        self.healthy = True
        self.timeouts = 0
        self.ok = self.fail = self.status_ok = self.status_fail = 0
        self.hosts: list[str] = []
        self.port = 0
        #: When set, a proxied request with another Host is answered 400, uncounted
        #: (Kong's https_server ``check_hostname``).
        self.expect_host: str | None = None
        self._runner: Any = None

    @property
    def total(self) -> int:
        return self.ok + self.fail

    async def start(self, port: int = 0) -> SpecServer:
        from aiohttp import web

        async def handle(request: web.Request) -> web.StreamResponse:
            path = request.path
            if path in ("/healthy", "/unhealthy"):
                self.healthy = path == "/healthy"
                return web.Response(text="ok")
            if path == "/timeout":
                self.timeouts += 1
                return web.Response(text="ok")
            if path == "/status":
                if self.healthy:
                    self.status_ok += 1
                    return web.Response(text="ok")
                self.status_fail += 1
                return web.Response(status=500, text="unhealthy")
            if self.timeouts:
                self.timeouts -= 1
                self.fail += 1
                await _sleep(5)
                return web.Response(text="late")
            if self.delay_ms:
                await _sleep(self.delay_ms / 1000)
            if self.expect_host is not None and request.host.rsplit(":", 1)[0] != self.expect_host:
                return web.Response(status=400, text="wrong host")
            self.hosts.append(request.headers.get("Host", ""))
            if self.healthy:
                self.ok += 1
                return web.json_response({"port": self.port, "uri": str(request.rel_url)})
            self.fail += 1
            return web.Response(status=500, text="unhealthy")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def control(self, path: str) -> None:
        """Kong's ``direct_request``: tell the server (not through the proxy)."""
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{self.port}{path}") as response:
                await response.read()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


async def serving(kind: type[SpecServer]) -> AsyncIterator[Any]:
    """A starter of ``kind`` servers (``await start(delay_ms=0, port=0)``); every server
    it started is stopped at teardown."""
    started: list[SpecServer] = []

    async def start(delay_ms: int = 0, port: int = 0) -> SpecServer:
        server = await kind(delay_ms).start(port)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            await server.stop()


#: ``bu.healthchecks_config``'s defaults (their status lists are the schema's defaults too).
HEALTHCHECKS_DEFAULTS: dict[str, Any] = {
    "active": {
        "timeout": 1,
        "concurrency": 10,
        "http_path": "/",
        "healthy": {"interval": 0, "http_statuses": [200, 302], "successes": 2},
        "unhealthy": {
            "interval": 0,
            "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
            "tcp_failures": 2,
            "timeouts": 3,
            "http_failures": 5,
        },
    },
    "passive": {
        "healthy": {
            "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                              300, 301, 302, 303, 304, 305, 306, 307, 308],
            "successes": 5,
        },
        "unhealthy": {"http_statuses": [429, 500, 503], "tcp_failures": 2, "timeouts": 7, "http_failures": 5},
    },
}


def healthchecks_config(overrides: dict[str, Any]) -> dict[str, Any]:
    """Kong's ``bu.healthchecks_config``: ``overrides`` merged into
    :data:`HEALTHCHECKS_DEFAULTS`, dict by dict (any other value replaces)."""

    def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(base)
        for key, value in extra.items():
            out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
        return out

    return merge(HEALTHCHECKS_DEFAULTS, overrides)


async def add_upstream(kong: KongCluster, http: aiohttp.ClientSession, **fields: Any) -> tuple[str, str]:
    """Kong's ``bu.add_upstream``: a fresh upstream (``slots`` 10 unless given); (name, id)."""
    body = {"name": unique("upstream"), "slots": 10, **fields}
    _, created = await admin_call(http, "POST", f"{kong.admin}/upstreams", body, 201)
    return created["name"], created["id"]


async def add_target(
    kong: KongCluster, http: aiohttp.ClientSession, upstream: str, target: str, weight: int = 10, **fields: Any
) -> dict[str, Any]:
    """Kong's ``bu.add_target`` (weight 10 unless given)."""
    body = {"target": target, "weight": weight, **fields}
    _, created = await admin_call(http, "POST", f"{kong.admin}/upstreams/{upstream}/targets", body, 201)
    return dict(created)


async def add_api(kong: KongCluster, http: aiohttp.ClientSession, upstream_name: str, **service: Any) -> str:
    """Kong's ``bu.add_api``: a service on the upstream and a route on a fresh host."""
    host = f"{unique('host')}.test"
    body = {"name": unique("svc"), "url": f"http://{upstream_name}:80", **service}
    _, svc = await admin_call(http, "POST", f"{kong.admin}/services", body, 201)
    await admin_call(http, "POST", f"{kong.admin}/routes", {"service": {"id": svc["id"]}, "hosts": [host]}, 201)
    return host


async def client_requests(
    dp: DataPlaneProc, n: int, host: str, path: str = "/", headers: dict[str, str] | None = None
) -> tuple[int, int, int | None]:
    """Kong's ``bu.client_requests``: n requests, each on a new connection;
    (oks, fails, last status). ``path`` is sent as given (not re-encoded)."""
    import yarl

    oks = fails = 0
    last: int | None = None
    for _ in range(n):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
            try:
                async with session.get(
                    yarl.URL(f"{dp.proxy}{path}", encoded=True), headers={"Host": host, **(headers or {})}
                ) as response:
                    await response.read()
                    last = response.status
            except aiohttp.ClientError:
                fails += 1
                last = None
                continue
        if last == 200:
            oks += 1
        elif last > 399:
            fails += 1
    return oks, fails, last


async def upstream_health(kong: KongCluster, http: aiohttp.ClientSession, upstream: str, query: str = "") -> Any:
    _, body = await admin_call(http, "GET", f"{kong.admin}/upstreams/{upstream}/health{query}", None, 200)
    return body


async def poll_wait_health(
    kong: KongCluster, http: aiohttp.ClientSession, upstream: str, target: str, value: str, timeout: float = 15.0
) -> None:
    """Kong's ``bu.poll_wait_health``: until ``target`` shows ``value`` in ``/health``."""
    async def reached() -> bool:
        body = await upstream_health(kong, http, upstream)
        return any(d["target"] == target and d["health"] == value for d in body["data"])

    await wait_for(reached, timeout=timeout, interval=0.05, message=f"{target} to become {value}")


# ------------------------------------------------------------------ a DNS server


class DnsZone:
    """A real authoritative DNS server on a free UDP port of 127.0.0.1, in a thread
    (Kong's ``dns_mock``): ``records[name][type]`` lists rdata texts (``"A"``,
    ``"AAAA"``, ``"SRV"`` as ``"priority weight port target."``, ``"CNAME"``); other
    names answer NXDOMAIN. Records may change while a module runs; ``ttl`` applies to
    every answer. Give the data plane ``--dns-resolver`` :attr:`address`."""

    def __init__(self) -> None:
        import socket
        import threading

        self.records: dict[str, dict[str, list[str]]] = {}
        self.ttl = 1
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._closed = False
        self.port = int(self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="kong-spec-dns", daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _serve(self) -> None:
        import dns.flags
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        while not self._closed:
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            try:
                query = dns.message.from_wire(data)
                question = query.question[0]
                name = question.name.to_text(omit_final_dot=True).lower()
                rdtype = dns.rdatatype.to_text(question.rdtype)
                response = dns.message.make_response(query)
                response.flags |= dns.flags.AA
                zone = dict(self.records.get(name) or {})
                if not zone:
                    response.set_rcode(dns.rcode.NXDOMAIN)
                elif zone.get("CNAME"):
                    response.answer.append(
                        dns.rrset.from_text(question.name, self.ttl, "IN", "CNAME", zone["CNAME"][0])
                    )
                elif zone.get(rdtype):
                    response.answer.append(
                        dns.rrset.from_text(question.name, self.ttl, "IN", rdtype, *zone[rdtype])
                    )
                self._sock.sendto(response.to_wire(), peer)
            except Exception:  # noqa: BLE001 - a bad packet must not end the server
                continue

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self._sock.close()


# ------------------------------------------------------------------ a TLS spec server


class TlsSpecServer(SpecServer):
    """A :class:`SpecServer` that speaks HTTPS (Kong's ``https_server`` with protocol
    ``https``): the same handler and counters, served with the suite's self-signed
    ``tests/fixtures/upstream-tls.*``; :meth:`control` goes over TLS too, unverified."""

    async def start(self, port: int = 0) -> TlsSpecServer:
        import ssl

        from aiohttp import web

        await super().start()
        runner = self._runner
        plain = list(runner.sites)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(FIXTURES / "upstream-tls.crt", FIXTURES / "upstream-tls.key")
        site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=context)
        await site.start()
        for old in plain:  # the app stays; only its plain-HTTP listener goes
            await old.stop()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def control(self, path: str) -> None:
        """Kong's ``direct_request`` with protocol ``https``."""
        async with aiohttp.ClientSession() as session:
            async with session.get(f"https://127.0.0.1:{self.port}{path}", ssl=False) as response:
                await response.read()


