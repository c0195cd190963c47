"""The proxy's own error answers: their keys and precomputed bytes.

Contract: an error key is ``(status, reason, message)``, ``message`` being the JSON
body's (Kong's wording). :class:`~data_plane.proxy.server.ProxyServer` builds one
:class:`_ErrorResponse` per key when it is constructed (its ``Server`` header is known
then); ``dispatch._Dispatch._respond_error`` writes one of its four variants with a
single ``transport.write``, so nothing is formatted per request. Immutable once built.
"""

from __future__ import annotations

import json
from typing import Final

from data_plane.proxy.headers import _CRLF

# Error answers: (status, reason, message).
E_BAD_REQUEST: Final = (400, "Bad Request", "Bad request")
E_REQUEST_TIMEOUT: Final = (408, "Request Timeout", "Request timeout")
E_NO_ROUTE: Final = (404, "Not Found", "no Route matched with those values")
E_HTTPS_ONLY: Final = (426, "Upgrade Required", "Please use HTTPS protocol")
#: Kong's answers to an HTTP/1.1 request on a gRPC route: a gRPC one (content-type
#: ``application/grpc...``) is told to use HTTP/2, any other is not gRPC at all.
E_GRPC_NEEDS_HTTP2: Final = (426, "Upgrade Required", "Please use HTTP2 protocol")
E_NOT_GRPC: Final = (415, "Unsupported Media Type", "Non-gRPC request matched gRPC route")
E_HEADERS_TOO_LARGE: Final = (431, "Request Header Fields Too Large", "Request header fields too large")
E_INTERNAL: Final = (500, "Internal Server Error", "An unexpected error occurred")
E_NOT_IMPLEMENTED: Final = (501, "Not Implemented", "Transfer-Encoding not implemented")
E_BAD_GATEWAY: Final = (502, "Bad Gateway", "An invalid response was received from the upstream server")
E_NO_PEER: Final = (503, "Service Unavailable", "failure to get a peer from the ring-balancer")
E_NO_CONFIG: Final = (503, "Service Unavailable", "no configuration loaded yet")
E_NO_SERVICE: Final = (503, "Service Unavailable", "no Service found with those values")
E_TIMEOUT: Final = (504, "Gateway Timeout", "The upstream server is timing out")
#: Ferry's (Kong has no overload caps): a try refused by an upstream's
#: ``max_requests``/``max_pending_requests``/``max_connections`` (data_plane/overload.py);
#: nothing was sent to a target. ``X-Ferry-Overloaded`` plays Envoy's ``x-envoy-overloaded``.
E_OVERLOADED: Final = (503, "Service Unavailable", "upstream overloaded")
_ErrorKey = tuple[int, str, str]

#: Redirects to ``https://`` (a route's ``https_redirect_status_code``): no body; the
#: ``Location`` is the request's, so these are formatted per request (:func:`redirect_answer`).
REDIRECTS: Final = {
    301: (301, "Moved Permanently", ""),
    302: (302, "Found", ""),
    307: (307, "Temporary Redirect", ""),
    308: (308, "Permanent Redirect", ""),
}

#: Headers an error answer carries beyond the usual ones (Kong's 426 names the upgrade).
_EXTRA_HEADERS: Final = {
    E_HTTPS_ONLY: b"Upgrade: TLS/1.2, HTTP/1.1\r\n",
    E_GRPC_NEEDS_HTTP2: b"Upgrade: HTTP/2\r\n",
    E_OVERLOADED: b"X-Ferry-Overloaded: true\r\n",
}


def redirect_answer(key: _ErrorKey, location: bytes, server_header: bytes, close: bool) -> bytes:
    """The whole answer of a redirect (head only: it has no body)."""
    status, reason, _ = key
    return (
        f"HTTP/1.1 {status} {reason}\r\n".encode()
        + b"Location: " + location + b"\r\nContent-Length: 0\r\n"
        + server_header
        + (b"Connection: close\r\n\r\n" if close else _CRLF)
    )

_ALL_ERRORS: Final = (
    E_BAD_REQUEST,
    E_REQUEST_TIMEOUT,
    E_NOT_IMPLEMENTED,
    E_NO_ROUTE,
    E_HTTPS_ONLY,
    E_GRPC_NEEDS_HTTP2,
    E_NOT_GRPC,
    E_HEADERS_TOO_LARGE,
    E_INTERNAL,
    E_BAD_GATEWAY,
    E_NO_PEER,
    E_NO_CONFIG,
    E_NO_SERVICE,
    E_TIMEOUT,
    E_OVERLOADED,
)


class _ErrorResponse:
    """Precomputed bytes of one JSON error answer in its four variants."""

    __slots__ = ("keep", "close", "head_keep", "head_close")

    def __init__(self, key: _ErrorKey, server_header: bytes) -> None:
        status, reason, message = key
        body = json.dumps({"message": message}).encode()
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            "Content-Type: application/json; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\n"
        ).encode() + server_header + _EXTRA_HEADERS.get(key, b"")
        self.head_keep = head + _CRLF
        self.head_close = head + b"Connection: close\r\n\r\n"
        self.keep = self.head_keep + body
        self.close = self.head_close + body
