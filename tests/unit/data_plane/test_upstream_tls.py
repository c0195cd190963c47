"""The TLS identities compiled into services and upstreams (``data_plane/upstream_tls.py``):
what a config whose certificates cannot be loaded gets (a ``ConfigError`` naming the
entity, never its key), which configs share a context, server names, and that keys are
loaded without leaving a descriptor or a file behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from data_plane.incremental_compile import compile_all, compile_change
from data_plane.runtime import ConfigError, RuntimeConfig, compile_config
from data_plane.upstream_tls import TlsEntities, TlsMaterialError, server_name
from tests.support.tls import Authority, entity_pems, make_authority

CERT_ID = "22222222-0000-4000-8000-000000000001"
CA_ID = "11111111-0000-4000-8000-000000000001"


@pytest.fixture
def root(tmp_path: Path) -> Authority:
    return make_authority(tmp_path, "unit-root")


@pytest.fixture
def client_pems(tmp_path: Path, root: Authority) -> dict[str, str]:
    return entity_pems(root.issue(tmp_path, "unit-client"))


def entities(
    *,
    service: dict[str, Any] | None = None,
    upstream: dict[str, Any] | None = None,
    certificates: list[dict[str, Any]] | None = None,
    ca_certificates: list[dict[str, Any]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    return {
        "certificates": certificates or [],
        "ca_certificates": ca_certificates or [],
        "upstreams": [{"id": "u1", "name": "backends", **(upstream or {})}],
        "targets": [{"id": "t0", "target": "127.0.0.1:8443", "upstream": {"id": "u1"}}],
        "services": [
            {"id": "s1", "host": "backends", "protocol": "https", **(service or {})},
            {"id": "s2", "host": "backends", "protocol": "https", **(service or {})},
        ],
        "routes": [{"id": "r1", "paths": ["/"], "service": {"id": "s1"}}],
    }


def compiled(version: int = 1, **kwargs: Any) -> RuntimeConfig:
    return compile_config(version, f"h{version}", entities(**kwargs))


def refused(**kwargs: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        compiled(**kwargs)
    return str(caught.value)


GARBAGE_CERT = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
BAD_CERTIFICATES = pytest.mark.parametrize(
    ("certificate", "says"),
    [
        ({"cert": GARBAGE_CERT}, "cannot be loaded"),
        ({"key": None}, "needs both 'cert' and 'key'"),
        ("other key", "cannot be loaded"),
    ],
    ids=["garbage-cert", "no-key", "key-of-another-certificate"],
)


def _bad(tmp_path: Path, root: Authority, pems: dict[str, str], certificate: Any) -> dict[str, Any]:
    if certificate == "other key":
        certificate = {"key": entity_pems(root.issue(tmp_path, "someone-else"))["key"]}
    return {"id": CERT_ID, **pems, **certificate}


@BAD_CERTIFICATES
def test_a_client_certificate_that_cannot_be_loaded_is_a_config_error_naming_it_not_its_key(
    tmp_path: Path, root: Authority, client_pems: dict[str, str], certificate: Any, says: str
) -> None:
    # The whole config is refused (the proxy port's certificate compile may be the
    # first to say so: every certificate entity is loaded for SNI as well).
    message = refused(
        service={"client_certificate": {"id": CERT_ID}},
        certificates=[_bad(tmp_path, root, client_pems, certificate)],
    )
    assert CERT_ID in message
    assert "PRIVATE KEY" not in message and "BEGIN" not in message


@BAD_CERTIFICATES
def test_the_client_certificate_loader_names_the_entity_and_the_reason_not_the_key(
    tmp_path: Path, root: Authority, client_pems: dict[str, str], certificate: Any, says: str
) -> None:
    tls = TlsEntities([_bad(tmp_path, root, client_pems, certificate)])
    with pytest.raises(TlsMaterialError) as caught:
        tls.for_service(verify=False, depth=None, ca_ids=(), client_certificate_id=CERT_ID)
    message = str(caught.value)
    assert message.startswith("certificate " + CERT_ID) and says in message
    assert "PRIVATE KEY" not in message and "BEGIN" not in message


def test_a_missing_certificate_or_ca_certificate_is_a_config_error() -> None:
    assert refused(service={"client_certificate": {"id": CERT_ID}}) == (
        f"service s1: certificate {CERT_ID} does not exist"
    )
    assert refused(service={"tls_verify": True, "ca_certificates": [CA_ID]}) == (
        f"service s1: ca_certificate {CA_ID} does not exist"
    )
    assert refused(upstream={"client_certificate": {"id": CERT_ID}}) == (
        f"upstream 'backends' (u1): certificate {CERT_ID} does not exist"
    )


def test_an_unparsable_ca_certificate_is_a_config_error() -> None:
    garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    message = refused(
        service={"tls_verify": True, "ca_certificates": [CA_ID]},
        ca_certificates=[{"id": CA_ID, "cert": garbage}],
    )
    assert message.startswith("service s1: a ca_certificate cannot be loaded")


def test_an_encrypted_key_is_refused_instead_of_prompting(client_pems: dict[str, str]) -> None:
    key = serialization.load_pem_private_key(client_pems["key"].encode(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    tls = TlsEntities([{"id": CERT_ID, "cert": client_pems["cert"], "key": encrypted}])
    with pytest.raises(TlsMaterialError) as caught:
        tls.for_service(verify=False, depth=None, ca_ids=(), client_certificate_id=CERT_ID)
    assert str(caught.value) == f"certificate {CERT_ID} cannot be loaded: the private key is encrypted"


@pytest.mark.parametrize("depth", [-1, 65, "2", True])
def test_tls_verify_depth_outside_kongs_range_is_a_config_error(depth: object) -> None:
    assert "'tls_verify_depth' must be an integer between 0 and 64" in refused(
        service={"tls_verify": True, "tls_verify_depth": depth}
    )


def test_the_same_material_gives_the_same_context_and_other_material_another(
    tmp_path: Path, root: Authority, client_pems: dict[str, str]
) -> None:
    settings = {
        "service": {"tls_verify": True, "tls_verify_depth": 3, "ca_certificates": [CA_ID],
                    "client_certificate": {"id": CERT_ID}},
        "certificates": [{"id": CERT_ID, **client_pems}],
        "ca_certificates": [{"id": CA_ID, "cert": root.pem()}],
    }
    first = compiled(1, **settings)
    again = compiled(2, **settings)
    tls = first.services["s1"].upstream_tls
    assert tls is not None and tls.verify and tls.max_chain == 5
    assert tls.client_certificate_id == CERT_ID
    # Two services alike share one context; a new config version keeps it.
    assert first.services["s2"].upstream_tls is tls
    assert again.services["s1"].upstream_tls is tls
    other_ca = make_authority(tmp_path, "other-root")
    changed = compiled(3, **{**settings, "ca_certificates": [{"id": CA_ID, "cert": other_ca.pem()}]})
    assert changed.services["s1"].upstream_tls is not tls
    assert changed.services["s1"].upstream_tls.pool_prefix != tls.pool_prefix  # type: ignore[union-attr]


def test_an_incremental_change_that_leaves_a_service_alone_keeps_its_tls_identity(
    client_pems: dict[str, str],
) -> None:
    raw = entities(
        upstream={"client_certificate": {"id": CERT_ID}},
        certificates=[{"id": CERT_ID, **client_pems}],
    )
    by_id = {kind: {e["id"]: e for e in items} for kind, items in raw.items()}
    state = compile_all(1, "h1", by_id, None)
    tls = state.config.services["s1"].upstream_tls
    assert tls is not None and tls.client_certificate_id == CERT_ID
    # A new route, then a service edited (its upstream's certificate still applies).
    route = {"id": "r2", "paths": ["/two"], "service": {"id": "s2"}}
    state = compile_change(state, 2, "h2", {("routes", "r2"): route})
    assert state.config.services["s1"].upstream_tls is tls
    edited = {**by_id["services"]["s2"], "read_timeout": 5000}
    state = compile_change(state, 3, "h3", {("services", "s2"): edited})
    assert state.config.services["s2"] is not state.config.services["s1"]
    assert state.config.services["s2"].upstream_tls is tls


def test_https_probe_settings_carry_the_upstreams_certificate_and_stay_equal_across_versions(
    client_pems: dict[str, str],
) -> None:
    settings = {
        "upstream": {
            "client_certificate": {"id": CERT_ID},
            "healthchecks": {"active": {"type": "https", "healthy": {"interval": 5}}},
        },
        "certificates": [{"id": CERT_ID, **client_pems}],
    }
    first = compiled(1, **settings).upstreams["u1"].health_settings
    second = compiled(2, **settings).upstreams["u1"].health_settings
    assert first.active.tls is not None and first.active.tls.client_certificate_id == CERT_ID
    assert first.active.tls.verify  # https_verify_certificate defaults to true
    assert first == second  # so the running checker carries on


def test_loading_a_client_certificate_leaves_no_descriptor_open(tmp_path: Path) -> None:
    before = set(os.listdir("/proc/self/fd"))
    # A fresh key each time, so the context is built, not found in the cache.
    for version in range(1, 4):
        pems = entity_pems(make_authority(tmp_path / str(version), "c").pair)
        config = compiled(
            version,
            service={"client_certificate": {"id": CERT_ID}},
            certificates=[{"id": CERT_ID, **pems}],
        )
        assert config.services["s1"].upstream_tls is not None
    assert set(os.listdir("/proc/self/fd")) <= before  # the memory files are closed


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("backend.test", "backend.test"),
        ("backend.test:8443", "backend.test"),
        ("127.0.0.1:8443", "127.0.0.1"),
        ("[::1]:8443", "::1"),
        ("[::1]", "::1"),
    ],
)
def test_the_server_name_is_the_host_without_port_or_brackets(host: str, name: str) -> None:
    assert server_name(host) == name


def test_an_http_service_has_no_tls_identity_and_ignores_the_tls_fields() -> None:
    config = compiled(service={"protocol": "http", "tls_verify": True, "ca_certificates": [CA_ID]})
    assert config.services["s1"].upstream_tls is None and not config.services["s1"].tls
