"""Compiling certificates and SNIs for the proxy's TLS listeners, the default certificate,
and the router's ``snis`` (real X.509 made with ``cryptography``)."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from data_plane.router import Router, RouteSpec
from data_plane.runtime import ConfigError, compile_config
from data_plane.tls_termination import (
    compile_server_certificates,
    load_or_create_default_certificate,
    new_server_context,
)
from tests.support.tls import Authority, make_authority


def _pem(authority: Authority, tmp_path: Path, name: str) -> dict[str, str]:
    pair = authority.issue(tmp_path, name)
    return {"cert": pair.cert.read_text(), "key": pair.key.read_text()}


def _rsa_pem(name: str) -> dict[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    return {
        "cert": cert.public_bytes(serialization.Encoding.PEM).decode(),
        "key": key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    }


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path, "CA")


def test_sni_lookup_prefers_the_exact_name_then_left_then_right_wildcards(
    authority: Authority, tmp_path: Path
) -> None:
    certificates = [{"id": n, **_pem(authority, tmp_path, n)} for n in ("exact", "left", "right")]
    compiled = compile_server_certificates(certificates, [
        {"id": "1", "name": "a.example.com", "certificate": {"id": "exact"}},
        {"id": "2", "name": "*.example.com", "certificate": {"id": "left"}},
        {"id": "3", "name": "A.example.*", "certificate": {"id": "right"}},
    ])

    def chosen(name: str) -> str | None:
        found = compiled.for_server_name(name)
        return found.id if found is not None else None

    assert chosen("a.example.com") == "exact"
    assert chosen("b.example.com") == "left"
    assert chosen("a.example.org") == "right"  # names are compared lower-cased
    assert chosen("example.com") is None
    assert chosen("x.b.example.com") is None  # "*." covers one label
    assert compiled.names == {"exact": ("a.example.com",), "left": ("*.example.com",), "right": ("a.example.*",)}


def test_an_unchanged_certificate_keeps_its_context_across_configs(
    authority: Authority, tmp_path: Path
) -> None:
    certificates = [{"id": "c1", **_pem(authority, tmp_path, "one")}]
    first = compile_server_certificates(certificates, [])
    second = compile_server_certificates(certificates, [], first)
    assert second.by_id["c1"] is first.by_id["c1"]
    changed = compile_server_certificates([{"id": "c1", **_pem(authority, tmp_path, "two")}], [], second)
    assert changed.by_id["c1"].context is not first.by_id["c1"].context


def test_an_rsa_alternative_certificate_loads_beside_the_ecdsa_one(
    authority: Authority, tmp_path: Path
) -> None:
    alt = _rsa_pem("alt")
    compiled = compile_server_certificates(
        [{"id": "c1", **_pem(authority, tmp_path, "main"), "cert_alt": alt["cert"], "key_alt": alt["key"]}], []
    )
    loaded = compiled.by_id["c1"]
    assert loaded.alt_expires_at is not None and loaded.alt_expires_at < loaded.expires_at


def _compile(certificates: list[dict[str, object]], snis: list[dict[str, object]] | None = None) -> None:
    compile_config(1, "h", {"certificates": certificates, "snis": snis or []})


def test_a_key_that_does_not_match_is_a_config_error_naming_the_certificate_not_the_key(
    authority: Authority, tmp_path: Path
) -> None:
    one, two = _pem(authority, tmp_path, "one"), _pem(authority, tmp_path, "two")
    with pytest.raises(ConfigError, match="certificate c1: certificate does not match key") as caught:
        _compile([{"id": "c1", "cert": one["cert"], "key": two["key"]}])
    assert "PRIVATE KEY" not in str(caught.value)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"cert": "not a pem"}, "cannot be loaded"),
        ({"key": None}, "'key' must be a PEM string"),
        ({"cert_alt": "x"}, "'cert_alt' and 'key_alt' go together"),
    ],
)
def test_unloadable_certificates_are_config_errors(
    authority: Authority, tmp_path: Path, change: dict[str, object], says: str
) -> None:
    with pytest.raises(ConfigError, match=says):
        _compile([{"id": "c1", **_pem(authority, tmp_path, "one"), **change}])


def test_a_certificate_that_expired_after_the_control_plane_took_it_is_still_served(tmp_path: Path) -> None:
    from tests.support.tls import self_signed

    pair = self_signed(
        tmp_path, "old", "old.test",
        not_before=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3),
        not_after=datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1),
    )
    compiled = compile_server_certificates(
        [{"id": "c1", "cert": pair.cert.read_text(), "key": pair.key.read_text()}], []
    )
    assert compiled.by_id["c1"].expires_at < datetime.datetime.now(datetime.UTC).timestamp()


def test_an_encrypted_key_is_refused_without_a_pass_phrase_prompt(authority: Authority, tmp_path: Path) -> None:
    pem = _pem(authority, tmp_path, "locked")
    key = serialization.load_pem_private_key(pem["key"].encode(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ).decode()
    with pytest.raises(ConfigError, match="certificate c1:"):
        _compile([{"id": "c1", "cert": pem["cert"], "key": encrypted}])


def test_snis_must_name_an_existing_certificate_once(authority: Authority, tmp_path: Path) -> None:
    certificate = {"id": "c1", **_pem(authority, tmp_path, "one")}
    with pytest.raises(ConfigError, match="certificate nope does not exist"):
        _compile([certificate], [{"id": "1", "name": "a.test", "certificate": {"id": "nope"}}])
    with pytest.raises(ConfigError, match="listed twice"):
        _compile([certificate], [
            {"id": "1", "name": "a.test", "certificate": {"id": "c1"}},
            {"id": "2", "name": "A.TEST", "certificate": {"id": "c1"}},
        ])


def test_the_default_certificate_is_made_once_and_its_key_kept_private(tmp_path: Path) -> None:
    cert, key = load_or_create_default_certificate(tmp_path)
    assert stat.S_IMODE((tmp_path / "tls" / "default.key").stat().st_mode) == 0o600
    assert load_or_create_default_certificate(tmp_path) == (cert, key)
    subject = x509.load_pem_x509_certificate(cert.encode()).subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "localhost"


def test_a_corrupt_default_certificate_is_replaced(tmp_path: Path) -> None:
    cert, _ = load_or_create_default_certificate(tmp_path)
    (tmp_path / "tls" / "default.crt").write_text("garbage")
    again, _ = load_or_create_default_certificate(tmp_path)
    assert again != cert and again.startswith("-----BEGIN CERTIFICATE-----")


def test_the_listener_policy_is_tls_1_2_or_newer() -> None:
    import ssl

    context = new_server_context()
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION


def _spec(route_id: str, snis: tuple[str, ...] = (), paths: tuple[str, ...] = ("/",)) -> RouteSpec[str]:
    return RouteSpec(id=route_id, name=None, service=route_id, paths=paths, snis=snis)


def test_router_matches_snis_on_tls_only_and_remembers_per_server_name() -> None:
    router = Router([_spec("sni", snis=("a.test",)), _spec("any")])

    def routed(sni: bytes | None) -> str | None:
        found = router.match(b"GET", b"x", b"/p", None, sni)
        return found.route.id if found is not None else None

    for _ in range(2):  # the second round comes from the match cache
        assert routed(b"a.test") == "sni"
        assert routed(b"b.test") == "any"
        assert routed(b"") == "any"  # TLS without SNI
        assert routed(None) == "sni"  # plaintext: snis are not considered (Kong)


def test_a_route_with_only_snis_is_compiled() -> None:
    config = compile_config(1, "h", {
        "services": [{"id": "s1", "host": "127.0.0.1", "port": 80, "protocol": "http"}],
        "routes": [{"id": "r1", "snis": ["a.test"], "protocols": ["https"], "service": {"id": "s1"}}],
    })
    match = config.match(b"GET", None, b"/", None, b"a.test")
    assert match is not None and match.route.id == "r1"
    assert config.match(b"GET", None, b"/", None, b"b.test") is None
