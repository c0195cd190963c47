"""Writes made at the end of the event loop's iteration (``data_plane/proxy/write_batch.py``).

On the fake-transport harness: ``transport.chunks`` is what reached the transport so
far, ``server.write_batch.flush()`` is the end of the loop's iteration.
"""

from __future__ import annotations

import pytest

from tests.support.proxy_relay import Harness, harness

__all__ = ["harness"]  # the fixture, used by name

GET = b"GET /item HTTP/1.1\r\nHost: api.test\r\n\r\n"
BODY = b"x" * 1000
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + BODY
BIG_HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n"


async def test_a_request_and_its_response_are_written_at_the_end_of_the_iteration(
    harness: Harness,
) -> None:
    client = harness.client()
    client.conn.data_received(GET)
    upstream = harness.upstreams[id(client.conn._queue[-1].conn)]
    assert upstream.transport.chunks == [], "the request went out before the iteration ended"
    harness.server.write_batch.flush()
    assert b"".join(upstream.transport.chunks).startswith(b"GET /item HTTP/1.1\r\n")
    upstream.feed(RESPONSE)
    assert client.transport.chunks == []
    harness.server.write_batch.flush()
    written = b"".join(client.transport.chunks)
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and written.endswith(BODY)


async def test_every_connection_of_an_iteration_is_flushed_in_one_write_each(
    harness: Harness,
) -> None:
    harness.add_upstream()
    harness.add_upstream()
    clients = [harness.client() for _ in range(3)]
    pairs = []
    for client in clients:
        client.conn.data_received(GET)
        pairs.append((client, harness.upstreams[id(client.conn._queue[-1].conn)]))
    assert len({id(upstream) for _, upstream in pairs}) == 3
    harness.server.write_batch.flush()
    for _, upstream in pairs:
        assert upstream.transport.calls == 1  # the request head, one write
    for client, upstream in pairs:
        client.transport.chunks.clear()
        client.transport.calls = 0
        upstream.feed(RESPONSE)
    assert all(client.transport.chunks == [] for client in clients)
    harness.server.write_batch.flush()
    for client in clients:
        # head and body went to the transport in one call (writelines), once
        assert client.transport.calls == 1
        assert b"".join(client.transport.chunks).endswith(BODY)


async def test_a_second_write_in_one_iteration_goes_out_at_once(harness: Harness) -> None:
    """A body streaming in: flow control must see it now, so at most one read is held."""
    client = harness.client()
    upstream = harness.request(client, GET)
    client.transport.chunks.clear()
    upstream.feed(BIG_HEAD + b"a" * 100_000)
    assert client.transport.chunks == []  # the first read: held for the iteration's end
    upstream.feed(b"b" * 100_000)
    written = b"".join(client.transport.chunks)
    assert written.startswith(BIG_HEAD[:-2]) and written.endswith(b"a" * 100_000 + b"b" * 100_000)
    upstream.feed(b"c" * 100_000)
    assert not b"".join(client.transport.chunks).endswith(b"c")  # held again...
    harness.server.write_batch.flush()
    assert b"".join(client.transport.chunks).endswith(b"c" * 100_000)  # ...until the end


async def test_an_answer_queued_before_a_close_is_written_before_it(harness: Harness) -> None:
    client = harness.client()
    client.conn.data_received(b"GET /item HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    upstream = harness.upstreams[id(client.conn._queue[-1].conn)]
    harness.server.write_batch.flush()
    upstream.feed(RESPONSE)
    # The exchange ended and the client connection closed in the same iteration: the
    # close flushed the answer first.
    assert client.transport.closing
    assert b"".join(client.transport.chunks).endswith(BODY)


async def test_an_abort_drops_what_the_connection_queued(harness: Harness) -> None:
    client = harness.client()
    upstream = harness.request(client, GET)
    client.transport.chunks.clear()
    upstream.feed(RESPONSE)
    client.conn.abort()
    harness.server.write_batch.flush()
    assert client.transport.chunks == []
    assert client.transport.aborted


async def test_a_transport_that_fails_is_aborted_and_the_others_still_get_their_bytes(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    harness.add_upstream()
    broken, healthy = harness.client(), harness.client()
    up_broken = harness.request(broken, GET)
    up_healthy = harness.request(healthy, GET)
    broken.transport.chunks.clear()
    healthy.transport.chunks.clear()
    broken.transport.fail_writes = True
    up_broken.feed(RESPONSE)
    up_healthy.feed(RESPONSE)
    harness.server.write_batch.flush()
    assert broken.transport.aborted
    assert b"".join(healthy.transport.chunks).endswith(BODY)
    assert "proxy bug while writing to a client" in caplog.text
