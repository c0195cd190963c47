"""HTTP/1.1 conformance of the data-plane proxy, driven with raw sockets.

One test per HTTP/1.1 behaviour of the proxy path (RFC 9112 message framing and
connection management, RFC 9110 hop-by-hop fields, ``Expect`` and ``Upgrade``, RFC 6455
for the WebSocket case). The client side is always a raw TCP socket writing exact bytes
(so framing mistakes cannot be hidden by a forgiving client library); targets are real aiohttp servers (:class:`Backend`) or raw asyncio
servers that answer with exact bytes (:class:`ScriptedBackend`), so that the proxy can be
shown malformed, truncated or hop-by-hop-laden answers. Nothing of the proxy is mocked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from contextlib import AsyncExitStack

import pytest

from data_plane.proxy import MAX_HEADER_BYTES
from data_plane.runtime import compile_config
from tests.support.backends import (
    Answer,
    ScriptedBackend,
    SeenRequest,
    fixed,
    raw_backend,
    start_backend,
)
from tests.support.polling import wait_for
from tests.support.proxy import (
    assert_closed,
    body_json,
    connect,
    make_config,
    proxy_to,
    read_response,
    start_proxy,
)

# ------------------------------------------------------------------ bodies / framing


async def test_content_length_request_body_is_forwarded(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    body = b"hello world" * 1000
    writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    status, _, raw = await read_response(reader)
    data = body_json(raw)
    assert status == 200 and data["chunked"] is False
    assert data["body_len"] == len(body) and data["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert data["headers"]["Content-Length"] == str(len(body))  # type: ignore[index]


async def test_chunked_request_body_is_forwarded_chunked(stack: AsyncExitStack) -> None:
    seen = await ScriptedBackend(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).start(stack)
    proxy = await proxy_to(stack, seen.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"ok")
    request = seen.requests[0]
    assert request.header("transfer-encoding") == "chunked" and request.header("content-length") is None
    assert request.body == b"hello world"


async def test_content_length_response_is_relayed(stack: AsyncExitStack) -> None:
    payload = os.urandom(70000)
    raw = await raw_backend(stack, b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    proxy = await proxy_to(stack, raw.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["content-length"] == str(len(payload))
    assert "transfer-encoding" not in headers and body == payload


async def test_chunked_response_is_relayed_chunked(stack: AsyncExitStack) -> None:
    raw = await raw_backend(
        stack,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nWiki\r\n5;name=v\r\npedia\r\n0\r\nX-Trailer: t\r\n\r\n",
    )
    proxy = await proxy_to(stack, raw.port)
    reader, writer = await connect(stack, proxy.port)
    for _ in range(2):  # framing right: the second answer on the connection parses too
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers and body == b"Wikipedia"
    assert raw.received and len(raw.received) == 2


async def test_read_until_close_response_is_rechunked(stack: AsyncExitStack) -> None:
    raw = await raw_backend(stack, b"HTTP/1.1 200 OK\r\n\r\nall of it", close=True)
    proxy = await proxy_to(stack, raw.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, headers["transfer-encoding"], body) == (200, "chunked", b"all of it")
    # The client connection stays usable.
    writer.write(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"all of it")


# ------------------------------------------------------------ keep-alive / close


async def test_keepalive_reuses_client_and_upstream_connections(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    for i in range(5):
        writer.write(b"GET /k%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        status, headers, body = await read_response(reader)
        assert status == 200 and "connection" not in headers
        assert body_json(body)["path_qs"] == f"/k{i}"
    assert a.connections == 1 and proxy.connections == 1
    assert proxy.pool.idle_count() == 1
    # A second client connection reuses the same idle upstream connection.
    reader2, writer2 = await connect(stack, proxy.port)
    writer2.write(b"GET /other HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader2)
    assert status == 200 and a.connections == 1


async def test_client_connection_close_is_honoured(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /api HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert body_json(body)["backend"] == "a"
    assert await assert_closed(reader) == b""
    # Connection is hop-by-hop: the upstream request did not carry it, and the upstream
    # connection went back to the pool.
    assert "connection" not in {k.lower() for k in a.requests[-1]["headers"]}
    await wait_for(lambda: proxy.pool.idle_count() == 1, message="upstream connection pooled")


async def test_upstream_connection_close_is_not_reused(stack: AsyncExitStack) -> None:
    # Says "Connection: close" but keeps the socket open: reusing it would be a bug
    # that this backend would see as a second request on one connection.
    seen = await ScriptedBackend(
        fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    ).start(stack)
    proxy = await proxy_to(stack, seen.port)
    reader, writer = await connect(stack, proxy.port)
    for _ in range(3):
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = await read_response(reader)
        # The upstream's close is not the client's: its connection stays open.
        assert (status, body) == (200, b"ok") and "connection" not in headers
    assert [r.connection for r in seen.requests] == [1, 2, 3]
    assert proxy.pool.idle_count() == 0


# ------------------------------------------------------------------- pipelining


async def test_pipelined_requests_are_answered_in_order(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        b"GET /slow?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /one HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
        b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /three HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"late")
    for expected, length in (("/one", 3), ("/two", 0), ("/three", 2)):
        status, _, body = await read_response(reader)
        data = body_json(body)
        assert (status, data["path_qs"], data["body_len"]) == (200, expected, length)


async def test_pipelined_requests_to_targets_of_different_speeds_stay_in_order(
    stack: AsyncExitStack,
) -> None:
    slow = await start_backend(stack, "slow")
    fast = await start_backend(stack, "fast")
    config = compile_config(
        1,
        "h",
        {
            "services": [
                {"id": "s1", "host": "127.0.0.1", "port": slow.port},
                {"id": "s2", "host": "127.0.0.1", "port": fast.port},
            ],
            "routes": [
                {"id": "r1", "paths": ["/slow"], "strip_path": False, "service": {"id": "s1"}},
                {"id": "r2", "paths": ["/fast"], "strip_path": False, "service": {"id": "s2"}},
            ],
        },
    )
    proxy, _, _ = await start_proxy(stack, config)
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        b"GET /slow?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /fast/1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /slow?s=0.1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /fast/2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    answers = []
    for _ in range(4):
        status, _, body = await read_response(reader)
        assert status == 200
        answers.append(body.decode() if body == b"late" else body_json(body)["path_qs"])
    assert answers == ["late", "/fast/1", "late", "/fast/2"]


async def test_pipelined_local_answers_are_in_order(stack: AsyncExitStack) -> None:
    """Many pipelined requests answered by the proxy itself (no recursion, in order)."""
    a = await start_backend(stack, "a")
    proxy, _, _ = await start_proxy(stack, make_config(1, [(f"127.0.0.1:{a.port}", 100)]))
    reader, writer = await connect(stack, proxy.port)
    n = 2000
    writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n" * n + b"GET /api HTTP/1.1\r\nHost: x\r\n\r\n")
    for _ in range(n):
        status, _, _ = await read_response(reader)
        assert status == 404
    status, _, body = await read_response(reader)
    assert status == 200 and body_json(body)["backend"] == "a"


# ------------------------------------------------------------ responses without body


def _by_path(answers: dict[str, bytes]) -> Answer:
    def answer(request: SeenRequest) -> tuple[bytes, bool]:
        path = request.head.split(b" ", 2)[1].decode()
        return answers[path], False

    return answer


_NEXT_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"


@pytest.mark.parametrize(
    ("request_head", "answer", "status", "headers", "absent", "forwarded"),
    [
        pytest.param(
            b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
            200,
            {"content-length": "1234"},
            (),
            {},
            id="head_response_has_no_body",
        ),
        pytest.param(
            b"DELETE /n HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
            204,
            {},
            ("content-length", "transfer-encoding"),
            {},
            id="204_response_has_no_body_even_with_content_length",
        ),
        pytest.param(
            b'GET /c HTTP/1.1\r\nHost: x\r\nIf-None-Match: "v1"\r\n\r\n',
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 5\r\n\r\n',
            304,
            {"etag": '"v1"'},
            ("transfer-encoding",),
            {"if-none-match": '"v1"'},
            id="304_response_has_no_body_even_with_content_length",
        ),
    ],
)
async def test_response_without_a_body_is_framed_without_one(
    stack: AsyncExitStack,
    request_head: bytes,
    answer: bytes,
    status: int,
    headers: dict[str, str],
    absent: tuple[str, ...],
    forwarded: dict[str, str],
) -> None:
    """HEAD, 204 and 304 answers carry no body whatever their Content-Length says: the
    client gets the head only, and the next request on the connection is answered."""
    path = request_head.split(b" ", 2)[1].decode()
    seen = await ScriptedBackend(_by_path({path: answer, "/next": _NEXT_OK})).start(stack)
    proxy = await proxy_to(stack, seen.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(request_head)
    got_status, got_headers, _ = await read_response(reader, head_only=True)
    assert got_status == status
    for name, value in headers.items():
        assert got_headers[name] == value, name
    for name in absent:
        assert name not in got_headers, name
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    got_status, _, body = await read_response(reader)
    assert (got_status, body) == (200, b"next")
    # Both on one upstream connection: the answer was framed without a body.
    assert [r.connection for r in seen.requests] == [1, 1]
    for name, value in forwarded.items():
        assert seen.requests[0].header(name) == value, name


# ---------------------------------------------------------------- Expect: 100-continue


async def test_expect_100_continue(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 100  # sent by the proxy before the client sent the body
    writer.write(b"data")
    status, _, body = await read_response(reader)
    data = body_json(body)
    assert status == 200 and data["body_len"] == 4
    assert "Expect" not in data["headers"]  # type: ignore[operator]


# ----------------------------------------------------------------- hop-by-hop headers


async def test_hop_by_hop_request_headers_are_stripped(stack: AsyncExitStack) -> None:
    seen = await ScriptedBackend(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).start(stack)
    proxy = await proxy_to(stack, seen.port, routes=[{"id": "r", "paths": ["/api"], "service": {"id": "s1"}}])
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        b"GET /api HTTP/1.1\r\nHost: example.com:9999\r\nConnection: keep-alive, X-Drop\r\n"
        b"X-Drop: 1\r\nKeep-Alive: 300\r\nTE: trailers\r\nTrailer: X-T\r\nProxy-Connection: x\r\n"
        b"Upgrade: foo\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
        b"X-Custom: c\r\n\r\n"
    )
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"ok")
    request = seen.requests[0]
    for name in ("connection", "x-drop", "keep-alive", "te", "trailer", "proxy-connection", "upgrade"):
        assert name not in request.header_names, name
    assert request.header("x-custom") == "c"
    assert request.header("host") == f"127.0.0.1:{seen.port}"
    assert request.header("x-forwarded-for") == "10.0.0.1, 127.0.0.1"
    assert request.header("x-forwarded-proto") == "http"
    assert request.header("x-forwarded-host") == "example.com"
    assert request.header("x-forwarded-port") == str(proxy.port)
    assert request.header("x-real-ip") == "127.0.0.1"


async def test_connection_cannot_name_content_length_away_from_a_request_body(
    stack: AsyncExitStack,
) -> None:
    """``Connection: content-length`` must not drop the framing of a forwarded body:
    the target would read the body as the next request (request smuggling)."""
    seen = await ScriptedBackend(fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")).start(stack)
    proxy = await proxy_to(stack, seen.port, routes=[{"id": "r", "paths": ["/api"], "service": {"id": "s1"}}])
    reader, writer = await connect(stack, proxy.port)
    writer.write(
        b"POST /api HTTP/1.1\r\nHost: x\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello"
    )
    status, _, body = await read_response(reader)
    assert (status, body) == (200, b"ok")
    request = seen.requests[0]
    assert request.header("content-length") == "5"
    assert request.body == b"hello"
    assert len(seen.requests) == 1


async def test_hop_by_hop_response_headers_are_stripped(stack: AsyncExitStack) -> None:
    raw = await raw_backend(
        stack,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: X-Secret, keep-alive\r\nX-Secret: s\r\n"
        b"Keep-Alive: timeout=5\r\nTrailer: X-T\r\nUpgrade: h2c\r\nProxy-Connection: x\r\n"
        b"X-Kept: yes\r\n\r\nok",
    )
    proxy = await proxy_to(stack, raw.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert (status, body) == (200, b"ok") and headers["x-kept"] == "yes"
    for name in ("x-secret", "keep-alive", "trailer", "upgrade", "proxy-connection", "connection"):
        assert name not in headers, name


# ------------------------------------------------------------- limits and bad input


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(
            b"GET /x HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEADER_BYTES // 100))
            + b"\r\n",
            id="oversized_headers",
        ),
        pytest.param(
            b"GET /" + b"a" * (MAX_HEADER_BYTES + 10) + b" HTTP/1.1\r\nHost: x\r\n\r\n",
            id="oversized_request_line",
        ),
    ],
)
async def test_oversized_head_gets_431_and_close(stack: AsyncExitStack, request_bytes: bytes) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(request_bytes)
    status, headers, body = await read_response(reader)
    assert status == 431 and headers["connection"] == "close"
    assert body_json(body) == {"message": "Request header fields too large"}
    assert await assert_closed(reader) == b""
    assert a.requests == []


async def test_header_line_that_never_ends_gets_431(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nX-Endless: ")
    # Several writes: the proxy must stop buffering one unterminated header line.
    answer: asyncio.Task[tuple[int, dict[str, str], bytes]] = asyncio.ensure_future(read_response(reader))
    stack.callback(answer.cancel)
    for _ in range(64):
        if answer.done():
            break
        writer.write(b"v" * 4096)
        try:
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0)
    status, _, _ = await answer
    assert status == 431


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(b"GARBAGE\r\n\r\n", id="garbage_request_line"),
        pytest.param(b"GET /x HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", id="space_in_header_name"),
        pytest.param(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            id="two_content_lengths",
        ),
        # Request smuggling shape: both framings.
        pytest.param(
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            id="content_length_and_chunked",
        ),
    ],
)
async def test_malformed_request_gets_400_and_close(stack: AsyncExitStack, bad: bytes) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(bad + b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 400 and headers["connection"] == "close", bad
    assert body_json(body) == {"message": "Bad request"}
    assert await assert_closed(reader) == b"", bad  # nothing after: /after is not served
    assert a.requests == []


# ------------------------------------------------------------------ failing targets


async def test_target_closing_mid_response_closes_the_client_connection(stack: AsyncExitStack) -> None:
    raw = await raw_backend(stack, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", close=True)
    proxy = await proxy_to(stack, raw.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = await read_response(reader, head_only=True)
    # The status line was already out: the only way to signal the failure is to close
    # before the promised 100 bytes.
    assert status == 200 and headers["content-length"] == "100"
    rest = await assert_closed(reader)
    assert len(rest) < 100 and b"short".startswith(rest)


async def test_target_closing_before_headers_gets_502(stack: AsyncExitStack) -> None:
    seen = await ScriptedBackend(fixed(b"", close=True)).start(stack)
    proxy = await proxy_to(stack, seen.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 502 and "connection" not in headers
    assert body_json(body) == {"message": "An invalid response was received from the upstream server"}
    # The client connection is still good.
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 502


async def test_garbage_from_target_gets_502(stack: AsyncExitStack) -> None:
    raw = await raw_backend(stack, b"NOT HTTP AT ALL\r\n\r\n", close=True)
    proxy = await proxy_to(stack, raw.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, _ = await read_response(reader)
    assert status == 502


# ----------------------------------------------------------------------- upgrades


def ws_frame(payload: bytes, opcode: int = 1, *, masked: bool = True) -> bytes:
    """One final WebSocket frame (RFC 6455); clients must mask."""
    size = len(payload)
    bit = 0x80 if masked else 0
    if size < 126:
        head = bytes([0x80 | opcode, bit | size])
    elif size < 65536:
        head = bytes([0x80 | opcode, bit | 126]) + size.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, bit | 127]) + size.to_bytes(8, "big")
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


async def read_ws_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(reader.readexactly(2), 10)
    size = b1 & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(size)
    if key is not None:
        payload = bytes(b ^ key[i & 3] for i, b in enumerate(payload))
    return b0 & 0x0F, payload


async def test_websocket_upgrade_is_passed_through(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    key = base64.b64encode(os.urandom(16))
    writer.write(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    status, headers, _ = await read_response(reader)
    assert status == 101
    assert headers["upgrade"].lower() == "websocket" and headers["connection"].lower() == "upgrade"
    accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert headers["sec-websocket-accept"] == accept.decode()
    assert headers["via"] == "1.1 ferry/0.1.0" and "x-ferry-upstream-latency" in headers
    # The target forwarded the handshake headers.
    assert a.requests[0]["headers"]["Upgrade"] == "websocket"
    assert a.requests[0]["headers"]["Connection"].lower() == "upgrade"
    assert await read_ws_frame(reader) == (1, b"hello from a")
    for text in (b"one", b"two" * 30000, b"three"):
        writer.write(ws_frame(text))
        assert await read_ws_frame(reader) == (1, b"echo:" + text)
    writer.write(ws_frame(bytes(range(256)) * 10, opcode=2))
    assert await read_ws_frame(reader) == (2, bytes(range(256)) * 10)
    writer.write(ws_frame(b"bye"))
    opcode, _ = await read_ws_frame(reader)
    assert opcode == 8  # close frame from the target
    writer.write(ws_frame(b"\x03\xe8", opcode=8))
    await assert_closed(reader)
    await wait_for(lambda: proxy.connections == 0, message="client connection gone")
    assert proxy.pool.idle_count() == 0  # an upgraded connection is never pooled


async def test_upgrade_tunnel_pipes_raw_bytes_both_ways(stack: AsyncExitStack) -> None:
    received: list[bytes] = []
    done = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            received.append(head)
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"X-Tunnel: 1\r\n\r\nserver-first;"
            )
            while data := await reader.read(65536):  # echo, upper-cased, until EOF
                received.append(data)
                writer.write(data.upper())
                await writer.drain()
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    proxy = await proxy_to(stack, server.sockets[0].getsockname()[1])
    reader, writer = await connect(stack, proxy.port)
    # Bytes right behind the head belong to the tunnel too, once the target said 101.
    writer.write(b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\nearly;")
    status, headers, _ = await read_response(reader, head_only=True)
    assert status == 101 and headers["x-tunnel"] == "1" and headers["upgrade"] == "websocket"
    assert await asyncio.wait_for(reader.readexactly(13), 10) == b"server-first;"
    assert await asyncio.wait_for(reader.readexactly(6), 10) == b"EARLY;"
    payload = os.urandom(1 << 20).hex().encode()  # 2 MiB, exercises flow control
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 20) == payload.upper()
    writer.write_eof()  # the client closes: the target sees EOF, the tunnel ends
    await asyncio.wait_for(done.wait(), 10)
    assert await assert_closed(reader) == b""
    assert received[0].lower().count(b"upgrade: websocket") == 1
    assert b"early" not in received[0]  # held until the 101, then tunnelled
    await wait_for(lambda: proxy.connections == 0, message="client connection gone")


async def test_upgrade_refused_by_target_is_relayed_and_http_goes_on(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    writer.write(b"GET /not-a-ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    status, headers, body = await read_response(reader)
    # An ordinary answer, relayed as such; the connection stays an HTTP/1.1 one.
    assert status == 200 and body_json(body)["path_qs"] == "/not-a-ws"
    assert "upgrade" not in headers and headers.get("connection") != "close"
    assert proxy.pool.idle_count() == 0  # the upgrade request's connection is not reused
    writer.write(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200 and body_json(body)["path_qs"] == "/next"


# ------------------------------------------------------------ Via / latency headers


async def test_via_and_latency_headers(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    routes = [
        {"id": "r1", "paths": ["/slow", "/fast"], "strip_path": False, "service": {"id": "s1"}}
    ]
    proxy = await proxy_to(stack, a.port, routes=routes)
    reader, writer = await connect(stack, proxy.port)
    # Pipelined: the second request waits ~0.2 s behind the first inside the proxy.
    writer.write(b"GET /slow?s=0.2 HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    _, first, _ = await read_response(reader)
    _, second, _ = await read_response(reader)
    for headers in (first, second):
        assert headers["via"] == "1.1 ferry/0.1.0"
        assert headers["x-ferry-upstream-latency"].isdigit()
        assert headers["x-ferry-proxy-latency"].isdigit()
    # Loose lower bounds only (upper bounds would be timing assertions; timers may
    # fire a little early): the target's 0.2 s is upstream latency for the first, and
    # proxy latency (queued behind it) for the second.
    assert int(first["x-ferry-upstream-latency"]) >= 150
    assert int(second["x-ferry-proxy-latency"]) >= 150
    # The proxy's own answers carry Server, not Via or latency headers.
    writer.write(b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    status, own, _ = await read_response(reader)
    assert status == 404 and own["server"] == "ferry/0.1.0"
    assert "via" not in own and "x-ferry-upstream-latency" not in own


# ------------------------------------------------------------------------ HTTP/1.0


async def test_http10_client_gets_close_delimited_body(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    # The target answers chunked; an HTTP/1.0 client knows no chunked coding.
    writer.write(b"GET /download?size=1000 HTTP/1.0\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200 and "transfer-encoding" not in headers and "content-length" not in headers
    assert headers["connection"] == "close" and len(body) == 1000


async def test_http10_keepalive_client(stack: AsyncExitStack) -> None:
    a = await start_backend(stack, "a")
    proxy = await proxy_to(stack, a.port)
    reader, writer = await connect(stack, proxy.port)
    for i in range(2):
        writer.write(b"GET /ka%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % i)
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["connection"] == "keep-alive"
        assert body_json(body)["path_qs"] == f"/ka{i}"
    writer.write(b"GET /last HTTP/1.0\r\n\r\n")  # no keep-alive: closed after
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close"
    assert await assert_closed(reader) == b""

