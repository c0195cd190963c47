"""The one set of checks on PEM certificates and keys, shared by both planes.

Pure functions over PEM text (the ``cryptography`` package): the control plane
validates ``certificates`` and ``ca_certificates`` entities with them, and a data
plane loading a snapshot runs the same functions, so a configuration the control
plane accepts is one every data plane can load (and one it refuses, none can).

Contract:

* :func:`load_certificates` / :func:`load_private_key` parse, or raise
  :class:`CertificateError` whose text is the reason (never the key material).
* :func:`certificate_pair_problems` is Kong's ``certificates`` entity checks (plus
  the expiry check issue 16 asks for): a list of messages, empty when fine.
* :func:`ca_certificate_problems` is Kong's ``ca_certificates`` entity check.
* :func:`cert_digest` is Kong's ``cert_digest``: the SHA-256 of the DER encoding,
  lower-case hex.
* :func:`sni_name_problem` is Kong's ``wildcard_host`` rule for SNI names, with
  the wildcard only as a whole leftmost (``*.``) or rightmost (``.*``) label.

Nothing here logs, and no message ever quotes a private key.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from ferry_shared.target_address import HostPortError, parse_host

_CERT_TAG = "-----BEGIN CERTIFICATE-----"

#: Kong's message for an expired certificate (``ca_certificates``; Ferry uses it for
#: ``certificates`` too).
EXPIRED = 'certificate expired, "Not After" time is in the past'
KEY_MISMATCH = "certificate does not match key"
ALT_KEY_MISMATCH = "alternative certificate does not match key"
SAME_KEY_TYPE = (
    "certificate and alternative certificate need to have different type "
    "(e.g. RSA and ECDSA), the provided certificates were both of the same type"
)
ALT_PAIR_INCOMPLETE = "all or none of these fields must be set: 'cert_alt', 'key_alt'"
ONE_CA_ONLY = "please submit only one certificate at a time"
NOT_A_CA = (
    'certificate does not appear to be a CA because it is missing the "CA" basic constraint'
)


class CertificateError(ValueError):
    """PEM text that is not a usable certificate or key; ``str(self)`` says why."""


def load_certificates(pem: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, leaf first; :class:`CertificateError` if none
    or if any block does not parse."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except (ValueError, UnicodeError):
        raise CertificateError("not a PEM certificate, or one that does not parse") from None
    if not certificates:
        raise CertificateError("not a PEM certificate")
    return certificates


def load_certificate(pem: str) -> x509.Certificate:
    """The first (leaf) certificate of a PEM bundle."""
    return load_certificates(pem)[0]


def load_private_key(pem: str) -> PrivateKeyTypes:
    """A PEM private key (unencrypted); :class:`CertificateError` otherwise."""
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise CertificateError("the key is encrypted (a passphrase is not supported)") from None
    except (ValueError, UnicodeError, UnsupportedAlgorithm):
        # cryptography's text may quote parts of its input: never echo a key.
        raise CertificateError("not a PEM private key") from None


def certificate_problem(pem: str) -> str | None:
    """Kong's field message for an unparsable certificate, or None."""
    try:
        load_certificates(pem)
    except CertificateError as exc:
        return f"invalid certificate: {exc}"
    return None


def key_problem(pem: str) -> str | None:
    """Kong's field message for an unparsable private key, or None."""
    try:
        load_private_key(pem)
    except CertificateError as exc:
        return f"invalid key: {exc}"
    return None


def _public_der(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches_certificate(certificate: x509.Certificate, key: PrivateKeyTypes) -> bool:
    """True when ``key`` is the private half of ``certificate``'s public key."""
    return _public_der(certificate.public_key()) == _public_der(key.public_key())


def key_type(certificate: x509.Certificate) -> str:
    """``RSA``, ``EC``, ``Ed25519``, ``Ed448`` (or the key class's name)."""
    public = certificate.public_key()
    kinds: Sequence[tuple[type, str]] = (
        (rsa.RSAPublicKey, "RSA"),
        (ec.EllipticCurvePublicKey, "EC"),
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (x25519.X25519PublicKey, "X25519"),
        (x448.X448PublicKey, "X448"),
    )
    for cls, name in kinds:
        if isinstance(public, cls):
            return name
    return type(public).__name__


def not_after(certificate: x509.Certificate) -> datetime.datetime:
    """The end of the certificate's validity, in UTC."""
    return certificate.not_valid_after_utc


def is_expired(certificate: x509.Certificate, now: datetime.datetime | None = None) -> bool:
    """True when the certificate's "Not After" is in the past (as Kong: strictly before now)."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return certificate.not_valid_after_utc < moment


def is_ca(certificate: x509.Certificate) -> bool:
    """True when the certificate carries the basic constraint ``CA:TRUE``."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return bool(constraints.value.ca)


def cert_digest(pem: str) -> str:
    """Kong's ``cert_digest``: SHA-256 of the (first) certificate's DER, lower-case hex."""
    certificate = load_certificate(pem)
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_pair_problems(
    cert: str,
    key: str,
    cert_alt: str | None = None,
    key_alt: str | None = None,
    *,
    now: datetime.datetime | None = None,
) -> list[str]:
    """Kong's ``certificates`` entity checks, in Kong's order, plus expiry (issue 16).

    The pairs must parse (fields whose PEM does not parse are reported by
    :func:`certificate_problem` / :func:`key_problem`; here they are skipped).
    Messages: ``cert_alt`` and ``key_alt`` together or not at all; the key matches
    its certificate (also the alternative pair); the two certificates have
    different key types (one RSA, one ECDSA); no certificate is expired.
    """
    problems: list[str] = []
    if (cert_alt is None) != (key_alt is None):
        problems.append(ALT_PAIR_INCOMPLETE)
    main = _pair(cert, key)
    if main is not None and not key_matches_certificate(*main):
        problems.append(KEY_MISMATCH)
    alt = _pair(cert_alt, key_alt) if cert_alt is not None and key_alt is not None else None
    if alt is not None and not key_matches_certificate(*alt):
        problems.append(ALT_KEY_MISMATCH)
    leaf = _leaf(cert)
    alt_leaf = _leaf(cert_alt) if cert_alt is not None else None
    if leaf is not None and alt_leaf is not None and key_type(leaf) == key_type(alt_leaf):
        problems.append(SAME_KEY_TYPE)
    if leaf is not None and is_expired(leaf, now):
        problems.append(EXPIRED)
    if alt_leaf is not None and is_expired(alt_leaf, now):
        problems.append("alternative " + EXPIRED)
    return problems


def ca_certificate_problems(cert: str, *, now: datetime.datetime | None = None) -> list[str]:
    """Kong's ``ca_certificates`` check: one certificate, not expired, a CA."""
    first = cert.find(_CERT_TAG)
    if first >= 0 and cert.find(_CERT_TAG, first + len(_CERT_TAG)) >= 0:
        return [ONE_CA_ONLY]
    leaf = _leaf(cert)
    if leaf is None:
        return []
    if is_expired(leaf, now):
        return [EXPIRED]
    if not is_ca(leaf):
        return [NOT_A_CA]
    return []


def _leaf(pem: str | None) -> x509.Certificate | None:
    if pem is None:
        return None
    try:
        return load_certificate(pem)
    except CertificateError:
        return None


def _pair(cert: str | None, key: str | None) -> tuple[x509.Certificate, PrivateKeyTypes] | None:
    leaf = _leaf(cert)
    if leaf is None or key is None:
        return None
    try:
        return leaf, load_private_key(key)
    except CertificateError:
        return None


# ------------------------------------------------------------------ SNI names


def sni_name_problem(name: str) -> str | None:
    """Kong's ``wildcard_host`` rule for an SNI name; the message, or None when valid.

    At most one ``*``, as the whole leftmost label (``*.example.com``) or the whole
    rightmost one (``example.*``); the rest a host name without a port (no IP).
    """
    if name == "":
        return "length must be at least 1"
    host = name
    if "*" in name:
        position = name.find("*")
        if position not in (0, len(name) - 1):
            return "wildcard must be leftmost or rightmost character"
        if name.count("*") > 1:
            return "only one wildcard must be specified"
        if not (name.startswith("*.") or name.endswith(".*")):
            # Kong's own validator lets "*example.com" through, but neither Kong's nor
            # Ferry's certificate lookup ever matches it: refused (docs/tls.md).
            return "invalid wildcard: must be placed at leftmost or rightmost label"
        host = name.replace("*", "wildcard")
    try:
        parsed = parse_host(host)
    except HostPortError as exc:
        if str(exc) == "invalid port number":
            return "must not have a port"
        return f"invalid value: {name}"
    if parsed.kind != "name":
        return "must not be an IP"
    if parsed.port is not None:
        return "must not have a port"
    if host.endswith("."):
        return f"invalid value: {name}"
    return None


def is_wildcard(name: str) -> bool:
    """True for a wildcard SNI name (``*.example.com`` or ``example.*``)."""
    return name.startswith("*.") or name.endswith(".*")
