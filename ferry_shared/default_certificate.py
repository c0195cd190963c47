"""The self-signed default certificates Ferry makes for itself: the Admin API's
(``control_plane.admin_tls``) and the proxy's TLS listeners' (``data_plane.tls_termination``),
as Kong makes ``admin-kong-default`` and ``kong-default`` in its prefix.

Both are an EC P-256 key and a certificate for ``localhost`` (and ``127.0.0.1``, ``::1``),
written next to each other with the key at mode 0600. Blocking file work: call from a
thread.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: The name the default certificates are for.
DEFAULT_COMMON_NAME = "localhost"


def generate_self_signed(days: int, organization: str = "Ferry") -> tuple[bytes, bytes, datetime.datetime]:
    """A new EC P-256 self-signed server certificate for ``localhost``, ``127.0.0.1`` and
    ``::1``, valid ``days`` days from five minutes ago: ``(cert PEM, key PEM, not_after)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        x509.NameAttribute(NameOID.COMMON_NAME, DEFAULT_COMMON_NAME),
    ])
    now = datetime.datetime.now(datetime.UTC)
    not_after = (now + datetime.timedelta(days=days)).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a little clock skew
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName(DEFAULT_COMMON_NAME),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.IPAddress(ipaddress.ip_address("::1")),
            ]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem, not_after


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created 0600) for the block: processes sharing a
    data directory never write a certificate and a key of two different generations."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """``data`` into ``path`` through a temporary file created with ``mode``, fsync, rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
