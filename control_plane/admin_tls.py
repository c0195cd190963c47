"""The Admin API over TLS (Kong's ``admin_listen ... ssl``, port 8444 by convention).

Three things live here, all used by :mod:`control_plane.server`:

- :func:`check_admin_certificate`: the operator's ``--admin-ssl-cert`` /
  ``--admin-ssl-cert-key`` files load, parse and belong together; otherwise an
  :class:`AdminTLSError` whose message names the flag and the file (never the key's text).
- :func:`ensure_default_certificate`: without those flags, a self-signed certificate
  generated at first start and kept under ``<data-dir>/ssl/`` (as Kong keeps
  ``admin-kong-default.crt`` in its prefix), key mode 0600, reused on later starts and
  replaced only when it no longer loads or has expired.
- :func:`admin_ssl_context`: the server context: TLS 1.2 or newer, ALPN ``http/1.1``
  (aiohttp serves HTTP/1.1 only), the one certificate for every SNI;
  :func:`start_admin_site` serves the app on one listener with it.

A private key is read from its file and handed to OpenSSL; it is never logged, and no
message built here quotes it.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ferry_shared.default_certificate import (
    DEFAULT_COMMON_NAME,
    generate_self_signed,
    locked,
    write_atomically,
)

log = logging.getLogger("ferry.control_plane.admin_tls")

#: Where the default certificate lives, under ``--data-dir``.
DEFAULT_CERT_DIR = "ssl"
DEFAULT_CERT_NAME = "admin-ferry-default.crt"
DEFAULT_KEY_NAME = "admin-ferry-default.key"
#: The default certificate's name: what a client on the same host connects to.
#: Validity of a generated default certificate; an expired one is replaced at start.
DEFAULT_VALIDITY_DAYS = 3 * 365


class AdminTLSError(ValueError):
    """An Admin API certificate or key that cannot be served; the message names the file."""


@dataclass(frozen=True, slots=True)
class AdminCertificate:
    """A certificate file and its key file that load together, and what the start log says."""

    cert: Path
    key: Path
    subject: str
    not_after: datetime.datetime
    #: True for the generated self-signed certificate under ``--data-dir``.
    generated: bool = False

    def describe(self) -> str:
        origin = "generated default" if self.generated else "certificate"
        return f"{origin} {self.cert} ({self.subject}, expires {self.not_after:%Y-%m-%d})"


def check_admin_certificate(
    cert: Path, key: Path, *, cert_flag: str = "--admin-ssl-cert", key_flag: str = "--admin-ssl-cert-key"
) -> AdminCertificate:
    """Load and cross-check a PEM certificate (chain) and its unencrypted PEM key.

    Raises :class:`AdminTLSError` naming the flag and file: a missing or unreadable
    file, a file without a PEM certificate or key, an encrypted key, an expired
    certificate, or a key that is not the certificate's.
    """
    cert_pem = _read(cert, cert_flag)
    key_pem = _read(key, key_flag)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise AdminTLSError(f"{cert_flag}: failed loading certificate from {cert} (no PEM certificate)") from None
    leaf = chain[0]
    try:
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise AdminTLSError(
            f"{key_flag}: failed loading key from {key} (the key is encrypted; give an unencrypted key)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise AdminTLSError(f"{key_flag}: failed loading key from {key} (no PEM private key)") from None
    if private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise AdminTLSError(f"{key_flag}: the key in {key} does not match the certificate in {cert}")
    not_after = leaf.not_valid_after_utc
    if not_after <= datetime.datetime.now(datetime.UTC):
        raise AdminTLSError(f"{cert_flag}: the certificate in {cert} expired on {not_after:%Y-%m-%d %H:%M:%S} UTC")
    # What OpenSSL itself says last: a chain or key type cryptography accepts and it does not.
    try:
        _context(cert, key)
    except ssl.SSLError as exc:
        raise AdminTLSError(f"{cert_flag}: failed loading {cert} with its key {key}: {exc.reason or exc}") from None
    return AdminCertificate(cert, key, leaf.subject.rfc4514_string(), not_after)


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AdminTLSError(f"{flag}: no such file at {path}") from None
    except IsADirectoryError:
        raise AdminTLSError(f"{flag}: {path} is a directory, not a PEM file") from None
    except OSError as exc:
        raise AdminTLSError(f"{flag}: cannot read {path}: {exc.strerror}") from None


def _context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # TLS 1.2+ only, as Kong's default ssl_protocols minus 1.1 (and what DESIGN asks).
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


def admin_ssl_context(certificate: AdminCertificate) -> ssl.SSLContext:
    """The server context of every ``ssl`` Admin API listener: TLS 1.2+, ALPN http/1.1."""
    context = _context(certificate.cert, certificate.key)
    context.set_alpn_protocols(["http/1.1"])
    return context


async def start_admin_site(
    runner: web.AppRunner, host: str, port: int, context: ssl.SSLContext | None, backlog: int | None = None
) -> int:
    """Serve ``runner``'s app on ``host:port`` (over TLS with ``context``; listen queue
    ``backlog``, aiohttp's 128 when None); the bound port.

    Port 0 binds an ephemeral port (tests). ``ferry_shared.http_site.start_site`` does the
    same without TLS; this one exists so the shared helper keeps one shape for every plane.
    """
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context,
                       backlog=128 if backlog is None else backlog)
    await site.start()
    server = site._server  # aiohttp exposes the bound sockets only through the server
    sockets = list(getattr(server, "sockets", None) or [])
    return int(sockets[0].getsockname()[1]) if sockets else port


def ensure_default_certificate(data_dir: Path) -> AdminCertificate:
    """The default Admin API certificate under ``data_dir/ssl/``: kept, or made now.

    An existing pair that loads, matches and has not expired is reused (a client that
    pinned it keeps working across restarts). Otherwise a new EC P-256 self-signed
    certificate for ``localhost``, ``127.0.0.1`` and ``::1`` is written (key mode 0600,
    directory 0700). An exclusive lock on the directory serialises control planes that
    share a data directory, so they never write a certificate and a key of two
    different generations. Blocking: call it in a thread.
    """
    directory = data_dir / DEFAULT_CERT_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert, key = directory / DEFAULT_CERT_NAME, directory / DEFAULT_KEY_NAME
    with locked(directory / ".admin-default.lock"):
        if cert.exists() or key.exists():
            try:
                kept = check_admin_certificate(cert, key, cert_flag="default certificate",
                                               key_flag="default certificate key")
            except AdminTLSError as exc:
                log.warning("replacing the default admin certificate: %s", exc)
            else:
                return AdminCertificate(kept.cert, kept.key, kept.subject, kept.not_after, generated=True)
        cert_pem, key_pem, not_after = generate_self_signed(DEFAULT_VALIDITY_DAYS)
        write_atomically(key, key_pem, 0o600)
        write_atomically(cert, cert_pem, 0o644)
        subject = f"CN={DEFAULT_COMMON_NAME}"
        log.info("generated a self-signed default admin certificate %s (key %s, mode 0600)", cert, key)
        return AdminCertificate(cert, key, subject, not_after, generated=True)
