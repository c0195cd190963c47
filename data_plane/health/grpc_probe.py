"""Active gRPC health probes (``healthchecks.active.type`` ``grpc`` and ``grpcs``): one
``grpc.health.v1.Health/Check`` call per probe, over a fresh HTTP/2 connection.

Kong accepts ``grpc``/``grpcs`` as active types, but its checker (lua-resty-healthcheck)
knows only ``http``, ``https`` and ``tcp``: a ``grpc`` probe there is a plain HTTP/1.0
``GET http_path`` and ``grpcs`` does not even use TLS. Ferry sends the gRPC health
protocol instead (what Envoy's and NGINX Plus's gRPC checks send):

- ``grpc``: h2c with prior knowledge; ``grpcs``: TLS with ALPN ``h2``, the upstream's
  ``client_certificate`` presented and, with ``https_verify_certificate``, the target's
  certificate verified for ``https_sni`` or else the probe's host (the ``https``
  probes' rules, :mod:`data_plane.health.probe`; the context is compiled with the
  upstream, ``ActiveSettings.tls``).
- The request: ``POST /grpc.health.v1.Health/Check``, ``:authority`` = the upstream's
  ``host_header`` or the target's host, ``content-type: application/grpc``,
  ``te: trailers``, ``grpc-timeout`` = the probe's ``timeout``, the configured
  ``headers`` (lowercased; connection-specific ones, which HTTP/2 forbids, left out),
  and one message ``HealthCheckRequest{service: grpc_service_name}``.
- Like Kong's HTTP probes, the connection is not reused: a probe finds a target that
  stopped accepting connections.

How an answer counts (Kong's counters, as the HTTP probes count):

=====================================================  ============
the answer                                             counter
=====================================================  ============
``SERVING``                                            success
``NOT_SERVING``, ``UNKNOWN``, ``SERVICE_UNKNOWN``      http_failures
``grpc-status`` other than 0 (e.g. UNIMPLEMENTED: no   http_failures
health service), no ``grpc-status``, a malformed
message, an HTTP ``:status`` other than 200
no answer within ``timeout`` (connect included)        timeouts
refused or reset connection, TLS failure, no ALPN      tcp_failures
``h2``, a stream reset, a connection lost mid-call
=====================================================  ============

The target answered in the ``http_failures`` rows, as a status in
``unhealthy.http_statuses`` does; it did not in the ``tcp_failures`` ones, as a
socket or TLS error does for Kong. The ``http_statuses`` lists do not apply to gRPC
probes. The status reported with an outcome (``last status`` in a transition's reason)
is the HTTP ``:status`` (200 for any gRPC answer; 0 without one).
"""

from __future__ import annotations

import asyncio
import ssl
import struct

from grpc_health.v1 import health_pb2

from data_plane.balancers import Address
from data_plane.grpc_status import format_timeout
from data_plane.h2_connection import H2ConnectError, H2StreamError, connect
from data_plane.health.checker import ProbeOutcome
from data_plane.health.settings import ActiveSettings
from data_plane.upstream_tls import TlsEntities, UpstreamTls, server_name

__all__ = ["CHECK_PATH", "GrpcProber", "grpc_frame", "grpc_messages"]

#: The gRPC health protocol's unary method.
CHECK_PATH = "/grpc.health.v1.Health/Check"

#: Request headers HTTP/2 forbids (RFC 9113 §8.2.2) or the probe sets itself.
_NOT_SENT = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host",
     "te", "content-type", "grpc-timeout", "user-agent"}
)
_SERVING = health_pb2.HealthCheckResponse.SERVING
_PREFIX = struct.Struct(">BI")


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian
    length, the serialized message."""
    return _PREFIX.pack(0, len(message)) + message


def grpc_messages(body: bytes) -> list[bytes]:
    """Split a gRPC body into its messages; ``ValueError`` for a truncated or
    compressed one (the probe offers no compression)."""
    messages = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < _PREFIX.size:
            raise ValueError("truncated gRPC message prefix")
        compressed, length = _PREFIX.unpack_from(body, offset)
        offset += _PREFIX.size
        if compressed:
            raise ValueError("compressed gRPC message")
        if len(body) - offset < length:
            raise ValueError("truncated gRPC message")
        messages.append(body[offset : offset + length])
        offset += length
    return messages


class GrpcProber:
    """Sends the ``grpc``/``grpcs`` probes of one upstream's active checks (the
    :class:`~data_plane.health.checker.Prober` of ``HealthChecker.start``). Safe to
    use from concurrent tasks on one event loop."""

    def __init__(self, settings: ActiveSettings, *, user_agent: str) -> None:
        self._settings = settings
        self._tls: UpstreamTls | None = None
        if settings.type == "grpcs":
            tls = settings.tls
            if tls is None:  # settings not compiled with an upstream: no certificates
                tls = TlsEntities().for_probes(
                    verify=settings.https_verify_certificate,
                    client_certificate_id=None,
                    alpn=("h2",),
                )
            self._tls = tls
        self._scheme = b"https" if settings.type == "grpcs" else b"http"
        extra = [
            (name.lower().encode(), value.encode())
            for name, value in settings.headers
            if name.lower() not in _NOT_SENT
        ]
        self._headers = [
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", format_timeout(settings.timeout)),
            (b"user-agent", user_agent.encode()),
            *extra,
        ]
        request = health_pb2.HealthCheckRequest(service=settings.grpc_service_name)
        self._body = grpc_frame(request.SerializeToString())

    async def probe(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        settings = self._settings
        try:
            async with asyncio.timeout(settings.timeout):
                return await self._check(address, host)
        except TimeoutError:
            return "timeout", 0
        except (OSError, ssl.SSLError, H2ConnectError, H2StreamError):
            return "tcp_failure", 0

    async def _check(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        name = None
        if self._tls is not None:
            name = self._settings.https_sni or server_name(host)
        # The probe's own deadline (asyncio.timeout around this) bounds the connect.
        conn = await connect(
            address.host, address.port, tls=self._tls, server_name=name,
            timeout=self._settings.timeout,
        )
        try:
            stream = conn.open_stream(
                [
                    (b":method", b"POST"),
                    (b":scheme", self._scheme),
                    (b":path", CHECK_PATH.encode()),
                    (b":authority", host.encode()),
                    *self._headers,
                ]
            )
            await stream.send(self._body)
            await stream.end()
            headers = dict(await stream.response())
            body = await stream.read_all()
            trailers = dict(stream.trailers or ())
        finally:
            conn.close()
        status_text = headers.get(b":status", b"")
        status = int(status_text) if status_text.isdigit() else 0
        if status != 200:
            return "http_failure", status
        # A "trailers-only" answer (an error without a body) has grpc-status in its headers.
        grpc_status = trailers.get(b"grpc-status", headers.get(b"grpc-status"))
        if grpc_status != b"0":
            return "http_failure", status
        try:
            messages = grpc_messages(body)
            if len(messages) != 1:
                return "http_failure", status
            answer = health_pb2.HealthCheckResponse.FromString(messages[0])
        except Exception:  # a malformed message (ValueError, protobuf's DecodeError)
            return "http_failure", status
        return ("success" if answer.status == _SERVING else "http_failure"), status
