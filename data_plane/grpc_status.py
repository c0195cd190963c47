"""gRPC's status vocabulary at the proxy's edge: the proxy's own errors as gRPC statuses
(Kong's mapping), an HTTP answer of a non-gRPC target as a gRPC status (the gRPC spec's),
``grpc-message`` encoding, and ``grpc-timeout`` deadlines.

Pure functions, no I/O; the HTTP/2 proxy path uses them for requests whose route speaks
``grpc``/``grpcs``. Facts: Kong's ``kong/pdk/response.lua`` (``HTTP_TO_GRPC_STATUS``,
``GRPC_MESSAGES``) and the gRPC "PROTOCOL-HTTP2" and "http-grpc-status-mapping" documents.
"""

from __future__ import annotations

from typing import Final

# gRPC status codes (grpc/status.h).
OK: Final = 0
CANCELLED: Final = 1
UNKNOWN: Final = 2
INVALID_ARGUMENT: Final = 3
DEADLINE_EXCEEDED: Final = 4
NOT_FOUND: Final = 5
ALREADY_EXISTS: Final = 6
PERMISSION_DENIED: Final = 7
RESOURCE_EXHAUSTED: Final = 8
FAILED_PRECONDITION: Final = 9
ABORTED: Final = 10
OUT_OF_RANGE: Final = 11
UNIMPLEMENTED: Final = 12
INTERNAL: Final = 13
UNAVAILABLE: Final = 14
DATA_LOSS: Final = 15
UNAUTHENTICATED: Final = 16

#: Kong's ``HTTP_TO_GRPC_STATUS``: the gRPC status of an answer the proxy makes itself with
#: this HTTP status (no route 404 → NOT_FOUND, no healthy target 503 → UNAVAILABLE, a
#: timeout 504 → DEADLINE_EXCEEDED, ...); any other status is UNKNOWN.
PROXY_ERROR_STATUS: Final[dict[int, int]] = {
    200: OK,
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: NOT_FOUND,
    409: ALREADY_EXISTS,
    429: RESOURCE_EXHAUSTED,
    499: CANCELLED,
    500: INTERNAL,
    501: UNIMPLEMENTED,
    503: UNAVAILABLE,
    504: DEADLINE_EXCEEDED,
}

#: Kong's ``GRPC_MESSAGES``: the ``grpc-message`` of a status when the proxy has no text.
STATUS_NAMES: Final[dict[int, str]] = {
    OK: "OK",
    CANCELLED: "Canceled",
    UNKNOWN: "Unknown",
    INVALID_ARGUMENT: "InvalidArgument",
    DEADLINE_EXCEEDED: "DeadlineExceeded",
    NOT_FOUND: "NotFound",
    ALREADY_EXISTS: "AlreadyExists",
    PERMISSION_DENIED: "PermissionDenied",
    RESOURCE_EXHAUSTED: "ResourceExhausted",
    FAILED_PRECONDITION: "FailedPrecondition",
    ABORTED: "Aborted",
    OUT_OF_RANGE: "OutOfRange",
    UNIMPLEMENTED: "Unimplemented",
    INTERNAL: "Internal",
    UNAVAILABLE: "Unavailable",
    DATA_LOSS: "DataLoss",
    UNAUTHENTICATED: "Unauthenticated",
}

#: The gRPC spec's "HTTP to gRPC Status Code Mapping": a target that answered a gRPC
#: request with an HTTP status and no ``grpc-status``.
_TARGET_HTTP_STATUS: Final[dict[int, int]] = {
    400: INTERNAL,
    401: UNAUTHENTICATED,
    403: PERMISSION_DENIED,
    404: UNIMPLEMENTED,
    429: UNAVAILABLE,
    502: UNAVAILABLE,
    503: UNAVAILABLE,
    504: UNAVAILABLE,
}


def status_for_proxy_error(http_status: int) -> int:
    """The gRPC status of an answer the proxy makes with ``http_status`` (Kong's table)."""
    return PROXY_ERROR_STATUS.get(http_status, UNKNOWN)


def status_for_target_http(http_status: int) -> int:
    """The gRPC status of a target's HTTP answer without ``grpc-status`` (the gRPC spec's)."""
    return _TARGET_HTTP_STATUS.get(http_status, UNKNOWN)


def encode_message(text: str) -> bytes:
    """``grpc-message``'s percent-encoding: UTF-8, every byte outside ``0x20``–``0x7E`` and
    ``%`` itself as ``%XX`` (upper-case hex), so it is always a valid header value."""
    out = bytearray()
    for byte in text.encode("utf-8"):
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


def decode_message(value: bytes) -> str:
    """The inverse of :func:`encode_message`; a malformed escape is kept as it is."""
    out = bytearray()
    i = 0
    while i < len(value):
        byte = value[i]
        if byte == 0x25 and _is_hex(value[i + 1:i + 3]):
            out.append(int(value[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def error_headers(http_status: int, message: str | None = None) -> list[tuple[bytes, bytes]]:
    """A "trailers-only" gRPC answer for a proxy error: ``:status 200`` (gRPC clients read
    ``grpc-status`` only on a 200; Kong keeps the HTTP status, which clients turn into
    UNIMPLEMENTED or UNKNOWN instead), ``content-type: application/grpc``, the mapped
    ``grpc-status`` and ``grpc-message`` (``message``, else the status's name)."""
    status = status_for_proxy_error(http_status)
    text = message if message else STATUS_NAMES[status]
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", str(status).encode()),
        (b"grpc-message", encode_message(text)),
    ]


#: ``grpc-timeout`` units → seconds.
_TIMEOUT_UNITS: Final[dict[int, float]] = {
    ord("H"): 3600.0,
    ord("M"): 60.0,
    ord("S"): 1.0,
    ord("m"): 1e-3,
    ord("u"): 1e-6,
    ord("n"): 1e-9,
}


def parse_timeout(value: bytes) -> float | None:
    """A ``grpc-timeout`` header (1 to 8 ASCII digits and a unit ``H M S m u n``) in
    seconds; ``None`` when it is malformed (the request then has no deadline of its own,
    and the route's timeouts apply)."""
    if not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], value[-1]
    scale = _TIMEOUT_UNITS.get(unit)
    if scale is None or not digits.isdigit() or not digits.isascii():
        return None
    return int(digits) * scale


def format_timeout(seconds: float) -> bytes:
    """``seconds`` as a ``grpc-timeout`` value, in the finest unit that fits 8 digits,
    rounded down (a forwarded deadline never outlasts the caller's); below 0 is ``0n``."""
    seconds = max(seconds, 0.0)
    for unit, scale in ((b"n", 1e-9), (b"u", 1e-6), (b"m", 1e-3), (b"S", 1.0), (b"M", 60.0), (b"H", 3600.0)):
        amount = int(seconds / scale)
        if amount < 100_000_000:
            return b"%d" % amount + unit
    return b"99999999H"
