"""Upstream response relay of the HTTP/1.1 proxy (``data_plane/proxy/upstream.py``), without sockets.

A real :class:`ProxyServer` is started on 127.0.0.1 port 0 (its pool, loop and error
answers need it); the client and upstream connections are its protocol objects on fake
transports, fed with ``data_received`` (``tests/support/proxy_relay.py``). So every read
boundary is chosen by the test and everything after the start is synchronous: no sleeps,
no timing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import httptools
import pytest

from data_plane import proxy
from tests.support.proxy_relay import Client, Harness, Upstream, harness

__all__ = ["harness"]  # the fixture, used by name

VIA = b"1.1 ferry-test/1"

GET = b"GET /item HTTP/1.1\r\nHost: api.test\r\n\r\n"
GET_HTTP10 = b"GET /item HTTP/1.0\r\nHost: api.test\r\n\r\n"
GET_HTTP10_KEEP_ALIVE = b"GET /item HTTP/1.0\r\nHost: api.test\r\nConnection: keep-alive\r\n\r\n"
HEAD = b"HEAD /item HTTP/1.1\r\nHost: api.test\r\n\r\n"

#: Every byte value, so that a slicing mistake shows up as a content difference.
BODY = bytes(range(256)) * 64
RESPONSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Tue, 24 Nov 2026 11:34:40 GMT\r\n"
    b"Content-Type: application/octet-stream\r\n"
    b"Content-Length: 16384\r\n"
    b"Last-Modified: Tue, 24 Nov 2026 11:33:44 GMT\r\n"
    b"Connection: keep-alive\r\n"
    b"X-Backend: b\r\n"
    b"Accept-Ranges: bytes\r\n"
    b"\r\n"
)
RESPONSE = RESPONSE_HEAD + BODY
#: The upstream's end-to-end headers of RESPONSE_HEAD, in order (lower-case names).
END_TO_END = [
    b"server",
    b"date",
    b"content-type",
    b"content-length",
    b"last-modified",
    b"x-backend",
    b"accept-ranges",
]
PROXY_HEADERS = [b"via", b"x-ferry-upstream-latency", b"x-ferry-proxy-latency"]

_LATENCY = re.compile(rb"(\r\nX-Ferry-(?:Upstream|Proxy)-Latency: )\d+")


# ---------------------------------------------------------------- response parsing


@dataclass
class Response:
    """One response as the client's parser saw it."""

    status: int = 0
    version: str = ""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    complete: bool = False

    def names(self) -> list[bytes]:
        return [name.lower() for name, _ in self.headers]

    def values(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


class _Collector:
    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_message_begin(self) -> None:
        self.responses.append(Response())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.responses[-1].headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.responses[-1].status = self.parser.get_status_code()
        self.responses[-1].version = self.parser.get_http_version()

    def on_body(self, data: bytes) -> None:
        self.responses[-1].body += data

    def on_message_complete(self) -> None:
        self.responses[-1].complete = True


def parse_responses(raw: bytes) -> list[Response]:
    """Every response in ``raw`` as a client parses it (the last may be incomplete)."""
    collector = _Collector()
    collector.parser.feed_data(raw)
    return collector.responses


def parse_one(raw: bytes) -> Response:
    responses = parse_responses(raw)
    assert len(responses) == 1, raw[:300]
    return responses[0]


def split_head(raw: bytes) -> tuple[bytes, bytes]:
    """``raw`` split after the first blank line: (head with its CRLFCRLF, the rest)."""
    end = raw.index(b"\r\n\r\n") + 4
    return raw[:end], raw[end:]


def normalized(raw: bytes) -> bytes:
    """``raw`` with the latency header values (wall-clock dependent) replaced by N."""
    return _LATENCY.sub(rb"\1N", raw)


def assert_proxy_headers(resp: Response) -> None:
    assert resp.values(b"via") == [VIA]
    for name in PROXY_HEADERS[1:]:
        (value,) = resp.values(name)
        assert value.isdigit()


def assert_bad_gateway(h: Harness, client: Client, upstream: Upstream) -> None:
    """The client got the proxy's own 502 (nothing of the upstream's) and the upstream
    connection was dropped."""
    assert client.received.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    resp = parse_one(client.received)
    assert resp.complete and b"invalid response" in resp.body
    assert upstream.transport.aborted
    assert h.idle() == 0


# -------------------------------------------------------------- Content-Length relay


async def test_content_length_response_in_one_read_is_relayed_with_proxy_headers_and_pooled(
    harness: Harness,
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    assert upstream.transport.data.startswith(b"GET /item HTTP/1.1\r\nHost: 127.0.0.1:19001\r\n")
    assert harness.idle() == 0

    upstream.feed(RESPONSE)

    head, body = split_head(client.received)
    assert body == BODY
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection:" not in head.lower()
    resp = parse_one(client.received)
    assert resp.complete and resp.status == 200 and resp.body == BODY
    assert resp.names() == END_TO_END + PROXY_HEADERS
    assert resp.values(b"content-length") == [b"16384"]
    assert_proxy_headers(resp)
    assert harness.idle() == 1
    assert not client.transport.closing


async def test_response_fed_one_byte_at_a_time_is_relayed_identically(harness: Harness) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(RESPONSE)
    one_read = client.received
    client.transport.chunks.clear()

    again = harness.request(client, GET)
    assert again is upstream  # the connection was reused
    again.feed_bytewise(RESPONSE)

    assert normalized(client.received) == normalized(one_read)
    assert harness.idle() == 1
    client.transport.chunks.clear()
    assert harness.request(client, GET) is upstream
    upstream.feed(RESPONSE)
    assert parse_one(client.received).body == BODY


async def test_head_split_at_any_offset_is_relayed_identically(harness: Harness) -> None:
    response = RESPONSE_HEAD.replace(b"16384", b"64") + BODY[:64]
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(response)
    expected = normalized(client.received)

    for split in range(1, len(RESPONSE_HEAD) + 8):  # every head offset, a few into the body
        client.transport.chunks.clear()
        assert harness.request(client, GET) is upstream, split
        upstream.feed(response[:split], response[split:])
        assert normalized(client.received) == expected, split
        assert harness.idle() == 1, split


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param(
            [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            id="same-read",
        ),
        pytest.param(
            [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            id="separate-reads",
        ),
        pytest.param(
            [
                b"HTTP/1.1 100 Cont",
                b"inue\r\n\r\nHTTP/1.1 200 OK\r\nContent-",
                b"Length: 2\r\n\r\nok",
            ],
            id="both-heads-split",
        ),
        pytest.param(
            [
                b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            ],
            id="early-hints",
        ),
    ],
)
async def test_interim_response_is_not_relayed_and_the_final_one_is(
    harness: Harness, reads: list[bytes]
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(*reads)

    assert client.received.startswith(b"HTTP/1.1 200 OK\r\n")
    resp = parse_one(client.received)
    assert resp.complete and resp.body == b"ok"
    assert resp.names() == [b"content-length", *PROXY_HEADERS]
    assert harness.idle() == 1


# ---------------------------------------------------------------- chunked / until close

CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
CHUNKS = (
    b"5\r\nhello\r\n7\r\n, world\r\n1;ext=1\r\n!\r\n10\r\n" + b"0123456789abcdef" + b"\r\n0\r\n\r\n"
)
CHUNKED_BODY = b"hello, world!0123456789abcdef"
CHUNKED = CHUNKED_HEAD + CHUNKS
CHUNKED_READS = {
    "one-read": [CHUNKED],
    "head-split": [CHUNKED[:20], CHUNKED[20:]],
    "head-then-chunks": [CHUNKED_HEAD, CHUNKS],
    "chunks-split": [CHUNKED_HEAD + CHUNKS[:3], CHUNKS[3:14], CHUNKS[14:30], CHUNKS[30:]],
    "bytewise": [CHUNKED[i : i + 1] for i in range(len(CHUNKED))],
}


@pytest.mark.parametrize("reads", CHUNKED_READS.values(), ids=CHUNKED_READS.keys())
async def test_chunked_response_is_relayed_chunked_to_http11_client(
    harness: Harness, reads: list[bytes]
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(*reads)

    resp = parse_one(client.received)
    assert resp.complete and resp.status == 200
    assert resp.body == CHUNKED_BODY
    assert resp.values(b"transfer-encoding") == [b"chunked"]
    assert resp.values(b"content-length") == []
    assert resp.values(b"content-type") == [b"text/plain"]
    assert_proxy_headers(resp)
    assert client.received.endswith(b"\r\n0\r\n\r\n")
    assert harness.idle() == 1
    assert not client.transport.closing


@pytest.mark.parametrize("reads", CHUNKED_READS.values(), ids=CHUNKED_READS.keys())
@pytest.mark.parametrize(
    "raw_request", [GET_HTTP10, GET_HTTP10_KEEP_ALIVE], ids=["close", "keep-alive"]
)
async def test_chunked_response_is_dechunked_for_http10_client_with_connection_close(
    harness: Harness, reads: list[bytes], raw_request: bytes
) -> None:
    """Even a keep-alive HTTP/1.0 client gets ``Connection: close``: only the close can
    end a body of unknown length for it."""
    client = harness.client()
    upstream = harness.request(client, raw_request)
    upstream.feed(*reads)

    head, body = split_head(client.received)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in head
    assert b"transfer-encoding" not in head.lower() and b"content-length" not in head.lower()
    assert body == CHUNKED_BODY
    assert client.transport.closing  # the close ends the body for the client
    assert harness.idle() == 1  # the upstream's chunked framing was intact: reusable


UNTIL_CLOSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param([UNTIL_CLOSE_HEAD + b"first ", b"second"], id="head-with-body"),
        pytest.param(
            [UNTIL_CLOSE_HEAD[:10], UNTIL_CLOSE_HEAD[10:], b"first ", b"second"], id="split"
        ),
    ],
)
async def test_read_until_close_response_is_rechunked_and_ends_with_upstream_close(
    harness: Harness, reads: list[bytes]
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(*reads)

    resp = parse_one(client.received)
    assert resp.values(b"transfer-encoding") == [b"chunked"]
    assert resp.body == b"first second"
    assert not resp.complete  # only the upstream's close can end this body

    upstream.close_from_peer()

    resp = parse_one(client.received)
    assert resp.complete and resp.body == b"first second"
    assert not client.transport.closing  # the client connection stays usable
    assert harness.idle() == 0


async def test_read_until_close_response_passes_raw_to_http10_client(harness: Harness) -> None:
    client = harness.client()
    upstream = harness.request(client, GET_HTTP10)
    upstream.feed(UNTIL_CLOSE_HEAD + b"first ", b"second")
    upstream.close_from_peer()

    head, body = split_head(client.received)
    assert b"\r\nConnection: close\r\n" in head and b"chunked" not in head
    assert body == b"first second"
    assert client.transport.closing


# ------------------------------------------------------------------ header rewriting


def _with_hop_by_hop(lines: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        + lines
        + b"Timing-Allow-Origin: *\r\nX-Kept: 1\r\nTrailer-Note: kept\r\nContent-Length: 2\r\n\r\nok"
    )


@pytest.mark.parametrize(
    ("lines", "reusable"),
    [
        pytest.param(b"", True, id="none"),
        pytest.param(
            b"Connection: keep-alive\r\nKeep-Alive: timeout=5, max=100\r\n", True, id="keep-alive"
        ),
        pytest.param(b"Proxy-Connection: keep-alive\r\n", True, id="proxy-connection"),
        pytest.param(b"TE: trailers\r\n", True, id="te"),
        pytest.param(b"Trailer: X-Checksum\r\n", True, id="trailer"),
        pytest.param(b"Upgrade: h2c\r\n", True, id="upgrade"),
        pytest.param(b"Connection: upgrade\r\nUpgrade: h2c\r\n", True, id="connection-upgrade"),
        pytest.param(
            b"Connection: close, X-Private\r\nX-Private: secret\r\n", False, id="connection-names"
        ),
        pytest.param(
            b"Connection: X-Private\r\nX-Private: secret\r\nConnection: keep-alive\r\n",
            True,
            id="two-connection-headers",
        ),
        pytest.param(
            b"KEEP-ALIVE: timeout=5\r\nPROXY-CONNECTION: keep-alive\r\nconnection: X-PRIVATE\r\nx-private: 1\r\n",
            True,
            id="odd-case",
        ),
        pytest.param(
            b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\n"
            b"Trailer: X-Checksum\r\nUpgrade: h2c\r\nConnection: close, X-Private\r\n"
            b"X-Private: secret\r\nConnection: X-Other\r\nX-Other: o\r\n",
            False,
            id="all",
        ),
    ],
)
async def test_hop_by_hop_response_headers_are_removed_and_end_to_end_kept(
    harness: Harness, lines: bytes, reusable: bool
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(_with_hop_by_hop(lines))

    resp = parse_one(client.received)
    assert resp.complete and resp.status == 200 and resp.body == b"ok"
    assert resp.names() == [
        b"timing-allow-origin",
        b"x-kept",
        b"trailer-note",
        b"content-length",
        *PROXY_HEADERS,
    ]
    assert resp.values(b"timing-allow-origin") == [b"*"]
    assert harness.idle() == (1 if reusable else 0)


@pytest.mark.parametrize("content_length", [b"0", b"10"])
async def test_204_is_relayed_without_content_length(
    harness: Harness, content_length: bytes
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(
        b"HTTP/1.1 204 No Content\r\nContent-Length: " + content_length + b"\r\nX-A: 1\r\n\r\n"
    )

    head, rest = split_head(client.received)
    assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert rest == b""
    resp = parse_one(client.received)
    assert resp.complete and resp.names() == [b"x-a", *PROXY_HEADERS]
    assert harness.idle() == 1


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-read", "bytewise"])
async def test_head_response_keeps_content_length_has_no_body_and_connection_is_reused(
    harness: Harness, bytewise: bool
) -> None:
    head_response = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1234\r\n\r\n"
    client = harness.client()
    upstream = harness.request(client, HEAD)
    if bytewise:
        upstream.feed_bytewise(head_response)
    else:
        upstream.feed(head_response)

    head, rest = split_head(client.received)
    assert rest == b""
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nContent-Length: 1234\r\n" in head
    assert harness.idle() == 1

    assert harness.request(client, GET) is upstream
    upstream.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    _, second = split_head(client.received)
    resp = parse_one(second)
    assert resp.complete and resp.status == 200 and resp.body == b"hello"
    assert harness.idle() == 1


@pytest.mark.parametrize(
    "status_line", [b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 \r\n", b"HTTP/1.1 200\r\n"]
)
async def test_status_line_and_bare_head_are_relayed(harness: Harness, status_line: bytes) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(status_line + b"Content-Length: 2\r\n\r\nok")

    assert client.received.startswith(status_line)
    assert parse_one(client.received).body == b"ok"


# ------------------------------------------------------------- framing errors, limits

CL_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n"
#: Complete responses (request, upstream reads); the tests append extra bytes to the last read.
COMPLETE_RESPONSES = {
    "cl-with-head": (GET, [CL_HEAD + b"hello"]),
    "cl-after-head": (GET, [CL_HEAD, b"hello"]),
    "cl-split-body": (GET, [CL_HEAD + b"he", b"ll", b"o"]),
    "chunked-one-read": (GET, [CHUNKED]),
    "chunked-split": (GET, [CHUNKED_HEAD + CHUNKS[:-5], CHUNKS[-5:]]),
    "no-content": (GET, [b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"]),
    "head-request": (HEAD, [b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"]),
}
EXTRA_BYTES = {
    "junk": b"junk",
    "partial-response": b"HTTP/1.1 200 OK\r\n",
    "whole-response": b"HTTP/1.1 204 No Content\r\n\r\n",
}


def _extra_cases() -> list[object]:
    return [
        pytest.param(
            case,
            extra,
            id=f"{case}-{extra_id}",
        )
        for case in COMPLETE_RESPONSES
        for extra_id, extra in EXTRA_BYTES.items()
    ]


@pytest.mark.parametrize(("case", "extra"), _extra_cases())
async def test_bytes_after_a_complete_response_are_not_relayed_and_connection_not_reused(
    harness: Harness, case: str, extra: bytes
) -> None:
    """The client gets exactly what it gets without the extra bytes, and the upstream
    connection (whose next response would start with them) is dropped."""
    raw_request, reads = COMPLETE_RESPONSES[case]
    client = harness.client()
    upstream = harness.request(client, raw_request)
    upstream.feed(*reads)
    clean = normalized(client.received)
    assert harness.idle() == 1
    client.transport.chunks.clear()

    assert harness.request(client, raw_request) is upstream
    upstream.feed(*reads[:-1], reads[-1] + extra)

    assert normalized(client.received) == clean
    assert harness.idle() == 0
    assert not client.transport.closing


def _oversized_response() -> bytes:
    """A response whose head is about 41 KiB (over :data:`proxy.MAX_HEADER_BYTES`)."""
    fields = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 80) for i in range(450))
    response = b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 2\r\n\r\nok"
    assert len(response) > proxy.MAX_HEADER_BYTES + 8 * 1024
    return response


@pytest.mark.parametrize("read_size", [0, 20000, 16384, 4096, 1024], ids=lambda n: f"reads-{n}")
async def test_oversized_response_head_is_502(harness: Harness, read_size: int) -> None:
    """Whatever the reads (0: all in one), nothing of a head over the limit is relayed."""
    response = _oversized_response()
    step = read_size or len(response)
    client = harness.client()
    upstream = harness.request(client, GET)
    for i in range(0, len(response), step):
        upstream.feed(response[i : i + step])
        if upstream.transport.closing:
            break
    assert_bad_gateway(harness, client, upstream)
    assert not client.transport.closing


async def test_response_head_that_never_ends_is_cut_off_at_the_limit(harness: Harness) -> None:
    """Held head bytes are bounded: 502 once over the limit, without waiting for its end."""
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(b"HTTP/1.1 200 OK\r\n")
    line = b"X-Filler: " + b"v" * 1000 + b"\r\n"
    fed = 0
    while not upstream.transport.closing:
        assert fed <= proxy.MAX_HEADER_BYTES + len(line), "head bytes held beyond the limit"
        upstream.feed(line)
        fed += len(line)
    assert_bad_gateway(harness, client, upstream)


async def test_response_head_just_under_the_limit_is_relayed(harness: Harness) -> None:
    filler = b"X-Filler: " + b"v" * (proxy.MAX_HEADER_BYTES - 200) + b"\r\n"
    response = b"HTTP/1.1 200 OK\r\n" + filler + b"Content-Length: 2\r\n\r\nok"
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(*(response[i : i + 1000] for i in range(0, len(response), 1000)))

    resp = parse_one(client.received)
    assert resp.complete and resp.status == 200 and resp.body == b"ok"
    assert resp.values(b"x-filler") == [filler[10:-2]]
    assert harness.idle() == 1


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param([b"garbage garbage\r\n\r\n"], id="garbage"),
        pytest.param([b"SSH-2.0-OpenSSH_9.6\r\n"], id="other-protocol"),
        pytest.param([b"HTTP/1.1 2", b"x0 OK\r\n\r\n"], id="bad-status-split"),
        pytest.param([b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n"], id="space-in-name"),
        pytest.param([b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"], id="bare-lf"),
    ],
)
async def test_garbage_instead_of_response_head_is_502(
    harness: Harness, reads: list[bytes]
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(*reads)
    assert_bad_gateway(harness, client, upstream)
    assert not client.transport.closing


@pytest.mark.parametrize(
    ("response", "reusable"),
    [
        pytest.param(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", False, id="fast-path"),
        pytest.param(
            b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n"
            b"Content-Length: 2\r\n\r\nok",
            True,
            id="slow-path-keep-alive",
        ),
    ],
)
async def test_http10_upstream_status_line_is_relayed_as_http11(
    harness: Harness, response: bytes, reusable: bool
) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(response)

    assert client.received.startswith(b"HTTP/1.1 200 OK\r\n")
    resp = parse_one(client.received)
    assert resp.complete and resp.body == b"ok"
    assert resp.names() == [b"content-length", *PROXY_HEADERS]
    assert harness.idle() == (1 if reusable else 0)


# ------------------------------------------------------ odd heads that llhttp accepts


@pytest.mark.parametrize(
    "reads",
    [
        pytest.param([b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], id="one-crlf"),
        pytest.param([b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"], id="two-crlf"),
        pytest.param(
            [b"HTTP/1.1 100 Continue\r\n\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            id="after-100",
        ),
    ],
)
async def test_empty_lines_before_the_status_line_are_not_relayed(
    harness: Harness, reads: list[bytes]
) -> None:
    """llhttp skips CRLFs before a status line; the relayed head must not start with them."""
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(*reads)

    assert client.received.startswith(b"HTTP/1.1 200 OK\r\n")
    resp = parse_one(client.received)
    assert resp.complete and resp.body == b"ok"


async def test_connection_header_naming_content_length_keeps_the_response_framed(
    harness: Harness,
) -> None:
    """A framing field named in Connection is not dropped: the client must find the end."""
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(
        b"HTTP/1.1 200 OK\r\nConnection: close, Content-Length\r\nContent-Length: 2\r\n\r\nok"
    )

    resp = parse_one(client.received)
    assert resp.complete and resp.body == b"ok"


async def test_a_response_cut_short_by_the_target_is_counted_once_under_its_status(
    harness: Harness,
) -> None:
    """The head went out, the target closed mid-body: the client's connection is cut,
    and the request still shows in the metrics, once, with the status it was told."""
    client = harness.client()
    upstream = harness.request(client, GET)
    upstream.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    upstream.close_from_peer()
    harness.settle()
    assert client.transport.lost or client.transport.aborted
    series = harness.server.metrics.snapshot(0)["series"]
    assert [(s["codes"], s["local_codes"]) for s in series] == [({"200": 1}, {})]
