"""Admin API TLS settings and certificates, without a server: what ControlPlaneSettings
accepts and refuses, the checks on the operator's files, and the generated default."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from control_plane.admin_tls import (
    AdminTLSError,
    admin_ssl_context,
    check_admin_certificate,
    ensure_default_certificate,
)
from control_plane.server import ControlPlaneSettings
from ferry_shared.listen import ListenAddress
from tests.support.tls import Pair, make_authority, self_signed


@pytest.fixture
def pair(tmp_path: Path) -> Pair:
    return make_authority(tmp_path / "pki", "ca").issue(tmp_path / "pki", "admin.test")


def settings(**values: object) -> ControlPlaneSettings:
    return ControlPlaneSettings(cluster_insecure=True, **values)  # type: ignore[arg-type]


def refusal(**values: object) -> str:
    with pytest.raises(ValidationError) as caught:
        settings(**values)
    return str(caught.value.errors()[0]["msg"]).removeprefix("Value error, ")


def test_admin_listen_takes_kongs_list_and_keeps_a_bare_port_on_loopback() -> None:
    parsed = settings(admin_listen=":8001, 0.0.0.0:8444 ssl").admin_listeners
    assert parsed == (ListenAddress("127.0.0.1", 8001), ListenAddress("0.0.0.0", 8444, ssl=True))
    assert settings().admin_listeners == (ListenAddress("127.0.0.1", 8001),)
    kongs = settings(admin_listen="127.0.0.1:8001 reuseport backlog=16384, 127.0.0.1:8444 http2 ssl reuseport")
    assert kongs.admin_listeners == (ListenAddress("127.0.0.1", 8001, backlog=16384),
                                     ListenAddress("127.0.0.1", 8444, ssl=True, http2=True))


@pytest.mark.parametrize("value", ["127.0.0.1:8444 tls", "127.0.0.1:8001, 127.0.0.1:8001 ssl", "", "8001"])
def test_a_bad_admin_listen_is_refused(value: str) -> None:
    assert "invalid" in refusal(admin_listen=value)


def test_a_certificate_without_its_key_or_a_key_without_its_certificate_is_refused_as_kong_words_it(
    pair: Pair,
) -> None:
    assert refusal(admin_ssl_cert=pair.cert) == "--admin-ssl-cert-key must be specified"
    assert refusal(admin_ssl_cert_key=pair.key) == "--admin-ssl-cert must be specified"


def test_a_good_pair_is_accepted(pair: Pair) -> None:
    made = settings(admin_listen="127.0.0.1:8444 ssl", admin_ssl_cert=pair.cert, admin_ssl_cert_key=pair.key)
    assert made.admin_ssl_cert == pair.cert
    checked = check_admin_certificate(pair.cert, pair.key)
    assert checked.subject == "CN=admin.test" and not checked.generated


def test_a_missing_file_is_named(pair: Pair, tmp_path: Path) -> None:
    missing = tmp_path / "nope.key"
    assert refusal(admin_ssl_cert=pair.cert, admin_ssl_cert_key=missing) == (
        f"--admin-ssl-cert-key: no such file at {missing}"
    )
    assert refusal(admin_ssl_cert=tmp_path, admin_ssl_cert_key=pair.key) == (
        f"--admin-ssl-cert: {tmp_path} is a directory, not a PEM file"
    )


def test_a_key_of_another_certificate_is_refused(pair: Pair, tmp_path: Path) -> None:
    other = self_signed(tmp_path, "other", "other.test")
    assert refusal(admin_ssl_cert=pair.cert, admin_ssl_cert_key=other.key) == (
        f"--admin-ssl-cert-key: the key in {other.key} does not match the certificate in {pair.cert}"
    )


def test_files_that_are_not_pem_are_refused_without_quoting_them(pair: Pair, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("secret material that must not be echoed\n")
    cert_message = refusal(admin_ssl_cert=junk, admin_ssl_cert_key=pair.key)
    key_message = refusal(admin_ssl_cert=pair.cert, admin_ssl_cert_key=junk)
    assert cert_message.startswith(f"--admin-ssl-cert: failed loading certificate from {junk}")
    assert key_message.startswith(f"--admin-ssl-cert-key: failed loading key from {junk}")
    assert "secret" not in cert_message + key_message


def test_an_encrypted_key_is_refused_with_the_reason(pair: Pair, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(pair.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    ))
    assert "the key is encrypted" in refusal(admin_ssl_cert=pair.cert, admin_ssl_cert_key=encrypted)


def test_an_expired_certificate_is_refused(tmp_path: Path) -> None:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    old = self_signed(tmp_path, "old", "admin.test", not_before=past - datetime.timedelta(days=1), not_after=past)
    with pytest.raises(AdminTLSError, match=f"--admin-ssl-cert: the certificate in {old.cert} expired on"):
        check_admin_certificate(old.cert, old.key)


def test_the_server_context_speaks_tls_1_2_and_newer_and_http_1_1(pair: Pair) -> None:
    context = admin_ssl_context(check_admin_certificate(pair.cert, pair.key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.protocol == ssl.PROTOCOL_TLS_SERVER


def test_the_default_certificate_covers_localhost_and_loopback_and_its_key_is_private(tmp_path: Path) -> None:
    made = ensure_default_certificate(tmp_path)
    assert made.generated and made.cert.parent == tmp_path / "ssl"
    assert made.key.stat().st_mode & 0o777 == 0o600
    cert = x509.load_pem_x509_certificate(made.cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert set(names.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")
    }
    check_admin_certificate(made.cert, made.key)  # the pair loads and matches


def test_the_default_certificate_is_kept_across_starts_and_replaced_when_broken(tmp_path: Path) -> None:
    first = ensure_default_certificate(tmp_path)
    text = first.cert.read_bytes()
    assert ensure_default_certificate(tmp_path).cert.read_bytes() == text
    first.key.write_text("broken")
    again = ensure_default_certificate(tmp_path)
    assert again.cert.read_bytes() != text
    check_admin_certificate(again.cert, again.key)
    assert again.key.stat().st_mode & 0o777 == 0o600
