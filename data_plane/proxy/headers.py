"""Header policy of the HTTP/1.1 proxy: what is hop-by-hop, what the proxy acts on.

Contract: constants and pure functions only (no state, no I/O, nothing per connection),
shared by the client side (request heads, :mod:`data_plane.proxy.client`) and the
upstream side (response heads, :mod:`data_plane.proxy.upstream`). Request fields are
classified one by one in ``_ClientConnection._read_head`` with :data:`_REQUEST_HEADERS`;
response heads are split by :func:`_response_fields`, which llhttp has validated first.
The precomputed byte strings here are what keeps the hot path free of formatting.
"""

from __future__ import annotations

import re
from typing import Final

#: Request line + headers larger than this get 431 (nginx's large_client_header_buffers
#: default allows 4 x 8 KiB; Kong's is the same).
MAX_HEADER_BYTES: Final = 32 * 1024

# Request header classes (by lower-case name).
_H_DROP: Final = 1  # hop-by-hop, or replaced by the proxy
_H_CONNECTION: Final = 2
_H_HOST: Final = 3
_H_CONTENT_LENGTH: Final = 4
_H_TRANSFER_ENCODING: Final = 5
_H_XFF: Final = 6
_H_EXPECT: Final = 7
_H_UPGRADE: Final = 8

_REQUEST_HEADERS: Final[dict[bytes, int]] = {
    b"connection": _H_CONNECTION,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_DROP,
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    # Connection-specific (RFC 9113 3.2.1): meaningless once Upgrade is dropped.
    b"http2-settings": _H_DROP,
    # Forwarded only on an upgrade request (``Connection: upgrade`` as well).
    b"upgrade": _H_UPGRADE,
    b"transfer-encoding": _H_TRANSFER_ENCODING,
    b"host": _H_HOST,
    b"content-length": _H_CONTENT_LENGTH,
    b"x-forwarded-for": _H_XFF,
    # The proxy states these itself (no trusted-proxy list yet, so client-sent values
    # are not believed -- Kong's behaviour with the default trusted_ips).
    b"x-forwarded-proto": _H_DROP,
    b"x-forwarded-host": _H_DROP,
    b"x-forwarded-port": _H_DROP,
    b"x-real-ip": _H_DROP,
    # Answered by the proxy itself (it sends "100 Continue" when it starts reading the
    # body), so upstream interim responses are not relayed.
    b"expect": _H_EXPECT,
}

_R_DROP: Final = 1
_R_CONNECTION: Final = 2
_R_CONTENT_LENGTH: Final = 3
_R_TRANSFER_ENCODING: Final = 4
_R_UPGRADE: Final = 5

_RESPONSE_HEADERS: Final[dict[bytes, int]] = {
    b"connection": _R_CONNECTION,
    b"keep-alive": _R_DROP,
    b"proxy-connection": _R_DROP,
    b"te": _R_DROP,
    b"trailer": _R_DROP,
    b"upgrade": _R_UPGRADE,
    b"transfer-encoding": _R_TRANSFER_ENCODING,
    b"content-length": _R_CONTENT_LENGTH,
}

#: ``Connection`` tokens that name no field to drop: its own options, and the framing
#: fields the proxy relays by itself (dropping Content-Length while relaying the body
#: as framed by it would leave the next hop unable to find the message's end).
_NOT_NAMEABLE: Final = frozenset({b"close", b"keep-alive", b"upgrade", b"content-length", b"transfer-encoding"})

_IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

# Bytes on the wire.
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
_CONNECTION_UPGRADE: Final = b"Connection: Upgrade\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_CRLF: Final = b"\r\n"

#: with an optional port; no whitespace, controls, path or userinfo characters.
_VALID_HOST: Final = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[^\x00-\x20\x7f/\\@?#\[\]:,\"]+)(?::[0-9]{1,5})?")


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


#: In a lower-cased head: a hop-by-hop field other than Connection and Content-Length
#: (``\r\nt`` covers TE, Trailer and Transfer-Encoding, and sends the rare other
#: field starting with "t" down the field-by-field path).
_RARE_HOP_BY_HOP: Final = re.compile(rb"\r\n(?:t|keep-alive:|proxy-connection:|upgrade:)")


class _ResponseFields:
    """What a response head says that the proxy acts on, and what it relays."""

    __slots__ = ("prefix", "content_length", "chunked", "coded", "connection", "upgrade")

    def __init__(self) -> None:
        #: ``HTTP/1.1 <status> <reason>`` and every end-to-end header line, each ending
        #: with CRLF (no blank line yet): the relayed head before the proxy's own lines.
        self.prefix = b""
        #: The Content-Length value; -1 when absent.
        self.content_length = -1
        self.chunked = False
        #: A Transfer-Encoding whose last coding is not chunked (e.g. gzip): the body
        #: ends at close (RFC 9112 6.3), and the field is relayed as it is.
        self.coded = False
        #: The ``Connection`` tokens (lower case), ``None`` without that header.
        self.connection: list[bytes] | None = None
        self.upgrade: bytes | None = None


def _response_fields(head: bytes, drop_content_length: bool) -> _ResponseFields:
    """Split a response head validated by llhttp (``status line CRLF *(field CRLF) CRLF``).

    Hop-by-hop fields (RFC 9110 7.6.1: ``Connection`` and what it names, ``Keep-Alive``,
    ``Proxy-Connection``, ``TE``, ``Trailer``, ``Upgrade``, ``Transfer-Encoding``) are
    left out of ``prefix``; so is ``Content-Length`` when ``drop_content_length`` (a
    204). The common head (at most one simple ``Connection``, one ``Content-Length``, no
    other hop-by-hop field) is handled with a few searches over the bytes; any other
    goes field by field.
    """
    low = head.lower()
    cl = low.find(b"\r\ncontent-length:")
    conn = low.find(b"\r\nconnection:")
    if (
        _RARE_HOP_BY_HOP.search(low) is None
        and not (cl >= 0 and (drop_content_length or low.find(b"\r\ncontent-length:", cl + 17) >= 0))
        and not (conn >= 0 and low.find(b"\r\nconnection:", conn + 13) >= 0)
    ):
        fields = _ResponseFields()
        if cl >= 0:
            value = head[cl + 17 : head.index(b"\r\n", cl + 2)].strip()
            if not value.isdigit():
                return _response_fields_by_line(head, drop_content_length)
            fields.content_length = int(value)
        if conn < 0:
            fields.prefix = b"HTTP/1.1" + head[8:-2]
            return fields
        eol = head.index(b"\r\n", conn + 2)
        value = low[conn + 13 : eol].strip()
        if value == b"keep-alive" or value == b"close":
            fields.connection = [value]
            fields.prefix = b"HTTP/1.1" + head[8:conn] + head[eol:-2]
            return fields
    return _response_fields_by_line(head, drop_content_length)


def _response_fields_by_line(head: bytes, drop_content_length: bool) -> _ResponseFields:
    """:func:`_response_fields` for any head: one field at a time."""
    fields = _ResponseFields()
    first = head.index(b"\r\n")
    kept = [b"HTTP/1.1" + head[8 : first + 2]]
    block = head[first + 2 : -4]
    tokens: list[bytes] | None = None
    for line in block.split(b"\r\n") if block else ():
        colon = line.index(b":")
        kind = _RESPONSE_HEADERS.get(line[:colon].lower(), 0)
        if kind == 0:
            kept.append(line + _CRLF)
        elif kind == _R_CONTENT_LENGTH:
            value = line[colon + 1 :].strip()
            fields.content_length = int(value) if value.isdigit() else -1
            if not drop_content_length:
                kept.append(line + _CRLF)
        elif kind == _R_TRANSFER_ENCODING:
            codings = _tokens(line[colon + 1 :])
            if codings and codings[-1] == b"chunked":
                fields.chunked = True
            else:
                fields.coded = True
                kept.append(line + _CRLF)
        elif kind == _R_CONNECTION:
            tokens = (tokens or []) + _tokens(line[colon + 1 :])
        elif kind == _R_UPGRADE:
            fields.upgrade = line[colon + 1 :].strip()
    if tokens:
        # Fields named in Connection are hop-by-hop too.
        extra = {t for t in tokens if t not in _NOT_NAMEABLE}
        if extra:
            kept = kept[:1] + [p for p in kept[1:] if p.split(b":", 1)[0].lower() not in extra]
    fields.connection = tokens
    fields.prefix = b"".join(kept)
    return fields
