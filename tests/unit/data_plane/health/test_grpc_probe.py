"""gRPC probes' pure parts: the length-prefixed framing, and the compile of
``healthchecks`` for ``grpc``/``grpcs`` (types, ``grpc_service_name``, probe TLS)."""

from __future__ import annotations

import pytest

from data_plane.health.grpc_probe import grpc_frame, grpc_messages
from data_plane.health.settings import compile_health_settings
from data_plane.runtime import compile_config


def test_a_frame_is_flag_length_and_message_and_splits_back() -> None:
    assert grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert grpc_messages(grpc_frame(b"") + grpc_frame(b"x" * 70000)) == [b"", b"x" * 70000]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\x00\x00\x00", "truncated gRPC message prefix"),
        (b"\x00\x00\x00\x00\x05abc", "truncated gRPC message"),
        (b"\x01\x00\x00\x00\x01a", "compressed gRPC message"),
    ],
)
def test_a_malformed_body_is_refused(body: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        grpc_messages(body)


@pytest.mark.parametrize("check_type", ["grpc", "grpcs"])
def test_grpc_types_compile_with_the_service_name(check_type: str) -> None:
    settings = compile_health_settings(
        {"active": {"type": check_type, "grpc_service_name": "helloworld.Greeter"},
         "passive": {"type": check_type}}
    )
    assert settings.active.type == check_type
    assert settings.active.grpc_service_name == "helloworld.Greeter"
    assert settings.passive.type == check_type


def test_a_null_service_name_asks_for_the_whole_server() -> None:
    settings = compile_health_settings({"active": {"type": "grpc", "grpc_service_name": None}})
    assert settings.active.grpc_service_name == ""


def test_an_unknown_type_names_every_type() -> None:
    with pytest.raises(ValueError, match="must be one of tcp, http, https, grpc, grpcs"):
        compile_health_settings({"active": {"type": "udp"}})


def test_grpcs_probes_and_services_get_an_http2_tls_identity() -> None:
    config = compile_config(1, "h1", {
        "upstreams": [{"id": "u1", "name": "greeters",
                       "healthchecks": {"active": {"type": "grpcs"}}}],
        "targets": [{"id": "t1", "target": "127.0.0.1:50051", "upstream": {"id": "u1"}}],
        "services": [{"id": "s1", "host": "greeters", "protocol": "grpcs", "port": 443},
                     {"id": "s2", "host": "plain.test", "protocol": "grpc", "port": 50051}],
        "routes": [{"id": "r1", "protocols": ["grpcs"], "paths": ["/"], "service": {"id": "s1"}}],
    })
    probe_tls = config.upstreams["u1"].health_settings.active.tls
    assert probe_tls is not None
    service = config.services["s1"]
    assert service.upstream_tls is not None and service.upstream_tls is not probe_tls
    assert config.services["s2"].upstream_tls is None
