"""TLS from the proxy to targets, as Kong's fields say: ``tls_verify`` (with
``ca_certificates`` or the system store, and ``tls_verify_depth``), ``client_certificate``
of the service or else of its upstream, pooled TLS connections kept apart by TLS
identity, and ``https`` probes with the upstream's certificate.

Everything is real: certificates made by the test (``tests/support/tls.py``), aiohttp
TLS targets that record handshakes, server names and client certificates, the proxy
in-process with ``certificates``/``ca_certificates`` entities in its config.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from data_plane.runtime import RuntimeConfig, compile_config
from tests.support.backends import TlsBackend
from tests.support.polling import wait_for
from tests.support.proxy import HealthGateway, client, start_proxy
from tests.support.tls import Authority, Pair, entity_pems, make_authority, self_signed

#: The name targets are reached by (the upstream's host_header: Host and server name).
NAME = "backend.test"
CA_ID = "11111111-0000-4000-8000-000000000001"
OTHER_CA_ID = "11111111-0000-4000-8000-000000000002"
SERVICE_CERT_ID = "22222222-0000-4000-8000-000000000001"
UPSTREAM_CERT_ID = "22222222-0000-4000-8000-000000000002"


def tls_config(
    port: int,
    *,
    service: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    certificates: list[dict[str, Any]] | None = None,
    ca_certificates: list[dict[str, Any]] | None = None,
    more_services: list[dict[str, Any]] | None = None,
    version: int = 1,
) -> RuntimeConfig:
    """Upstream "backends" (Host/SNI :data:`NAME`) over ``127.0.0.1:port``; https
    service "s1" on it (2 retries) behind ``/api``; ``more_services`` ("s2", ...) on the
    same upstream behind ``/<id>``."""
    services = [
        {"id": "s1", "name": "svc", "host": "backends", "port": 443, "protocol": "https",
         "retries": 2, **(service or {})},
    ]
    routes = [{"id": "r1", "paths": ["/api"], "service": {"id": "s1"}}]
    for extra in more_services or []:
        services.append({"host": "backends", "port": 443, "protocol": "https", "retries": 2, **extra})
        routes.append({"id": f"r-{extra['id']}", "paths": [f"/{extra['id']}"], "service": {"id": extra["id"]}})
    return compile_config(
        version,
        f"h{version}",
        {
            "certificates": certificates or [],
            "ca_certificates": ca_certificates or [],
            "upstreams": [{"id": "u1", "name": "backends", "host_header": NAME, **(upstream or {})}],
            "targets": [{"id": "t0", "target": f"127.0.0.1:{port}", "upstream": {"id": "u1"}}],
            "services": services,
            "routes": routes,
        },
    )


def ca_entity(authority: Authority, ident: str = CA_ID) -> dict[str, Any]:
    return {"id": ident, "cert": authority.pem()}


def cert_entity(pair: Pair, ident: str) -> dict[str, Any]:
    return {"id": ident, **entity_pems(pair)}


async def get(stack: AsyncExitStack, config: RuntimeConfig, path: str = "/api/x", times: int = 1) -> list[tuple[int, Any]]:
    """Start a proxy on ``config`` and GET ``path`` ``times`` times: (status, JSON body)."""
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    answers = []
    for _ in range(times):
        async with session.get(url + path) as resp:
            answers.append((resp.status, await resp.json()))
    return answers


@pytest.fixture
def root(tmp_path: Path) -> Authority:
    return make_authority(tmp_path, "test-root")


async def tls_target(stack: AsyncExitStack, certificate: Pair | None = None, **kwargs: Any) -> TlsBackend:
    backend = TlsBackend(certificate, **kwargs)
    await backend.start(stack)
    return backend


async def test_a_target_whose_certificate_the_service_ca_trusts_is_proxied_with_sni(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    backend = await tls_target(stack, root.issue(tmp_path, NAME))
    config = tls_config(
        backend.port,
        service={"tls_verify": True, "ca_certificates": [CA_ID]},
        ca_certificates=[ca_entity(root)],
    )
    [(status, body)] = await get(stack, config)
    assert status == 200 and body["backend"] == "tls"
    assert backend.server_names == [NAME] and backend.hosts == [NAME]


async def test_an_untrusted_certificate_is_a_502_after_retries_with_a_log_line_saying_why(
    stack: AsyncExitStack, tmp_path: Path, root: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    stranger = make_authority(tmp_path, "stranger")
    backend = await tls_target(stack, stranger.issue(tmp_path, NAME))
    config = tls_config(
        backend.port,
        service={"tls_verify": True, "ca_certificates": [CA_ID]},
        ca_certificates=[ca_entity(root)],
    )
    with caplog.at_level(logging.WARNING, logger="data_plane.upstream_tls"):
        [(status, body)] = await get(stack, config)
    assert status == 502
    assert body == {"message": "An invalid response was received from the upstream server"}
    assert len(backend.server_names) == 3  # the first try and service.retries (2) more
    assert backend.hosts == []  # no request byte reached the target
    [record] = [r for r in caplog.records if r.name == "data_plane.upstream_tls"]
    message = record.getMessage()
    assert "unable to get local issuer certificate" in message
    assert f"127.0.0.1:{backend.port}" in message and "'svc' (s1)" in message
    assert record.exc_info is None  # a reason, never a traceback


async def test_a_failed_verification_counts_as_a_tcp_failure_for_passive_health(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    backend = await tls_target(stack, make_authority(tmp_path, "stranger").issue(tmp_path, NAME))
    checks = {"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}}
    gw = HealthGateway()
    config = tls_config(
        backend.port,
        service={"tls_verify": True, "ca_certificates": [CA_ID], "retries": 0},
        upstream={"healthchecks": checks},
        ca_certificates=[ca_entity(root)],
    )
    await gw.start(stack, config)
    session = await client(stack)
    async with session.get(gw.url + "/api/x") as resp:
        assert resp.status == 502
    assert gw.state(backend.key) == "UNHEALTHY"
    assert gw.reason(backend.key) == "passive: 1 tcp_failures"


async def test_verification_without_ca_certificates_uses_the_system_store(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    backend = await tls_target(stack, root.issue(tmp_path, NAME))  # no system CA signed it
    [(status, _)] = await get(stack, tls_config(backend.port, service={"tls_verify": True}))
    assert status == 502


async def test_a_certificate_for_another_host_name_is_a_502(
    stack: AsyncExitStack, tmp_path: Path, root: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    backend = await tls_target(stack, root.issue(tmp_path, "other.test"))
    config = tls_config(
        backend.port,
        service={"tls_verify": True, "ca_certificates": [CA_ID]},
        ca_certificates=[ca_entity(root)],
    )
    with caplog.at_level(logging.WARNING, logger="data_plane.upstream_tls"):
        [(status, _)] = await get(stack, config)
    assert status == 502
    assert any("Hostname mismatch" in r.getMessage() for r in caplog.records)


async def test_an_ip_literal_host_is_verified_against_the_certificates_ip_addresses(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    backend = await tls_target(
        stack, root.issue(tmp_path, "by-ip", ["by-ip.test"], ip_addresses=["127.0.0.1"])
    )
    config = tls_config(
        backend.port,
        service={"tls_verify": True, "ca_certificates": [CA_ID]},
        upstream={"host_header": None},
        ca_certificates=[ca_entity(root)],
    )
    [(status, _)] = await get(stack, config)
    assert status == 200
    assert backend.server_names == [None]  # no SNI for an IP literal


@pytest.mark.parametrize(("depth", "status"), [(1, 502), (2, 200), (None, 200)])
async def test_tls_verify_depth_bounds_the_verified_chain(
    stack: AsyncExitStack, tmp_path: Path, root: Authority, depth: int | None, status: int
) -> None:
    # root -> first -> second -> leaf: a verified chain of 4 certificates, which
    # OpenSSL's depth 2 allows (depth + 2) and depth 1 does not.
    first = root.intermediate(tmp_path, "first")
    second = first.intermediate(tmp_path, "second")
    leaf = second.issue(tmp_path, NAME)
    chain = tmp_path / "chain.crt"
    chain.write_text(leaf.cert.read_text() + second.pem() + first.pem())
    backend = await tls_target(stack, Pair(chain, leaf.key))
    config = tls_config(
        backend.port,
        service={"tls_verify": True, "tls_verify_depth": depth, "ca_certificates": [CA_ID]},
        ca_certificates=[ca_entity(root)],
    )
    [(got, _)] = await get(stack, config)
    assert got == status
    assert backend.hosts == ([NAME] if status == 200 else [])


@pytest.mark.parametrize("tls_verify", [False, None])
async def test_without_tls_verify_any_certificate_is_accepted(
    stack: AsyncExitStack, tmp_path: Path, tls_verify: bool | None
) -> None:
    backend = await tls_target(stack, self_signed(tmp_path, "odd", "odd.test"))
    config = tls_config(
        backend.port,
        service={"tls_verify": tls_verify, "ca_certificates": [CA_ID]},
        ca_certificates=[ca_entity(make_authority(tmp_path, "unused"))],
    )
    [(status, _)] = await get(stack, config)
    assert status == 200


async def test_the_services_client_certificate_is_presented_before_the_upstreams(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    clients = make_authority(tmp_path, "client-ca")
    backend = await tls_target(stack, root.issue(tmp_path, NAME), client_ca=clients.pair.cert)
    config = tls_config(
        backend.port,
        service={"client_certificate": {"id": SERVICE_CERT_ID}},
        upstream={"client_certificate": {"id": UPSTREAM_CERT_ID}},
        more_services=[{"id": "s2", "name": "plain"}],  # none of its own: the upstream's
        certificates=[
            cert_entity(clients.issue(tmp_path, "service-client"), SERVICE_CERT_ID),
            cert_entity(clients.issue(tmp_path, "upstream-client"), UPSTREAM_CERT_ID),
        ],
    )
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    for path, name in (("/api/x", "service-client"), ("/s2/x", "upstream-client")):
        async with session.get(url + path) as resp:
            assert resp.status == 200
            assert (await resp.json())["client"] == name
    assert backend.client_names == ["service-client", "upstream-client"]


async def test_a_target_requiring_a_client_certificate_refuses_a_service_without_one(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    clients = make_authority(tmp_path, "client-ca")
    backend = await tls_target(stack, root.issue(tmp_path, NAME), client_ca=clients.pair.cert)
    [(status, _)] = await get(stack, tls_config(backend.port))
    assert status == 502 and backend.hosts == []


async def test_a_tls_connection_is_pooled_and_reused_only_by_the_same_tls_identity(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    # A self-signed target: "s1" does not verify and pools its connection; "s2"
    # verifies (system store) and must not be handed that connection.
    backend = await tls_target(stack, self_signed(tmp_path, "odd", NAME))
    config = tls_config(backend.port, more_services=[{"id": "s2", "tls_verify": True}])
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    for _ in range(3):
        async with session.get(url + "/api/x") as resp:
            assert resp.status == 200
    assert len(backend.server_names) == 1  # one handshake for three requests
    async with session.get(url + "/s2/x") as resp:
        assert resp.status == 502
    assert len(backend.hosts) == 3


async def test_https_probes_present_the_upstreams_certificate_and_verify_the_target(
    stack: AsyncExitStack, tmp_path: Path, root: Authority
) -> None:
    clients = make_authority(tmp_path, "client-ca")
    trusted = await tls_target(stack, root.issue(tmp_path, NAME), client_ca=clients.pair.cert)
    stranger = make_authority(tmp_path, "stranger")
    untrusted = await tls_target(stack, stranger.issue(tmp_path, NAME), client_ca=clients.pair.cert)
    checks = {
        "active": {
            "type": "https",
            "timeout": 2,
            "healthy": {"interval": 0.05, "successes": 1},
            "unhealthy": {"interval": 0.05, "tcp_failures": 2},
        }
    }
    config = compile_config(
        1,
        "h1",
        {
            "certificates": [cert_entity(clients.issue(tmp_path, "probe-client"), UPSTREAM_CERT_ID)],
            "ca_certificates": [ca_entity(root)],
            "upstreams": [{"id": "u1", "name": "backends", "host_header": NAME,
                           "client_certificate": {"id": UPSTREAM_CERT_ID}, "healthchecks": checks}],
            "targets": [
                {"id": "t0", "target": trusted.key, "upstream": {"id": "u1"}},
                {"id": "t1", "target": untrusted.key, "upstream": {"id": "u1"}},
            ],
            "services": [{"id": "s1", "host": "backends", "protocol": "https"}],
            "routes": [{"id": "r1", "paths": ["/"], "service": {"id": "s1"}}],
        },
    )
    gw = HealthGateway()
    await gw.start(stack, config)
    await wait_for(lambda: len(trusted.client_names) >= 2, message="probes of the trusted target")
    assert set(trusted.client_names) == {"probe-client"}
    assert NAME in trusted.server_names
    await wait_for(lambda: gw.state(untrusted.key) == "UNHEALTHY", message="untrusted target down")
    assert gw.reason(untrusted.key) == "active: 2 tcp_failures"
    assert gw.state(trusted.key) == "HEALTHY"
    assert untrusted.hosts == []  # the probe never got past the handshake


async def test_https_probes_without_verification_accept_any_certificate(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await tls_target(stack, self_signed(tmp_path, "odd", "odd.test"))
    checks = {
        "active": {
            "type": "https",
            "https_verify_certificate": False,
            "https_sni": "probe.test",
            "healthy": {"interval": 0.05, "successes": 1},
            "unhealthy": {"interval": 0.05, "tcp_failures": 1},
        }
    }
    gw = HealthGateway()
    await gw.start(stack, tls_config(backend.port, upstream={"healthchecks": checks}))
    await wait_for(lambda: len(backend.hosts) >= 2, message="probes answered")
    assert gw.state(backend.key) == "HEALTHY"
    assert "probe.test" in backend.server_names
