"""TLS from the data plane to targets: the client ``SSLContext`` of a service (and of an
upstream's ``https`` probes), built from Kong's fields and the config's certificate
entities.

What Kong's fields mean here (Kong 3.x ``kong/runloop/upstream_ssl.lua``):

- ``tls_verify`` (services; ``null`` = off, nginx's ``proxy_ssl_verify`` default):
  verify the target's certificate chain and that it is valid for the server name
  (the upstream Host without port, Kong's ``proxy_ssl_name $upstream_host``; an IP
  literal is checked against the certificate's IP addresses and sends no SNI).
- ``ca_certificates`` (ids of ``ca_certificates`` entities): the only trust anchors of
  that verification; an empty list means the system trust store.
- ``tls_verify_depth`` (0..64, ``null`` = no bound of Ferry's own): OpenSSL's depth, so
  a verified chain of at most ``depth + 2`` certificates (leaf, ``depth``
  intermediates, trust anchor). Python's ``ssl`` has no depth setter: the proxy checks
  the verified chain after the handshake (:func:`chain_error`).
- ``client_certificate`` of the service, else of its upstream: presented to the target
  (its ``cert`` and ``key``; Kong ignores ``cert_alt``/``key_alt`` there too).

Probes (``healthchecks.active.type: https``) present the upstream's
``client_certificate`` and, with ``https_verify_certificate``, trust every CA
certificate of the config and the system store (Kong's probes trust the node-wide
``lua_ssl_trusted_certificate``; the config's CA certificates are Ferry's equivalent,
as an upstream carries no CA list of its own).

Contexts are cached by the material they are made of (:class:`UpstreamTls` objects in a
weak dictionary keyed by a digest of that material): two services with the same
settings share one context, and a config version that leaves a service's material
alone hands it the very same object (same pool prefix, so its pooled connections stay
usable). The cache holds nothing a live config does not use.

Private keys never touch the disk: ``SSLContext.load_cert_chain`` takes file paths
only, so the PEMs are written to anonymous memory files (``os.memfd_create``, Linux)
read through ``/proc/self/fd/N`` and closed right after loading. Error messages name
entity ids and OpenSSL's reason, never PEM text.

The control plane validates certificates when they are written
(``ferry_shared/certificates.py``); this module only loads what the snapshot carries
with OpenSSL and turns a failure into :class:`TlsMaterialError` (the compile's
``ConfigError``), so a certificate the control plane let through but OpenSSL cannot
load is still refused with the config.

Single event-loop thread; building a context does blocking CPU work (PEM parsing,
the system store) once per distinct material, at config compile time.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from data_plane.balancers import Address
from data_plane.pem_loading import PemLoadError, load_pem_pair

__all__ = [
    "MAX_VERIFY_DEPTH",
    "TlsEntities",
    "TlsMaterialError",
    "UpstreamTls",
    "chain_error",
    "failure_reason",
    "log_tls_failure",
    "open_tls",
    "server_name",
]

log = logging.getLogger(__name__)

#: Kong's bound of ``tls_verify_depth`` (``between = { 0, 64 }``).
MAX_VERIFY_DEPTH = 64
#: At most one log line per (service, target, reason) per this many seconds.
FAILURE_LOG_INTERVAL = 10.0


class TlsMaterialError(ValueError):
    """A certificate or CA certificate a config names is missing or cannot be loaded."""


@dataclass(frozen=True, eq=False)
class UpstreamTls:
    """One client TLS identity: the context and what the proxy checks beside it.

    Compared by identity (one object per distinct material, see the module
    docstring). ``pool_prefix`` starts the pool key of every connection made with
    it, so connections of different identities (trust, depth, client certificate)
    are never handed to one another; the proxy appends the server name and address.
    ``max_chain``: the most certificates a verified chain may hold (0: no bound).
    """

    context: ssl.SSLContext
    verify: bool
    max_chain: int
    pool_prefix: str
    client_certificate_id: str | None


_CACHE: weakref.WeakValueDictionary[str, UpstreamTls] = weakref.WeakValueDictionary()


def _pem(entity: Mapping[str, Any], key: str) -> str | None:
    value = entity.get(key)
    return value if isinstance(value, str) and value.strip() else None


class TlsEntities:
    """The ``certificates`` and ``ca_certificates`` of one config, by id, and the
    contexts made of them (built on demand, cached across configs)."""

    def __init__(
        self,
        certificates: Iterable[Mapping[str, Any]] = (),
        ca_certificates: Iterable[Mapping[str, Any]] = (),
    ) -> None:
        self._certificates = {str(c.get("id")): c for c in certificates}
        self._ca_certificates = {str(c.get("id")): c for c in ca_certificates}

    @classmethod
    def of(cls, entities: Mapping[str, Any]) -> TlsEntities:
        """From a config by kind: each kind a list of entities, or a mapping id -> entity."""

        def listed(kind: str) -> Iterable[Mapping[str, Any]]:
            items = entities.get(kind) or ()
            return items.values() if isinstance(items, Mapping) else items

        return cls(listed("certificates"), listed("ca_certificates"))

    # ---------------------------------------------------------------- contexts

    def for_service_entity(
        self,
        service: Mapping[str, Any],
        upstream_client_certificate_id: str | None,
        *,
        alpn: tuple[str, ...] = (),
    ) -> UpstreamTls:
        """The TLS identity of an ``https`` service entity: its ``tls_verify``,
        ``tls_verify_depth``, ``ca_certificates`` and ``client_certificate``, else
        ``upstream_client_certificate_id`` (its upstream's). Raises
        :class:`TlsMaterialError` for a malformed field as for missing material."""
        verify = service.get("tls_verify")
        if verify is not None and not isinstance(verify, bool):
            raise TlsMaterialError("'tls_verify' must be a boolean")
        depth = service.get("tls_verify_depth")
        if depth is not None and (
            isinstance(depth, bool) or not isinstance(depth, int)
            or not 0 <= depth <= MAX_VERIFY_DEPTH
        ):
            raise TlsMaterialError(
                f"'tls_verify_depth' must be an integer between 0 and {MAX_VERIFY_DEPTH}"
            )
        ca_ids = service.get("ca_certificates") or []
        if not isinstance(ca_ids, list) or not all(isinstance(i, str) and i for i in ca_ids):
            raise TlsMaterialError("'ca_certificates' must be a list of ids")
        ref = service.get("client_certificate")
        if ref is not None and not (isinstance(ref, Mapping) and isinstance(ref.get("id"), str)):
            raise TlsMaterialError("'client_certificate' must be null or an object with an 'id'")
        return self.for_service(
            verify=bool(verify),
            depth=depth,
            ca_ids=ca_ids,
            client_certificate_id=ref["id"] if ref is not None else upstream_client_certificate_id,
            alpn=alpn,
        )

    def for_service(
        self,
        *,
        verify: bool,
        depth: int | None,
        ca_ids: Sequence[str],
        client_certificate_id: str | None,
        alpn: tuple[str, ...] = (),
    ) -> UpstreamTls:
        """The TLS identity of a service (see the module docstring for the rules).
        ``alpn``: the protocols offered (``("h2",)`` for HTTP/2 to targets; none for
        HTTP/1.1), part of the identity, so contexts of either kind are never shared."""
        cas = tuple(sorted({self._ca_pem(i) for i in ca_ids})) if verify else ()
        system = verify and not cas
        max_chain = depth + 2 if verify and depth is not None else 0
        return self._context(
            "service", verify, max_chain, cas, system, client_certificate_id, alpn
        )

    def for_probes(
        self, *, verify: bool, client_certificate_id: str | None, alpn: tuple[str, ...] = ()
    ) -> UpstreamTls:
        """The TLS identity of an upstream's ``https`` (``grpcs``: ``alpn`` ``("h2",)``)
        probes."""
        cas = (
            tuple(sorted({self._ca_pem(i) for i in self._ca_certificates})) if verify else ()
        )
        return self._context("probe", verify, 0, cas, verify, client_certificate_id, alpn)

    def _ca_pem(self, ca_id: str) -> str:
        entity = self._ca_certificates.get(ca_id)
        if entity is None:
            raise TlsMaterialError(f"ca_certificate {ca_id} does not exist")
        pem = _pem(entity, "cert")
        if pem is None:
            raise TlsMaterialError(f"ca_certificate {ca_id} has no 'cert'")
        return pem.strip()

    def _client_pems(self, certificate_id: str) -> tuple[str, str]:
        entity = self._certificates.get(certificate_id)
        if entity is None:
            raise TlsMaterialError(f"certificate {certificate_id} does not exist")
        cert, key = _pem(entity, "cert"), _pem(entity, "key")
        if cert is None or key is None:
            raise TlsMaterialError(f"certificate {certificate_id} needs both 'cert' and 'key'")
        return cert, key

    def _context(
        self,
        kind: str,
        verify: bool,
        max_chain: int,
        cas: tuple[str, ...],
        system: bool,
        client_certificate_id: str | None,
        alpn: tuple[str, ...] = (),
    ) -> UpstreamTls:
        client = self._client_pems(client_certificate_id) if client_certificate_id else None
        digest = hashlib.sha256()
        parts = (kind, str(verify), str(max_chain), str(system), *cas, "--", *(client or ()))
        if alpn:  # (HTTP/1.1 identities keep the digest they always had)
            parts = (*parts, "--alpn", *alpn)
        for part in parts:
            digest.update(part.encode())
            digest.update(b"\0")
        material = digest.hexdigest()
        cached = _CACHE.get(material)
        if cached is not None:
            return cached
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if verify:
            if cas:
                try:
                    context.load_verify_locations(cadata="\n".join(cas) + "\n")
                except (ssl.SSLError, ValueError) as exc:
                    raise TlsMaterialError(
                        f"a ca_certificate cannot be loaded: {_reason(exc)}"
                    ) from None
            if system:
                context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        else:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if alpn:
            context.set_alpn_protocols(list(alpn))
        if client is not None:
            assert client_certificate_id is not None
            _load_client_certificate(context, client_certificate_id, *client)
        made = UpstreamTls(
            context=context,
            verify=verify,
            max_chain=max_chain,
            pool_prefix=f"tls/{material[:16]}/",
            client_certificate_id=client_certificate_id,
        )
        _CACHE[material] = made
        return made


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc) or type(exc).__name__


def _load_client_certificate(
    context: ssl.SSLContext, certificate_id: str, cert: str, key: str
) -> None:
    """The client certificate's PEM into ``context`` (never through the disk)."""
    try:
        load_pem_pair(context, cert, key)
    except PemLoadError as exc:
        raise TlsMaterialError(f"certificate {certificate_id} cannot be loaded: {exc}") from None


# --------------------------------------------------------------- connect path


def server_name(text: str) -> str:
    """The TLS server name for an upstream Host header value: the host without port
    and without IPv6 brackets. Python sends no SNI for an IP literal and checks it
    against the certificate's IP addresses instead."""
    if text.startswith("["):
        return text[1 : text.find("]")] if "]" in text else text[1:]
    colon = text.rfind(":")
    return text[:colon] if colon >= 0 else text


def chain_error(transport: Any, tls: UpstreamTls) -> str | None:
    """Why the verified chain of a fresh connection is refused (``None``: it is not).

    Only a bound ``tls_verify_depth`` is checked here; OpenSSL checked the rest."""
    if not tls.max_chain:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "no TLS session"
    # Python 3.13 makes it public; 3.11's SSLObject has it on the C object.
    getter = getattr(ssl_object, "get_verified_chain", None) or getattr(
        getattr(ssl_object, "_sslobj", None), "get_verified_chain", None
    )
    if getter is None:
        return None
    length = len(getter() or ())
    if length > tls.max_chain:
        return (
            f"certificate chain too long ({length} certificates, tls_verify_depth "
            f"{tls.max_chain - 2} allows {tls.max_chain})"
        )
    return None


class _Service(Protocol):
    """What the failure log names of a service (a ``CompiledService``)."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str | None: ...


async def open_tls(
    loop: asyncio.AbstractEventLoop,
    factory: Callable[[], Any],
    address: Address,
    tls: UpstreamTls,
    name: str,
    service: _Service,
) -> Any:
    """Connect to ``address`` with ``tls`` for server ``name``: the protocol
    ``factory`` made, or ``None`` when TLS failed (the handshake, or a verified chain
    longer than ``tls_verify_depth`` allows), which is logged with its reason
    (:func:`log_tls_failure`). Other errors (refused, timeout) propagate as
    ``loop.create_connection`` raises them."""
    try:
        transport, protocol = await loop.create_connection(
            factory, address.host, address.port, ssl=tls.context, server_hostname=name
        )
    except ssl.SSLError as exc:
        reason = failure_reason(exc)
    else:
        failure = chain_error(transport, tls)
        if failure is None:
            return protocol
        transport.abort()
        reason = failure
    log_tls_failure(
        f"{service.name!r} ({service.id})" if service.name else service.id,
        f"{address.key} (server name {name!r})",
        reason,
    )
    return None


def failure_reason(exc: BaseException) -> str:
    """What a TLS failure says, for the log: the verification message or OpenSSL's reason."""
    message = getattr(exc, "verify_message", None)
    if message:
        return f"certificate verify failed: {message}"
    return _reason(exc)


_last_logged: dict[tuple[str, str, str], float] = {}


def log_tls_failure(service: str, target: str, reason: str) -> None:
    """Log that TLS to ``target`` failed for ``service`` and why (no traceback); at
    most once per :data:`FAILURE_LOG_INTERVAL` per (service, target, reason)."""
    now = time.monotonic()
    key = (service, target, reason)
    last = _last_logged.get(key)
    if last is not None and now - last < FAILURE_LOG_INTERVAL:
        return
    if len(_last_logged) > 1024:
        _last_logged.clear()
    _last_logged[key] = now
    log.warning("TLS to target %s failed for service %s: %s", target, service, reason)
