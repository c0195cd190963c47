"""gRPC active health checks (``healthchecks.active.type`` ``grpc``/``grpcs``) through
the data plane's compile, health supervisor, checker and balancer, against real grpcio
servers implementing ``grpc.health.v1``: targets go UNHEALTHY and back with Kong's
counters, over h2c and over TLS with ALPN h2 and the upstream's client certificate.

Nothing asserts a duration: tests poll for a state with a deadline.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from data_plane.runtime import compile_config
from tests.support.backends import FlipBackend, refused_port
from tests.support.grpc_servers import NOT_SERVING, SERVING, GrpcTarget
from tests.support.polling import wait_for
from tests.support.proxy import HealthGateway, upstream_config
from tests.support.tls import entity_pems, make_authority


def grpc_checks(check_type: str = "grpc", **active: Any) -> dict[str, Any]:
    return {
        "active": {
            "type": check_type,
            "timeout": 2,
            "healthy": {"interval": 0.05, "successes": 2},
            "unhealthy": {"interval": 0.05, "http_failures": 2, "tcp_failures": 2, "timeouts": 2},
            **active,
        }
    }


async def test_a_target_not_serving_goes_unhealthy_and_comes_back(stack: AsyncExitStack) -> None:
    a, b = await GrpcTarget().start(stack), await GrpcTarget().start(stack)
    gw = HealthGateway()
    await gw.start(stack, upstream_config([a.key, b.key], grpc_checks()))

    await b.set(NOT_SERVING)
    await wait_for(lambda: gw.state(b.key) == "UNHEALTHY", message="b unhealthy")
    # The target answered, unhealthy: Kong's http_failures (the answer's :status is 200).
    assert gw.reason(b.key) == "active: 2 http_failures (last status 200)"
    assert gw.state(a.key) == "HEALTHY"

    await b.set(SERVING)
    await wait_for(lambda: gw.state(b.key) == "HEALTHY", message="b healthy again")
    assert gw.reason(b.key) == "active: 2 successes"


async def test_the_probe_asks_for_the_configured_service_name(stack: AsyncExitStack) -> None:
    target = await GrpcTarget().start(stack)
    await target.set(SERVING)  # the server as a whole
    await target.set(NOT_SERVING, "helloworld.Greeter")
    gw = HealthGateway()
    checks = grpc_checks(grpc_service_name="helloworld.Greeter")
    await gw.start(stack, upstream_config([target.key], checks))
    await wait_for(lambda: gw.state(target.key) == "UNHEALTHY", message="the service's status")

    await target.set(SERVING, "helloworld.Greeter")
    await wait_for(lambda: gw.state(target.key) == "HEALTHY", message="the service serving")


async def test_an_unknown_service_name_is_an_http_failure(stack: AsyncExitStack) -> None:
    """grpcio answers NOT_FOUND (a non-zero grpc-status) for a service it never heard of."""
    target = await GrpcTarget().start(stack)
    gw = HealthGateway()
    await gw.start(stack, upstream_config([target.key], grpc_checks(grpc_service_name="nope")))
    await wait_for(lambda: gw.state(target.key) == "UNHEALTHY", message="unknown service")
    assert gw.reason(target.key) == "active: 2 http_failures (last status 200)"


async def test_refused_connections_and_http1_targets_are_tcp_failures(stack: AsyncExitStack) -> None:
    grpc_target = await GrpcTarget().start(stack)
    http1 = FlipBackend("h1")  # answers the HTTP/2 preface as HTTP/1.1 would: no SETTINGS
    await http1.start(stack)
    dead = f"127.0.0.1:{refused_port()}"
    gw = HealthGateway()
    await gw.start(stack, upstream_config([grpc_target.key, http1.key, dead], grpc_checks()))
    await wait_for(lambda: gw.state(dead) == "UNHEALTHY", message="refused target unhealthy")
    await wait_for(lambda: gw.state(http1.key) == "UNHEALTHY", message="HTTP/1.1 target unhealthy")
    assert gw.reason(dead) == "active: 2 tcp_failures"
    assert gw.reason(http1.key) == "active: 2 tcp_failures"
    assert gw.state(grpc_target.key) == "HEALTHY"


async def test_grpcs_probes_present_the_upstreams_certificate_and_verify_the_target(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    name = "greeter.test"
    root = make_authority(tmp_path, "root")
    clients = make_authority(tmp_path, "client-ca")
    stranger = make_authority(tmp_path, "stranger")
    trusted = await GrpcTarget(
        certificate=root.issue(tmp_path, name), client_ca=clients.pair.cert
    ).start(stack)
    untrusted = await GrpcTarget(
        certificate=stranger.issue(tmp_path, name), client_ca=clients.pair.cert
    ).start(stack)
    config = compile_config(
        1,
        "h1",
        {
            "certificates": [{"id": "c1", **entity_pems(clients.issue(tmp_path, "probe-client"))}],
            "ca_certificates": [{"id": "ca1", "cert": root.pem()}],
            "upstreams": [{"id": "u1", "name": "greeters", "host_header": name,
                           "client_certificate": {"id": "c1"}, "healthchecks": grpc_checks("grpcs")}],
            "targets": [
                {"id": "t0", "target": trusted.key, "upstream": {"id": "u1"}},
                {"id": "t1", "target": untrusted.key, "upstream": {"id": "u1"}},
            ],
            "services": [{"id": "s1", "host": "greeters", "protocol": "grpcs"}],
            "routes": [{"id": "r1", "protocols": ["grpcs"], "paths": ["/"], "service": {"id": "s1"}}],
        },
    )
    gw = HealthGateway()
    await gw.start(stack, config)
    await wait_for(lambda: gw.state(untrusted.key) == "UNHEALTHY", message="untrusted target down")
    assert gw.reason(untrusted.key) == "active: 2 tcp_failures"

    await trusted.set(NOT_SERVING)
    await wait_for(lambda: gw.state(trusted.key) == "UNHEALTHY", message="trusted target not serving")
    # It got past the handshake (certificate verified, client certificate accepted).
    assert gw.reason(trusted.key) == "active: 2 http_failures (last status 200)"
    await trusted.set(SERVING)
    await wait_for(lambda: gw.state(trusted.key) == "HEALTHY", message="trusted target back")


async def test_grpcs_probes_without_a_client_certificate_fail_the_handshake(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    root = make_authority(tmp_path, "root")
    clients = make_authority(tmp_path, "client-ca")
    target = await GrpcTarget(
        certificate=root.issue(tmp_path, "greeter.test"), client_ca=clients.pair.cert
    ).start(stack)
    checks = grpc_checks("grpcs", https_verify_certificate=False)
    gw = HealthGateway()
    await gw.start(stack, upstream_config([target.key], checks, host_header="greeter.test"))
    await wait_for(lambda: gw.state(target.key) == "UNHEALTHY", message="refused by the target")
    assert gw.reason(target.key) == "active: 2 tcp_failures"
