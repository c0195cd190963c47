"""Kong's schema rules for gRPC: routes' ``grpc``/``grpcs`` protocols (Kong's grpc route
subschema), services' ``grpc``/``grpcs`` protocol, upstreams' ``grpc``/``grpcs`` check
types and Ferry's ``grpc_service_name``. Messages are Kong's (its schema specs)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from control_plane.errors import SchemaViolation
from control_plane.schemas import expand_shorthands, validate_entity

BASE = {"id": str(uuid.uuid4()), "created_at": 1_700_000_000, "updated_at": 1_700_000_000}
NOT_GRPC = "cannot set '{}' when 'protocols' is 'grpc' or 'grpcs'"


def valid(kind: str, **fields: Any) -> dict[str, Any]:
    return validate_entity(kind, {**BASE, **expand_shorthands(kind, fields)})


def violation(kind: str, **fields: Any) -> dict[str, Any]:
    with pytest.raises(SchemaViolation) as caught:
        validate_entity(kind, {**BASE, **expand_shorthands(kind, fields)})
    return caught.value.fields or {}


# ------------------------------------------------------------------------ routes


@pytest.mark.parametrize("protocols", [["grpc"], ["grpcs"], ["grpc", "grpcs"]])
def test_a_grpc_route_is_accepted_and_strip_path_defaults_to_false(protocols: list[str]) -> None:
    route = valid("routes", protocols=protocols, paths=["/helloworld.Greeter/"])
    assert route["protocols"] == protocols
    assert route["strip_path"] is False


def test_an_http_route_keeps_strip_path_true_by_default() -> None:
    assert valid("routes", paths=["/"])["strip_path"] is True


@pytest.mark.parametrize("protocols", [["grpc"], ["grpcs"]])
def test_a_grpc_route_refuses_strip_path_true(protocols: list[str]) -> None:
    assert violation("routes", protocols=protocols, hosts=["a.test"], strip_path=True) == {
        "strip_path": NOT_GRPC.format("strip_path")
    }


def test_a_grpc_route_refuses_methods() -> None:
    assert violation("routes", protocols=["grpc", "grpcs"], paths=["/"], methods=["GET"]) == {
        "methods": NOT_GRPC.format("methods")
    }


def test_a_grpc_route_refuses_stream_fields_with_the_grpc_wording() -> None:
    assert violation("routes", protocols=["grpc"], paths=["/"], sources=[{"ip": "10.0.0.1"}]) == {
        "sources": NOT_GRPC.format("sources")
    }


def test_http_and_grpc_protocols_are_mutually_exclusive() -> None:
    assert violation("routes", protocols=["http", "grpc"], paths=["/"]) == {
        "protocols": "these sets are mutually exclusive: ('http', 'https'), ('grpc', 'grpcs')"
    }


def test_a_grpcs_route_needs_hosts_headers_paths_or_snis() -> None:
    assert violation("routes", protocols=["grpc", "grpcs"]) == {
        "@entity": ["must set one of 'hosts', 'headers', 'paths', 'snis' when 'protocols' is 'grpcs'"]
    }
    assert valid("routes", protocols=["grpcs"], snis=["api.test"])["snis"] == ["api.test"]


def test_a_grpc_route_needs_hosts_headers_or_paths() -> None:
    assert violation("routes", protocols=["grpc"]) == {
        "@entity": ["must set one of 'hosts', 'headers', 'paths' when 'protocols' is 'grpc'"]
    }


def test_snis_need_grpcs_on_a_grpc_route() -> None:
    assert violation("routes", protocols=["grpc"], paths=["/"], snis=["api.test"]) == {
        "snis": "length must be 0",
        "@entity": ["'snis' can only be set when 'protocols' is 'grpcs', 'https' or 'tls'"],
    }


def test_an_unknown_protocol_lists_those_ferry_serves() -> None:
    assert violation("routes", protocols=["ws"], paths=["/"]) == {
        "protocols": ["expected one of: grpc, grpcs, http, https"]
    }


# ---------------------------------------------------------------------- services


@pytest.mark.parametrize("protocol", ["grpc", "grpcs"])
def test_a_grpc_service_takes_kongs_port_default(protocol: str) -> None:
    service = valid("services", protocol=protocol, host="greeter.internal")
    assert (service["protocol"], service["port"], service["path"]) == (protocol, 80, None)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("grpc://greeter.internal:50051", ("grpc", 50051)),
        # Kong's url shorthand knows only http's 80 and https's 443; grpcs gets 80.
        ("grpcs://greeter.internal", ("grpcs", 80)),
    ],
)
def test_the_url_shorthand_sets_a_grpc_protocol(url: str, expected: tuple[str, int]) -> None:
    service = valid("services", url=url)
    assert (service["protocol"], service["port"]) == expected


@pytest.mark.parametrize("protocol", ["grpc", "grpcs"])
def test_a_grpc_service_refuses_a_path(protocol: str) -> None:
    assert violation("services", protocol=protocol, host="a.test", path="/x") == {
        "path": "value must be null",
        "@entity": ["failed conditional validation given value of field 'protocol'"],
    }


def test_a_grpcs_service_refuses_the_https_only_tls_fields() -> None:
    """Kong 3.x: ``tls_verify`` and friends are for ``https`` (and ``tls``) only."""
    assert violation("services", protocol="grpcs", host="a.test", tls_verify=True) == {
        "tls_verify": "value must be null",
        "@entity": ["failed conditional validation given value of field 'protocol'"],
    }


# --------------------------------------------------------------------- upstreams


@pytest.mark.parametrize("check_type", ["grpc", "grpcs"])
def test_grpc_check_types_are_accepted_active_and_passive(check_type: str) -> None:
    upstream = valid(
        "upstreams",
        name="greeter",
        healthchecks={
            "active": {"type": check_type, "grpc_service_name": "helloworld.Greeter"},
            "passive": {"type": check_type},
        },
    )
    active = upstream["healthchecks"]["active"]
    assert (active["type"], active["grpc_service_name"]) == (check_type, "helloworld.Greeter")
    assert upstream["healthchecks"]["passive"]["type"] == check_type


def test_grpc_service_name_defaults_to_null_and_refuses_an_empty_string() -> None:
    assert valid("upstreams", name="a")["healthchecks"]["active"]["grpc_service_name"] is None
    fields = violation("upstreams", name="a", healthchecks={"active": {"grpc_service_name": ""}})
    assert fields == {"healthchecks": {"active": {"grpc_service_name": "length must be at least 1"}}}


def test_active_unhealthy_other_statuses_defaults_to_false_and_must_be_a_boolean() -> None:
    """Ferry's ``other_statuses`` (Kong #14861); off by default, Kong's behaviour."""
    assert valid("upstreams", name="a")["healthchecks"]["active"]["unhealthy"]["other_statuses"] is False
    checks = {"active": {"unhealthy": {"other_statuses": True}}}
    assert valid("upstreams", name="a", healthchecks=checks)["healthchecks"]["active"]["unhealthy"][
        "other_statuses"
    ] is True
    fields = violation("upstreams", name="a", healthchecks={"active": {"unhealthy": {"other_statuses": "x"}}})
    assert fields == {"healthchecks": {"active": {"unhealthy": {"other_statuses": "expected a boolean"}}}}
