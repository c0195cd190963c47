"""TLS on the proxy's ``ssl`` listeners: one server context per certificate entity, the
certificate chosen by the client's SNI (exact name, then wildcard, as Kong), a default
certificate otherwise.

- :func:`compile_server_certificates` turns a config's ``certificates`` and ``snis``
  entities into :class:`ServerCertificates` (immutable; part of
  :class:`~data_plane.runtime.RuntimeConfig`). A certificate whose PEM text did not
  change keeps the context the previous config built, so a delta that touches no
  certificate builds none.
- :class:`TlsTermination` owns the listener context. Its SNI callback reads the
  *current* config on every handshake, so certificates change without a restart, and
  records the name the client sent on the connection's ``SSLObject`` (see
  :func:`server_name_of`) for the router's ``snis``.
- :func:`load_or_create_default_certificate`: the certificate served when no SNI
  matches, generated at first start and kept in the data directory (Kong keeps
  ``kong_default_cert`` in its prefix).

Private keys never touch the disk except the default one (mode 0600): contexts load
PEM text through an anonymous memory file (``memfd_create``), as ``ssl`` loads keys
only from paths. Nothing here logs key material.

Concurrency: one event loop per process; contexts are shared by every connection of
the process and never changed after they are built.
"""

from __future__ import annotations

import datetime
import logging
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from data_plane import pem_loading
from ferry_shared.certificates import EXPIRED, certificate_pair_problems
from ferry_shared.default_certificate import generate_self_signed, locked, write_atomically

log = logging.getLogger(__name__)

#: What the proxy offers in ALPN on its TLS listeners: ``http/1.1`` only, and ``h2``
#: first on those with Kong's ``http2`` flag (:data:`ALPN_PROTOCOLS_H2`).
ALPN_PROTOCOLS: tuple[str, ...] = ("http/1.1",)
ALPN_PROTOCOLS_H2: tuple[str, ...] = ("h2", "http/1.1")

#: Where the default certificate lives, under the data directory.
DEFAULT_CERTIFICATE_DIR = "tls"
DEFAULT_CERT_FILE = "default.crt"
DEFAULT_KEY_FILE = "default.key"
#: How long a generated default certificate is valid (Kong's is valid for years too).
DEFAULT_CERTIFICATE_DAYS = 3650

#: Attribute set on a server-side ``ssl.SSLObject`` by the SNI callback.
_SNI_ATTRIBUTE = "ferry_server_name"


class CertificateError(ValueError):
    """A certificate or key that cannot be loaded; the message names the entity, never the key."""


def load_pem_pair(context: ssl.SSLContext, cert_pem: str, key_pem: str, label: str) -> None:
    """Load a certificate chain and its key into ``context`` from PEM text (never through
    the disk). Raises :class:`CertificateError` naming ``label`` (the entity) when OpenSSL
    refuses either (unparsable, a key that does not match, an encrypted key)."""
    try:
        pem_loading.load_pem_pair(context, cert_pem, key_pem)
    except pem_loading.PemLoadError as exc:
        raise CertificateError(f"{label}: certificate or key cannot be loaded ({exc})") from None


def not_after(cert_pem: str) -> float:
    """The end of the validity of the first certificate in ``cert_pem`` (Unix seconds)."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise CertificateError(f"certificate cannot be parsed: {exc}") from None
    return cert.not_valid_after_utc.timestamp()


def new_server_context(alpn: Sequence[str] = ALPN_PROTOCOLS) -> ssl.SSLContext:
    """A server context with the listener policy: TLS 1.2+, ALPN ``alpn`` (the server's
    order wins: ``h2`` before ``http/1.1`` where offered), no compression, OpenSSL's
    default ciphers; session resumption (tickets and the session cache) stays on, as
    OpenSSL has it by default."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(list(alpn))
    return context


@dataclass(frozen=True, slots=True)
class ServerCertificate:
    """One ``certificates`` entity, loaded: its context and what the status API shows."""

    id: str
    #: The PEM text it was built from (``cert``, ``key``, ``cert_alt``, ``key_alt``), to
    #: reuse the context when a new config carries the same material.
    material: tuple[str, str, str | None, str | None]
    context: ssl.SSLContext
    #: The same certificate offering ALPN ``h2`` too, for ``http2`` listeners (the SNI
    #: callback switches a handshake to a certificate's context, and OpenSSL then asks
    #: that context's ALPN choice: so each listener kind needs its own).
    h2_context: ssl.SSLContext
    #: ``not_valid_after`` of ``cert`` (and of ``cert_alt`` when set), Unix seconds.
    expires_at: float
    alt_expires_at: float | None


@dataclass(frozen=True, slots=True)
class ServerCertificates:
    """A config's certificates and the SNI index over them (immutable)."""

    by_id: Mapping[str, ServerCertificate]
    #: Exact names (lower case) → certificate.
    exact: Mapping[str, ServerCertificate]
    #: ``*.example.com`` entries by ``example.com``; ``example.*`` by ``example``.
    left_wildcards: Mapping[str, ServerCertificate]
    right_wildcards: Mapping[str, ServerCertificate]
    #: Certificate id → its SNI names, sorted (for the status API).
    names: Mapping[str, tuple[str, ...]]

    def for_server_name(self, name: str) -> ServerCertificate | None:
        """Kong's order: the exact name, then ``*.`` on its parent, then ``.*`` on its
        prefix (``a.b.example.com`` → ``*.b.example.com`` → ``a.b.example.*``)."""
        found = self.exact.get(name)
        if found is not None:
            return found
        dot = name.find(".")
        if dot > 0:
            found = self.left_wildcards.get(name[dot + 1:])
            if found is not None:
                return found
        dot = name.rfind(".")
        if dot > 0:
            return self.right_wildcards.get(name[:dot])
        return None


NO_SERVER_CERTIFICATES = ServerCertificates({}, {}, {}, {}, {})


def _text(entity: Mapping[str, Any], field: str, label: str, required: bool) -> str | None:
    value = entity.get(field)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise CertificateError(f"{label}: '{field}' must be a PEM string")
    return value


def _compile_certificate(
    entity: Mapping[str, Any], previous: ServerCertificates
) -> ServerCertificate:
    cert_id = entity.get("id")
    if not isinstance(cert_id, str):
        raise CertificateError("a certificate without an id")
    label = f"certificate {cert_id}"
    cert = _text(entity, "cert", label, True)
    key = _text(entity, "key", label, True)
    cert_alt = _text(entity, "cert_alt", label, False)
    key_alt = _text(entity, "key_alt", label, False)
    assert cert is not None and key is not None
    if (cert_alt is None) != (key_alt is None):
        raise CertificateError(f"{label}: 'cert_alt' and 'key_alt' go together")
    material = (cert, key, cert_alt, key_alt)
    old = previous.by_id.get(cert_id)
    if old is not None and old.material == material:
        return old
    # The control plane's checks (ferry_shared.certificates), less expiry: a certificate
    # that expired after the control plane accepted it is still served (and shown
    # expiring in /status) rather than failing every config that carries it.
    problems = [
        problem for problem in certificate_pair_problems(cert, key, cert_alt, key_alt)
        if not problem.endswith(EXPIRED)
    ]
    if problems:
        raise CertificateError(f"{label}: {'; '.join(problems)}")
    contexts = (new_server_context(ALPN_PROTOCOLS), new_server_context(ALPN_PROTOCOLS_H2))
    alt_expires_at = None
    for context in contexts:
        load_pem_pair(context, cert, key, label)
        if cert_alt is not None and key_alt is not None:
            # OpenSSL keeps one certificate per key type: an ECDSA and an RSA one side by side.
            load_pem_pair(context, cert_alt, key_alt, f"{label} (alt)")
            alt_expires_at = not_after(cert_alt)
    return ServerCertificate(cert_id, material, contexts[0], contexts[1], not_after(cert), alt_expires_at)


def compile_server_certificates(
    certificates: Sequence[Mapping[str, Any]],
    snis: Sequence[Mapping[str, Any]],
    previous: ServerCertificates | None = None,
) -> ServerCertificates:
    """Load every certificate and index the SNIs; raises :class:`CertificateError`.

    ``previous`` lends the contexts of certificates whose PEM text is unchanged.
    """
    before = previous or NO_SERVER_CERTIFICATES
    by_id = {cert.id: cert for cert in (_compile_certificate(e, before) for e in certificates)}
    exact: dict[str, ServerCertificate] = {}
    left: dict[str, ServerCertificate] = {}
    right: dict[str, ServerCertificate] = {}
    names: dict[str, list[str]] = {}
    for sni in snis:
        name = sni.get("name")
        ref = sni.get("certificate")
        cert_id = ref.get("id") if isinstance(ref, Mapping) else None
        if not isinstance(name, str) or not name:
            raise CertificateError(f"sni {sni.get('id')}: 'name' must be a string")
        owner = by_id.get(cert_id) if isinstance(cert_id, str) else None
        if owner is None:
            raise CertificateError(f"sni {name}: certificate {cert_id} does not exist")
        name = name.lower()
        if name.startswith("*."):
            index, key = left, name[2:]
        elif name.endswith(".*"):
            index, key = right, name[:-2]
        else:
            index, key = exact, name
        if key in index:
            raise CertificateError(f"sni {name}: listed twice")
        index[key] = owner
        names.setdefault(owner.id, []).append(name)
    return ServerCertificates(
        by_id, exact, left, right, {cert_id: tuple(sorted(n)) for cert_id, n in names.items()}
    )


def server_name_of(ssl_object: object) -> bytes:
    """The SNI a TLS client sent on the connection of ``ssl_object`` (lower case, ``b""``
    without one), as recorded by :class:`TlsTermination`'s callback."""
    name = getattr(ssl_object, _SNI_ATTRIBUTE, None)
    return name.encode("idna") if isinstance(name, str) and name else b""


class TlsTermination:
    """The contexts of the proxy's ``ssl`` listeners: :attr:`context` (ALPN
    ``http/1.1``) and :attr:`h2_context` (``h2`` too, for listeners with ``http2``).

    ``certificates`` returns the current config's :class:`ServerCertificates` (or
    ``None`` before the first config); it is called once per handshake. The default
    certificate (``default_pem``: cert and key PEM) answers names no SNI covers.
    """

    def __init__(
        self,
        certificates: Callable[[], ServerCertificates | None],
        default_pem: tuple[str, str],
    ) -> None:
        self._certificates = certificates
        self.context = new_server_context(ALPN_PROTOCOLS)
        self.h2_context = new_server_context(ALPN_PROTOCOLS_H2)
        for context in (self.context, self.h2_context):
            load_pem_pair(context, default_pem[0], default_pem[1], "the default certificate")
            context.sni_callback = self._on_server_name
        self.default_expires_at = not_after(default_pem[0])

    def _on_server_name(self, ssl_object: Any, server_name: str | None, listener: ssl.SSLContext) -> None:
        # Runs inside the handshake: no exception may escape (OpenSSL would abort it
        # with an internal error), and a missing config serves the default certificate.
        if not server_name:
            return None
        name = server_name.lower()
        try:
            setattr(ssl_object, _SNI_ATTRIBUTE, name)
            certificates = self._certificates()
            found = certificates.for_server_name(name) if certificates is not None else None
            if found is not None:
                # The listener's context says which ALPN list the handshake keeps.
                ssl_object.context = found.h2_context if listener is self.h2_context else found.context
        except Exception:  # noqa: BLE001 - the default certificate is the safe answer
            log.exception("choosing a certificate for SNI %r failed; serving the default one", name)
        return None


def load_or_create_default_certificate(data_dir: Path) -> tuple[str, str]:
    """The default certificate's PEM text (cert, key), from ``data_dir/tls/`` or made
    there (key mode 0600) when missing, unreadable or expired. One process per data
    directory creates it (the node; its workers read it after it started them)."""
    directory = data_dir / DEFAULT_CERTIFICATE_DIR
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_path, key_path = directory / DEFAULT_CERT_FILE, directory / DEFAULT_KEY_FILE
    with locked(directory / ".default.lock"):
        try:
            cert_pem, key_pem = cert_path.read_text(), key_path.read_text()
            if not_after(cert_pem) > datetime.datetime.now(datetime.UTC).timestamp() + 86400:
                return cert_pem, key_pem
            log.warning("the default TLS certificate in %s expires within a day: making a new one", directory)
        except (OSError, CertificateError, UnicodeDecodeError):
            pass
        cert_bytes, key_bytes, _ = generate_self_signed(DEFAULT_CERTIFICATE_DAYS)
        write_atomically(key_path, key_bytes, 0o600)
        write_atomically(cert_path, cert_bytes, 0o644)
    cert_pem, key_pem = cert_bytes.decode(), key_bytes.decode()
    log.info("made a default TLS certificate (CN=localhost) in %s", directory)
    return cert_pem, key_pem


def _expiry(expires_at: float, now: float) -> dict[str, Any]:
    return {
        "not_after": datetime.datetime.fromtimestamp(expires_at, datetime.UTC).isoformat(),
        "expires_in_seconds": round(expires_at - now),
    }


def certificate_expiry(
    certificates: ServerCertificates | None, default_expires_at: float | None, now: float
) -> list[dict[str, Any]]:
    """What ``GET /status`` shows under ``tls.certificates``: each served certificate
    (``id``, its ``snis``, ``not_after`` and ``expires_in_seconds``, and the same for
    ``cert_alt``), the default one first as ``id: "default"``. ``now`` is Unix seconds."""
    rows: list[dict[str, Any]] = []
    if default_expires_at is not None:
        rows.append({"id": "default", "snis": [], **_expiry(default_expires_at, now)})
    for cert in (certificates or NO_SERVER_CERTIFICATES).by_id.values():
        row = {"id": cert.id, "snis": list((certificates or NO_SERVER_CERTIFICATES).names.get(cert.id, ())),
               **_expiry(cert.expires_at, now)}
        if cert.alt_expires_at is not None:
            row["alt"] = _expiry(cert.alt_expires_at, now)
        rows.append(row)
    return rows


def expiry_series(
    certificates: ServerCertificates | None, default_expires_at: float | None
) -> list[tuple[str, str, float]]:
    """``(certificate id, slot, not_after)`` for Prometheus: slot ``cert`` or ``cert_alt``;
    the default certificate is id ``default``."""
    series: list[tuple[str, str, float]] = []
    if default_expires_at is not None:
        series.append(("default", "cert", default_expires_at))
    for cert in (certificates or NO_SERVER_CERTIFICATES).by_id.values():
        series.append((cert.id, "cert", cert.expires_at))
        if cert.alt_expires_at is not None:
            series.append((cert.id, "cert_alt", cert.alt_expires_at))
    return series
