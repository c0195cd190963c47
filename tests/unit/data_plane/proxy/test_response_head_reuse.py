"""An upstream connection reuses the split of its last response head for a head
identical to it, byte for byte (``_UpstreamConnection.on_headers_complete``); any
other head is split anew.

On the fake-transport harness (``tests/support/proxy_relay.py``).
"""

from __future__ import annotations

import re

from tests.support.proxy_relay import Client, Harness, harness

__all__ = ["harness"]  # the fixture, used by name

GET = b"GET /item HTTP/1.1\r\nHost: api.test\r\n\r\n"
HEAD = b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
_LATENCY = re.compile(rb"(X-Ferry-(?:Upstream|Proxy)-Latency: )\d+")


def _exchange(h: Harness, client: Client, *reads: bytes) -> bytes:
    """One request on ``client`` answered with ``reads``; what the client got for it."""
    upstream = h.request(client, GET)
    before = len(client.received)
    upstream.feed(*reads)
    return _LATENCY.sub(rb"\1N", client.received[before:])


async def test_a_repeated_head_is_relayed_exactly_as_the_first(harness: Harness) -> None:
    client = harness.client()
    first = _exchange(harness, client, HEAD + b"ok")
    second = _exchange(harness, client, HEAD + b"ok")
    split = _exchange(harness, client, HEAD[:20], HEAD[20:] + b"ok")  # the head in two reads
    assert first == second == split
    assert first.startswith(b"HTTP/1.1 200 OK\r\nServer: t\r\nContent-Length: 2\r\n")
    assert b"keep-alive" not in first.lower() and first.endswith(b"\r\n\r\nok")
    assert harness.idle() == 1  # pooled after each


async def test_a_head_that_goes_on_past_the_last_one_is_split_anew(harness: Harness) -> None:
    client = harness.client()
    _exchange(harness, client, HEAD + b"ok")
    # The same lines and then more: "Connection: close" must be acted on.
    longer = HEAD[:-2] + b"Connection: close\r\n\r\n"
    got = _exchange(harness, client, longer + b"ok")
    assert got.endswith(b"\r\n\r\nok")
    assert harness.idle() == 0  # the target said close: not pooled


async def test_a_head_differing_in_one_byte_is_split_anew(harness: Harness) -> None:
    client = harness.client()
    _exchange(harness, client, HEAD + b"ok")
    three = HEAD.replace(b"Content-Length: 2", b"Content-Length: 3")
    got = _exchange(harness, client, three + b"yes")
    assert b"Content-Length: 3\r\n" in got and got.endswith(b"\r\n\r\nyes")
    # And a 204 after a 200 with otherwise the same fields: its Content-Length goes.
    no_content = HEAD.replace(b"200 OK", b"204 No Content")
    got = _exchange(harness, client, no_content)
    assert got.startswith(b"HTTP/1.1 204 ") and b"content-length" not in got.lower()
