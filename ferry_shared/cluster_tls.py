"""mTLS on the CP↔DP cluster link, as Kong does it (both planes use this module).

Two modes, chosen with ``--cluster-mtls``:

``shared`` (the default, Kong's ``cluster_mtls = shared``)
    Every plane presents the same self-signed cluster certificate
    (``ferry cert generate``). Each side trusts exactly that certificate: the CP
    requires a client certificate chaining to it, and additionally compares
    the SHA-256 digest of the DP's certificate with its own (a certificate
    merely *signed* by the cluster key is not the cluster certificate). The DP
    checks the CP's certificate against the same file and expects the name the
    certificate carries (``ferry_clustering`` for generated ones).

``pki`` (Kong's ``cluster_mtls = pki``)
    Each plane has its own certificate issued by ``--cluster-ca-cert``. The CP
    accepts any DP certificate that CA issued; the DP checks the CP's
    certificate against the CA and the name ``--cluster-server-name`` (default:
    the host of ``--control-plane``).

:class:`ClusterTLS` validates the files on construction (readable, parseable,
key matches certificate, within its validity period, issued by the CA in pki
mode), so a misconfigured plane refuses to start with a message naming the
flag to fix. Certificates are read once: rotating them means restarting the
plane (see docs/hybrid-mode.md).
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import logging
import re
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtensionOID, NameOID
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

log = logging.getLogger("ferry_shared.cluster_tls")

#: The name ``ferry cert generate`` puts in the shared cluster certificate (CN and
#: DNS SAN); Kong's equivalent is ``kong_clustering``.
SHARED_SERVER_NAME = "ferry_clustering"

MtlsMode = Literal["shared", "pki"]

#: Checks the peer of one RPC; returns why it is refused, or None to let it in.
PeerCheck = Callable[[grpc.aio.ServicerContext], str | None]


def certificate_digest(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER encoding (what Kong compares in shared mode)."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names gRPC matches a server name against: SAN DNS names, else the CN."""
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
    except x509.ExtensionNotFound:
        san = None
    if isinstance(san, x509.SubjectAlternativeName):
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        if names:
            return names
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from None


def _load_certificates(path: Path, flag: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, flag)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ValueError(f"{flag} {path}: not a PEM certificate (expected '-----BEGIN CERTIFICATE-----')")
    return data, certs


def _check_validity(cert: x509.Certificate, path: Path, flag: str) -> None:
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc <= now:
        raise ValueError(
            f"{flag} {path}: the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; "
            "issue a new one (`ferry cert generate --force` in shared mode)"
        )
    if cert.not_valid_before_utc > now:
        raise ValueError(
            f"{flag} {path}: the certificate is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (check this host's clock)"
        )


def _issued_by(chain: list[x509.Certificate], authorities: list[x509.Certificate]) -> bool:
    for cert in chain:
        for ca in authorities:
            if cert == ca:
                return True
            try:
                cert.verify_directly_issued_by(ca)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return True
    return False


class ClusterTLS(BaseModel):
    """The cluster link's mTLS settings; construction fails with a flag-naming message.

    ``cert``/``key`` are this plane's certificate (PEM, optionally followed by
    intermediates) and unencrypted private key; ``ca_cert`` the CA bundle (pki
    mode only); ``server_name`` the name the DP expects in the CP's certificate
    (pki mode, DP only). The PEM contents are loaded once, here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: MtlsMode = "shared"
    cert: Path | None = None
    key: Path | None = None
    ca_cert: Path | None = None
    server_name: str | None = None

    _cert_pem: bytes = PrivateAttr(b"")
    _key_pem: bytes = PrivateAttr(b"")
    _ca_pem: bytes | None = PrivateAttr(None)
    _leaf: x509.Certificate | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _load(self) -> ClusterTLS:
        if self.cert is None:
            raise ValueError("--cluster-cert is required for an mTLS cluster link "
                             "(create a shared pair with `ferry cert generate`)")
        if self.key is None:
            raise ValueError("--cluster-cert-key is required with --cluster-cert")
        cert_pem, chain = _load_certificates(self.cert, "--cluster-cert")
        leaf = chain[0]
        _check_validity(leaf, self.cert, "--cluster-cert")
        key_pem = _read(self.key, "--cluster-cert-key")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
        except TypeError:
            raise ValueError(f"--cluster-cert-key {self.key}: the key is encrypted; Ferry needs an "
                             "unencrypted key (protect it with file permissions, mode 0600)") from None
        except ValueError:
            raise ValueError(f"--cluster-cert-key {self.key}: not a PEM private key") from None
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise ValueError(f"--cluster-cert-key {self.key} is not the key of --cluster-cert {self.cert}")
        ca_pem: bytes | None = None
        if self.mode == "shared":
            if self.ca_cert is not None:
                raise ValueError("--cluster-ca-cert applies to --cluster-mtls pki only; in shared mode "
                                 "the cluster certificate is its own trust anchor")
            if self.server_name:
                raise ValueError("--cluster-server-name applies to --cluster-mtls pki only; in shared "
                                 "mode the name is the one in the shared certificate")
            if not certificate_names(leaf):
                raise ValueError(f"--cluster-cert {self.cert}: the shared certificate names no host "
                                 f"(no DNS subjectAltName, no CN); `ferry cert generate` uses "
                                 f"{SHARED_SERVER_NAME!r}")
        else:
            if self.ca_cert is None:
                raise ValueError("--cluster-mtls pki needs --cluster-ca-cert, the CA that issued the "
                                 "control plane's and the data planes' certificates")
            ca_pem, authorities = _load_certificates(self.ca_cert, "--cluster-ca-cert")
            if not _issued_by(chain, authorities):
                raise ValueError(f"--cluster-cert {self.cert} was not issued by --cluster-ca-cert "
                                 f"{self.ca_cert}")
        self._cert_pem, self._key_pem, self._ca_pem, self._leaf = cert_pem, key_pem, ca_pem, leaf
        return self

    @property
    def certificate(self) -> x509.Certificate:
        """This plane's (leaf) certificate."""
        assert self._leaf is not None
        return self._leaf

    @property
    def digest(self) -> str:
        """SHA-256 of this plane's certificate (hex)."""
        return certificate_digest(self.certificate)

    @property
    def root_pem(self) -> bytes:
        """What the peer's certificate must chain to: the shared cert itself, or the CA."""
        if self.mode == "shared":
            return self._cert_pem
        assert self._ca_pem is not None
        return self._ca_pem

    def expected_server_name(self) -> str | None:
        """The name the DP requires in the CP's certificate; None: the ``--control-plane`` host.

        Shared mode: the shared certificate's own (first) name. Pki mode:
        ``--cluster-server-name`` if given, else gRPC checks the host the DP dials.
        """
        if self.mode == "shared":
            return certificate_names(self.certificate)[0]
        return self.server_name or None

    def describe(self) -> str:
        """One line for start-up logs."""
        expiry = f"{self.certificate.not_valid_after_utc:%Y-%m-%d}"
        if self.mode == "shared":
            return f"mTLS shared, cluster certificate sha256:{self.digest[:16]}… valid until {expiry}"
        return f"mTLS pki, CA {self.ca_cert}, certificate valid until {expiry}"

    def server_credentials(self) -> grpc.ServerCredentials:
        """CP credentials: present our certificate, require a client certificate from the root."""
        return grpc.ssl_server_credentials(
            [(self._key_pem, self._cert_pem)],
            root_certificates=self.root_pem,
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """DP credentials: verify the CP against the root, present our certificate."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.root_pem,
            private_key=self._key_pem,
            certificate_chain=self._cert_pem,
        )

    def peer_check(self) -> PeerCheck | None:
        """The CP's per-RPC check beyond the handshake: the digest comparison in shared mode."""
        return shared_certificate_check(self.digest) if self.mode == "shared" else None


def cluster_tls_from_flags(
    mode: str,
    cert: str | Path | None,
    key: str | Path | None,
    ca_cert: str | Path | None,
    server_name: str | None = None,
) -> ClusterTLS | None:
    """Build the settings from CLI values; None when no certificate flag was given at all.

    ``--cluster-mtls`` alone (it has a default) does not ask for TLS: the plane
    then needs ``--cluster-insecure`` or fails with
    :func:`ferry_shared.cluster_link.require_secured_link`'s message.
    """

    def path(value: str | Path | None) -> Path | None:
        return Path(value) if value not in (None, "") else None

    if mode not in ("shared", "pki"):
        raise ValueError(f"--cluster-mtls must be shared or pki, not {mode!r}")

    if not any(path(v) for v in (cert, key, ca_cert)) and not server_name:
        return None
    return ClusterTLS(
        mode=mode,  # type: ignore[arg-type]  # pydantic validates the literal
        cert=path(cert),
        key=path(key),
        ca_cert=path(ca_cert),
        server_name=server_name or None,
    )


# --------------------------------------------------------------------------- CP side


def shared_certificate_check(expected_digest: str) -> PeerCheck:
    """A :data:`PeerCheck` admitting only peers presenting the certificate with this digest."""

    def check(context: grpc.aio.ServicerContext) -> str | None:
        pems = context.auth_context().get("x509_pem_cert") or []
        if not pems:
            return "no client certificate was presented"
        try:
            cert = x509.load_pem_x509_certificate(pems[0])
        except ValueError:
            return "the client certificate could not be parsed"
        digest = certificate_digest(cert)
        if digest != expected_digest:
            return (
                f"certificate sha256:{digest[:16]}… ({cert.subject.rfc4514_string()}) is not the "
                f"cluster certificate (sha256:{expected_digest[:16]}…); with --cluster-mtls shared "
                "every data plane must use the control plane's --cluster-cert"
            )
        return None

    return check


def _guard(inner: Callable[..., Any], check: Callable[[grpc.aio.ServicerContext], Awaitable[None]]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(inner):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await check(context)
            async for response in inner(request, context):
                yield response

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check(context)
        result = inner(request, context)
        return await result if inspect.isawaitable(result) else result

    return unary


class PeerCheckInterceptor(grpc.aio.ServerInterceptor):
    """Runs a :data:`PeerCheck` before every RPC; a refused peer gets ``UNAUTHENTICATED``.

    Wraps the handlers instead of touching the servicers, so the cluster stream
    and the health service are covered alike.
    """

    def __init__(self, check: PeerCheck) -> None:
        self._check = check

    async def _enforce(self, context: grpc.aio.ServicerContext) -> None:
        reason = self._check(context)
        if reason is not None:
            log.warning("rejected a data plane connection from %s: %s", context.peer(), reason)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, reason)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_guard(handler.stream_stream, self._enforce), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_guard(handler.stream_unary, self._enforce), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_guard(handler.unary_stream, self._enforce), **kw)
        return grpc.unary_unary_rpc_method_handler(_guard(handler.unary_unary, self._enforce), **kw)


def server_interceptors(tls: ClusterTLS | None) -> list[grpc.aio.ServerInterceptor]:
    """Interceptors for the CP's gRPC server (the shared-mode digest check, if any)."""
    check = tls.peer_check() if tls is not None else None
    return [PeerCheckInterceptor(check)] if check is not None else []


def add_cluster_port(server: grpc.aio.Server, address: str, tls: ClusterTLS | None) -> int:
    """Bind the cluster port, mTLS unless ``tls`` is None; returns the port (0 = failed)."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


# --------------------------------------------------------------------------- DP side


def open_channel(
    target: str, tls: ClusterTLS | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """The DP's channel to the CP: mTLS with the expected server name, or plaintext."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    name = tls.expected_server_name()
    if name is not None:
        options = [*options, ("grpc.ssl_target_name_override", name)]
    return grpc.aio.secure_channel(target, tls.channel_credentials(), options=options)


_OUR_CERT_HINT = {
    "shared": "with --cluster-mtls shared every plane must use the control plane's "
    "--cluster-cert/--cluster-cert-key",
    "pki": "with --cluster-mtls pki this data plane's --cluster-cert must be issued by the CA "
    "the control plane has as --cluster-ca-cert",
}
_THEIR_CERT_HINT = {
    "shared": "the control plane's certificate is not this data plane's --cluster-cert; "
    + _OUR_CERT_HINT["shared"],
    "pki": "the control plane's certificate was not issued by this data plane's "
    "--cluster-ca-cert; check --cluster-cert/--cluster-ca-cert",
}
_TLS_REASON = re.compile(r"OPENSSL_internal:([A-Z0-9_]+)(?::\s*([^:]+))?")


def _tls_reason(details: str) -> str:
    """The TLS library's reason out of gRPC's long details, e.g. ``CERTIFICATE_VERIFY_FAILED: ...``."""
    match = _TLS_REASON.search(details)
    if match is None:
        return details
    return f"{match.group(1)}: {match.group(2).strip()}" if match.group(2) else match.group(1)


def explain_link_failure(exc: BaseException | None, tls: ClusterTLS | None) -> str | None:
    """Say what is wrong when a connection failure is a security mismatch; None otherwise.

    gRPC reports a failed TLS handshake as ``UNAVAILABLE`` with the TLS library's
    reason in the details; when the CP refuses our certificate during the
    handshake the DP only sees the socket closing; the shared-mode digest check
    answers ``UNAUTHENTICATED``. The text names the flags to check.
    """
    if not isinstance(exc, grpc.aio.AioRpcError):
        return None
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = _OUR_CERT_HINT[tls.mode] if tls is not None else "configure --cluster-cert/--cluster-cert-key"
        return f"the control plane rejected this data plane's certificate: {details}; {hint}"
    if code != grpc.StatusCode.UNAVAILABLE:
        return None
    if tls is None:
        if "Socket closed" in details:
            return (
                "the control plane closed the connection at once: it most likely requires mTLS; "
                "start this data plane with --cluster-cert/--cluster-cert-key (and --cluster-mtls) "
                "like the control plane instead of --cluster-insecure"
            )
        return None
    if "WRONG_VERSION_NUMBER" in details:
        return ("TLS handshake with the control plane failed: it does not speak TLS (does it run "
                "with --cluster-insecure?)")
    if "Hostname Verification" in details or "server name" in details:
        name = tls.expected_server_name()
        wanted = repr(name) if name else "of the --control-plane host"
        return (
            f"TLS handshake with the control plane failed: its certificate does not carry the name "
            f"{wanted}; check --cluster-server-name"
        )
    if "handshake" in details.lower() or "SSL_ERROR" in details:
        return (
            f"TLS handshake with the control plane failed ({_tls_reason(details)}): "
            f"{_THEIR_CERT_HINT[tls.mode]}"
        )
    if "Socket closed" in details:
        return (
            "the control plane closed the connection during the TLS handshake: it most likely "
            f"rejected this data plane's certificate; {_OUR_CERT_HINT[tls.mode]}"
        )
    return None
