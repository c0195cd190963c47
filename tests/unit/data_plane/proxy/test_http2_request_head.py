"""An HTTP/2 request's header list as the HTTP/1.1 head the proxy reads
(data_plane/proxy/http2_stream.py ``request_head``): what is carried, what is refused."""

from __future__ import annotations

import pytest

from data_plane.proxy.http2_stream import MalformedRequest, request_head

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"api.test"), (b":path", b"/a?b=1")]


def test_pseudo_headers_become_the_request_line_and_host() -> None:
    head, method, chunked = request_head([*BASE, (b"accept", b"*/*")], has_body=False)
    assert method == b"GET" and not chunked
    assert head == b"GET /a?b=1 HTTP/1.1\r\nHost: api.test\r\naccept: */*\r\nConnection: close\r\n\r\n"


def test_a_body_without_a_length_is_sent_chunked_and_one_with_a_length_as_is() -> None:
    head, _, chunked = request_head(BASE, has_body=True)
    assert chunked and b"Transfer-Encoding: chunked\r\n" in head
    head, _, chunked = request_head([*BASE, (b"content-length", b"5")], has_body=True)
    assert not chunked and b"content-length: 5\r\n" in head and b"Transfer-Encoding" not in head


def test_cookie_crumbs_are_joined_and_te_and_expect_dropped() -> None:
    head, _, _ = request_head(
        [*BASE, (b"cookie", b"a=1"), (b"te", b"trailers"), (b"cookie", b"b=2"), (b"expect", b"100-continue")],
        has_body=False,
    )
    assert b"cookie: a=1; b=2\r\n" in head
    assert b"te:" not in head and b"expect" not in head


def test_host_is_used_without_authority_and_absent_when_neither_is_sent() -> None:
    no_authority = [h for h in BASE if h[0] != b":authority"]
    head, _, _ = request_head([*no_authority, (b"host", b"h.test")], has_body=False)
    assert head.count(b"Host: h.test\r\n") == 1 and b"host: h.test" not in head
    head, _, _ = request_head(no_authority, has_body=False)
    assert b"Host:" not in head  # the HTTP/1.1 reader answers 400, as to HTTP/1.1


@pytest.mark.parametrize("bad", [
    (b"x-a", b"1\r\nx-b: 2"),
    (b"x-a", b"1\nx"),
    (b"x-a", b"\x00"),
    (b"X-Upper", b"1"),
    (b"bad name", b"1"),
    (b"connection", b"close"),
    (b"transfer-encoding", b"chunked"),
    (b"upgrade", b"websocket"),
    (b":protocol", b"websocket"),
])
def test_fields_that_would_break_the_http_1_1_head_are_malformed(bad: tuple[bytes, bytes]) -> None:
    with pytest.raises(MalformedRequest):
        request_head([*BASE, bad], has_body=False)


@pytest.mark.parametrize("pseudo", [
    (b":method", b"G T"), (b":method", b"CONNECT"), (b":method", b""),
    (b":path", b"/a b"), (b":path", b"/a\r\n"), (b":path", b""),
])
def test_a_bad_method_or_path_is_malformed(pseudo: tuple[bytes, bytes]) -> None:
    headers = [h for h in BASE if h[0] != pseudo[0]] + [pseudo]
    with pytest.raises(MalformedRequest):
        request_head(headers, has_body=False)
