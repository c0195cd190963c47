"""Certificates for tests: CAs, issued certificates, odd self-signed ones (real X.509, no mocks),
and the suite's fixed upstream certificate (:data:`FIXTURES`)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferry_shared.cluster_tls import SHARED_SERVER_NAME

#: ``tests/fixtures``: ``upstream-tls.crt``/``.key``, a self-signed certificate valid for a
#: century that TLS targets serve (the proxy does not verify upstream certificates yet).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


@dataclass(frozen=True)
class Pair:
    """A certificate file and its key file."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A self-signed CA (``is_ca``) able to issue certificates; also written as a :class:`Pair`."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    pair: Pair

    def issue(
        self,
        directory: Path,
        name: str,
        dns_names: list[str] | None = None,
        *,
        ip_addresses: list[str] | None = None,
    ) -> Pair:
        """A leaf certificate for ``name`` (CN; DNS SANs default to ``[name]``, plus
        ``ip_addresses`` as IP SANs) signed by this CA."""
        return _write(
            directory, name, *_build(name, dns_names or [name], issuer=self, ips=ip_addresses)
        )

    def intermediate(self, directory: Path, name: str) -> Authority:
        """A CA named ``name`` signed by this one (for chains longer than leaf + root)."""
        cert, key = _build(name, [], issuer=self, is_ca=True)
        return Authority(cert, key, _write(directory, name, cert, key))

    def pem(self) -> str:
        """This CA's certificate as PEM text (what a ``ca_certificates`` entity holds)."""
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _build(
    common_name: str,
    dns_names: list[str],
    *,
    issuer: Authority | None = None,
    is_ca: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    ips: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or _now() - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or _now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips or ()]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if not is_ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    signer = issuer.key if issuer else key
    return builder.sign(signer, hashes.SHA256()), key


def _write(directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Pair:
    directory.mkdir(parents=True, exist_ok=True)
    pair = Pair(directory / f"{name}.crt", directory / f"{name}.key")
    pair.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pair.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    pair.key.chmod(0o600)
    return pair


def make_authority(directory: Path, name: str, dns_names: list[str] | None = None) -> Authority:
    """A CA named ``name`` (optionally also carrying DNS names, to serve as a server certificate)."""
    cert, key = _build(name, dns_names or [], is_ca=True)
    return Authority(cert, key, _write(directory, name, cert, key))


def self_signed(
    directory: Path,
    name: str,
    common_name: str = SHARED_SERVER_NAME,
    *,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> Pair:
    """A self-signed leaf (what a foreign ``ferry cert generate`` would make)."""
    cert, key = _build(common_name, [common_name], not_before=not_before, not_after=not_after)
    return _write(directory, name, cert, key)


def entity_pems(pair: Pair) -> dict[str, str]:
    """A ``certificates`` entity's ``cert`` and ``key`` (PEM text) from a written pair."""
    return {"cert": pair.cert.read_text(), "key": pair.key.read_text()}


@dataclass(frozen=True)
class PemPair:
    """A certificate and its private key as PEM text (what the Admin API takes)."""

    cert: str
    key: str


def pem_pair(
    common_name: str = "example.com",
    *,
    key_type: str = "ec",
    is_ca: bool = False,
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
) -> PemPair:
    """A self-signed certificate for ``common_name`` (DNS SAN the same) with an EC P-256
    or an RSA 2048 key (``key_type``), as PEM text; expired with a past ``not_after``."""
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if key_type == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = not_before or _now() - datetime.timedelta(minutes=5)
    end = not_after or _now() + datetime.timedelta(days=30)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(start, end - datetime.timedelta(seconds=1)))
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return PemPair(
        certificate.public_bytes(serialization.Encoding.PEM).decode(),
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode(),
    )


def expired_pem_pair(common_name: str = "expired.example.com", *, is_ca: bool = False) -> PemPair:
    """A certificate whose "Not After" was a day ago."""
    past = _now() - datetime.timedelta(days=1)
    return pem_pair(
        common_name, is_ca=is_ca, not_before=past - datetime.timedelta(days=30), not_after=past
    )
