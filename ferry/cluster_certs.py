"""``ferry cert generate``: the shared cluster certificate (Kong's ``kong hybrid gen_cert``).

An EC P-384 key (Kong uses secp384r1) and a self-signed certificate whose CN and
DNS subjectAltName are :data:`~ferry_shared.cluster_tls.SHARED_SERVER_NAME`, usable
both as server and as client certificate (extended key usage serverAuth and
clientAuth) and not as a CA (so nothing can be issued under it). The key file
is created with mode 0600; existing files are never overwritten without
``force``.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ferry_shared.cluster_tls import SHARED_SERVER_NAME
from ferry_shared.default_certificate import write_atomically

#: Kong's ``gen_cert`` default validity: three years.
DEFAULT_DAYS = 3 * 365


def generate_cluster_certificate(
    days: int = DEFAULT_DAYS, common_name: str = SHARED_SERVER_NAME
) -> tuple[bytes, bytes]:
    """A new self-signed cluster certificate: ``(certificate PEM, unencrypted PKCS#8 key PEM)``."""
    if days < 1:
        raise ValueError("--days must be at least 1")
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a little clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA384())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert_pem, key_pem


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, data, mode)


def write_cluster_certificate(
    cert_path: Path, key_path: Path, *, days: int = DEFAULT_DAYS, force: bool = False
) -> None:
    """Generate a pair and write it: certificate mode 0644, key mode 0600.

    Raises :class:`FileExistsError` naming the files (and ``--force``) when
    either exists and ``force`` is false, before generating anything.
    """
    if cert_path.resolve() == key_path.resolve():
        raise ValueError("--cert and --key must be different files")
    existing = [str(p) for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        verb = "exists" if len(existing) == 1 else "exist"
        raise FileExistsError(f"{' and '.join(existing)} already {verb}; pass --force to overwrite")
    cert_pem, key_pem = generate_cluster_certificate(days)
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert_pem, 0o644)


def run_cert_command(args: argparse.Namespace) -> int:
    """``ferry cert generate``: write the pair, print what to do with it; exit code 2 on refusal."""
    if args.cert_command != "generate":
        print(f"ferry: error: unknown cert action {args.cert_command}", file=sys.stderr)
        return 2
    cert_path, key_path = Path(args.cert), Path(args.key)
    try:
        write_cluster_certificate(cert_path, key_path, days=args.days, force=args.force)
    except (OSError, ValueError) as exc:
        print(f"ferry: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {cert_path} (self-signed, CN {SHARED_SERVER_NAME}, valid {args.days} days) and "
        f"{key_path} (mode 0600).\n"
        "Copy both to every control plane and data plane, and start them with\n"
        f"  --cluster-mtls shared --cluster-cert {cert_path} --cluster-cert-key {key_path}"
    )
    return 0
