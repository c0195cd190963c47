"""A read that is byte for byte the connection's last plain request is queued from a
copy of that exchange without being parsed again (``_ClientConnection._remember_plain``);
anything else is parsed as it comes.

On the fake-transport harness (``tests/support/proxy_relay.py``).
"""

from __future__ import annotations

from tests.support.proxy_relay import Client, Harness, harness

__all__ = ["harness"]  # the fixture, used by name

GET = b"GET /item?x=1 HTTP/1.1\r\nHost: api.test\r\nX-Seq: 1\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _sent_upstream(h: Harness, client: Client, raw: bytes, response: bytes = RESPONSE) -> bytes:
    """``raw`` from ``client``; what its upstream connection was sent for it (answered)."""
    upstream = h.request(client, raw)
    sent = upstream.transport.data
    upstream.transport.chunks.clear()
    before = len(client.received)
    upstream.feed(response)
    assert client.received[before:].startswith(b"HTTP/1.1 200 ")
    return sent


async def test_a_repeated_request_goes_upstream_exactly_as_the_first(harness: Harness) -> None:
    client = harness.client()
    first = _sent_upstream(harness, client, GET)
    assert client.conn._repeat_raw == GET  # remembered
    second = _sent_upstream(harness, client, GET)
    third = _sent_upstream(harness, client, GET)
    assert first == second == third
    assert first.startswith(b"GET /item?x=1 HTTP/1.1\r\nHost: 127.0.0.1:19001\r\n")
    assert b"X-Seq: 1\r\n" in first and b"X-Forwarded-Host: api.test\r\n" in first


async def test_a_request_differing_in_one_byte_is_parsed_anew(harness: Harness) -> None:
    client = harness.client()
    _sent_upstream(harness, client, GET)
    other = GET.replace(b"X-Seq: 1", b"X-Seq: 2")
    assert b"X-Seq: 2\r\n" in _sent_upstream(harness, client, other)
    assert client.conn._repeat_raw == other
    assert b"X-Seq: 1\r\n" in _sent_upstream(harness, client, GET)


async def test_a_request_with_a_body_is_parsed_every_time(harness: Harness) -> None:
    client = harness.client()
    post = b"PUT /item HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\nhello"
    for _ in range(2):
        sent = _sent_upstream(harness, client, post)
        assert sent.endswith(b"\r\n\r\nhello")
        assert client.conn._repeat_raw == b""


async def test_a_request_that_closes_or_is_refused_is_not_remembered(harness: Harness) -> None:
    client = harness.client()
    _sent_upstream(harness, client, GET)
    closing = b"GET /item HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n"
    assert _sent_upstream(harness, client, closing).startswith(b"GET /item HTTP/1.1\r\n")
    assert client.conn._repeat_raw == b""
    refused = harness.client()
    refused.conn.data_received(b"GET /item HTTP/1.1\r\nHost: bad host\r\n\r\n")
    assert refused.received.startswith(b"HTTP/1.1 400 ")
    assert refused.conn._repeat_raw == b""


async def test_two_requests_in_one_read_are_not_remembered(harness: Harness) -> None:
    harness.add_upstream()
    client = harness.client()
    client.conn.data_received(GET + GET)
    assert client.conn._repeat_raw == b""
    for _ in range(2):
        upstream = harness.upstreams[id(client.conn._queue[0].conn)]
        upstream.feed(RESPONSE)
    assert client.received.count(b"HTTP/1.1 200 ") == 2


async def test_a_request_whose_body_comes_in_a_later_read_is_not_remembered(
    harness: Harness,
) -> None:
    client = harness.client()
    head = b"PUT /item HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n\r\n"
    client.conn.data_received(head)
    upstream = harness.upstreams[id(client.conn._queue[-1].conn)]
    client.conn.data_received(b"hello")
    assert upstream.transport.data == upstream.transport.data.split(b"\r\n\r\n")[0] + b"\r\n\r\nhello"
    assert client.conn._repeat_raw == b""
    upstream.feed(RESPONSE)
    assert client.received.startswith(b"HTTP/1.1 200 ")
