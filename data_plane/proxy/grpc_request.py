"""The request head a gRPC call sends its target (:mod:`data_plane.proxy.grpc_proxy`).

Contract (pure functions, no I/O): :func:`upstream_authority` is the ``:authority``
(the HTTP path's Host rules); :func:`target_headers` the whole header list:
``:method`` and ``:path`` as the client sent them (nginx's ``grpc_pass``, which Kong
runs, rewrites no URI: neither ``strip_path`` nor the service's ``path`` applies), the
service's ``:scheme``, ``te: trailers``, the client's other fields minus hop-by-hop ones
and those the proxy sets itself (``grpc-timeout``: the time left, ``X-Forwarded-*``,
``X-Real-IP`` as for HTTP).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from data_plane import grpc_status
from data_plane.balancers import Address
from data_plane.proxy.http2_stream import HOP_BY_HOP
from data_plane.runtime import CompiledService

Header = tuple[bytes, bytes]

#: Request headers the proxy sets itself, never copied from the client.
_REPLACED: Final = frozenset({
    b"host", b"grpc-timeout", b"x-forwarded-proto", b"x-forwarded-host",
    b"x-forwarded-port", b"x-real-ip", b"x-forwarded-for",
})


def upstream_authority(
    preserve_host: bool, authority: bytes | None, service: CompiledService, address: Address
) -> bytes:
    """``:authority`` for the target, as the HTTP path's Host: the client's
    (``preserve_host``), the upstream's ``host_header``, else the target's name with its
    port unless it is the scheme's default."""
    if preserve_host and authority is not None:
        return authority
    if service.host_header is not None:
        return service.host_header
    if address.port == service.default_port:
        return address.host_bytes
    return address.key_bytes


def target_headers(
    client_headers: list[Header],
    authority: bytes | None,
    service: CompiledService,
    host: bytes,
    time_left: float | None,
    transport_info: Callable[[str], object],
) -> list[Header]:
    """The header list sent to the target (see the module docstring). ``time_left``:
    seconds of the client's deadline left (``None``: it set none); ``transport_info``:
    the client connection's ``get_extra_info``."""
    ssl_on = transport_info("ssl_object") is not None
    peer = transport_info("peername")
    sock = transport_info("sockname")
    peer_ip = str(peer[0]).encode() if isinstance(peer, tuple) else b""
    local_port = str(sock[1]).encode() if isinstance(sock, tuple) and len(sock) > 1 else b""
    fields: list[Header] = [
        (b":method", next((v for n, v in client_headers if n == b":method"), b"POST")),
        (b":scheme", b"https" if service.upstream_tls is not None else b"http"),
        (b":path", next((v for n, v in client_headers if n == b":path"), b"/")),
        (b":authority", host),
    ]
    xff: list[bytes] = []
    for name, value in client_headers:
        if name[:1] == b":" or name in HOP_BY_HOP or name in _REPLACED:
            if name == b"x-forwarded-for":
                xff.append(value)
            continue
        fields.append((name, value))
    fields.append((b"te", b"trailers"))
    if time_left is not None:
        fields.append((b"grpc-timeout", grpc_status.format_timeout(time_left)))
    if authority is not None:
        colon = authority.rfind(b":")
        fields.append((b"x-forwarded-host", authority[:colon] if colon > authority.rfind(b"]") else authority))
    fields += [
        (b"x-forwarded-proto", b"https" if ssl_on else b"http"),
        (b"x-forwarded-port", local_port),
        (b"x-real-ip", peer_ip),
        (b"x-forwarded-for", b", ".join([*xff, peer_ip])),
    ]
    return fields
