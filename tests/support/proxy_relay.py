"""A started :class:`ProxyServer` whose client and upstream connections run on fake
transports, fed with ``data_received`` by the test: every read boundary is chosen by
the test and everything after the start is synchronous (no sockets, no sleeps).

``Harness.settle`` plays the event loop's part after a transport was closed: it delivers
``connection_lost(None)``, which is how a closed upstream connection leaves the pool.
The proxy queues its writes for the end of the loop's iteration
(``data_plane/proxy/write_batch.py``); :attr:`FakeTransport.data` flushes them first,
:attr:`FakeTransport.chunks` shows only what was written so far.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import cast

import pytest

from data_plane import proxy
from data_plane.proxy.client import _ClientConnection
from data_plane.proxy.upstream import _UpstreamConnection
from data_plane.runtime import ConfigHolder, compile_config

UPSTREAM_PORT = 19001
POOL_KEY = f"127.0.0.1:{UPSTREAM_PORT}"
ENTITIES: dict[str, list[dict[str, object]]] = {
    "services": [
        {"id": "s1", "name": "svc", "host": "127.0.0.1", "port": UPSTREAM_PORT, "protocol": "http"}
    ],
    "routes": [
        {"id": "r1", "name": "all", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}
    ],
}


class FakeTransport:
    """Records everything written; ``close``/``abort`` only mark it (see ``Harness.settle``).

    ``flush`` is the server's write batch: the proxy queues its writes for the end of
    the event loop's iteration, which here is whenever a test reads ``data`` (every
    read the test fed before is then one iteration).
    """

    def __init__(
        self,
        protocol: asyncio.BaseProtocol,
        peer: tuple[str, int],
        sock: tuple[str, int],
        flush: Callable[[], None],
    ) -> None:
        self.protocol = protocol
        self._flush = flush
        self._extra = {"peername": peer, "sockname": sock}
        self.chunks: list[bytes] = []
        #: Calls of write/writelines so far; set ``fail_writes`` to make them raise.
        self.calls = 0
        self.fail_writes = False
        self.closing = False
        self.aborted = False
        self.lost = False
        self.reading = True

    @property
    def data(self) -> bytes:
        self._flush()
        return b"".join(self.chunks)

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._extra.get(name, default)

    def write(self, data: bytes | memoryview) -> None:
        self._written()
        self.chunks.append(bytes(data))

    def writelines(self, data: Iterable[bytes | memoryview]) -> None:
        self._written()
        self.chunks.extend(bytes(piece) for piece in data)

    def _written(self) -> None:
        if self.fail_writes:
            raise RuntimeError("unable to perform operation: the handler is closed")
        self.calls += 1

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True
        self.aborted = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.closing = True


@dataclass
class Upstream:
    """One upstream connection of the pool and its fake transport."""

    conn: _UpstreamConnection
    transport: FakeTransport

    def feed(self, *reads: bytes) -> None:
        """Deliver ``reads`` as separate reads from the upstream."""
        for data in reads:
            self.conn.data_received(data)

    def feed_bytewise(self, data: bytes) -> None:
        self.feed(*(data[i : i + 1] for i in range(len(data))))

    def close_from_peer(self) -> None:
        """The upstream closed the connection (clean EOF)."""
        self.transport.lost = True
        self.conn.connection_lost(None)


@dataclass
class Client:
    """One client connection and its fake transport."""

    conn: _ClientConnection
    transport: FakeTransport

    @property
    def received(self) -> bytes:
        return self.transport.data


@dataclass
class Harness:
    """The started server plus every fake connection made on it."""

    server: proxy.ProxyServer
    upstreams: dict[int, Upstream] = field(default_factory=dict)
    clients: list[Client] = field(default_factory=list)

    def add_upstream(self) -> Upstream:
        """An open upstream connection to the service's address, idle in the pool."""
        conn = _UpstreamConnection(self.server, POOL_KEY)
        transport = FakeTransport(
            conn, ("127.0.0.1", UPSTREAM_PORT), ("127.0.0.1", 50000), self.server.write_batch.flush
        )
        conn.connection_made(cast(asyncio.BaseTransport, transport))
        assert self.server.pool.release(conn)
        upstream = Upstream(conn, transport)
        self.upstreams[id(conn)] = upstream
        return upstream

    def client(self) -> Client:
        conn = _ClientConnection(self.server)
        transport = FakeTransport(
            conn,
            ("127.0.0.1", 40000 + len(self.clients)),
            ("127.0.0.1", 8000),
            self.server.write_batch.flush,
        )
        conn.connection_made(cast(asyncio.BaseTransport, transport))
        client = Client(conn, transport)
        self.clients.append(client)
        return client

    def request(self, client: Client, raw: bytes) -> Upstream:
        """Send one request; return the pooled upstream connection it was written to."""
        assert self.idle() >= 1, "no idle upstream connection: the proxy would connect for real"
        client.conn.data_received(raw)
        ex = client.conn._queue[-1]
        assert ex.conn is not None and ex.connect_task is None
        upstream = self.upstreams[id(ex.conn)]
        assert upstream.transport.data, "request head not written upstream"
        return upstream

    def _transports(self) -> list[FakeTransport]:
        """Client transports first: losing a client releases its upstream connection."""
        return [c.transport for c in self.clients] + [u.transport for u in self.upstreams.values()]

    def settle(self) -> None:
        """Deliver ``connection_lost(None)`` for every transport the proxy closed."""
        for fake in self._transports():
            if fake.closing and not fake.lost:
                fake.lost = True
                fake.protocol.connection_lost(None)

    def idle(self) -> int:
        """Usable idle upstream connections in the pool."""
        self.settle()
        return self.server.pool.idle_count(POOL_KEY)

    def close_all(self) -> None:
        """Teardown: every connection still open is lost."""
        for fake in self._transports():
            if not fake.lost:
                fake.lost = fake.closing = True
                fake.protocol.connection_lost(None)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    """A started ProxyServer with one idle upstream connection in its pool."""
    holder = ConfigHolder(compile_config(1, "test", ENTITIES))
    server = proxy.ProxyServer(holder, "127.0.0.1", 0, via="ferry-test/1")
    await server.start()
    h = Harness(server)
    h.add_upstream()
    try:
        yield h
    finally:
        h.close_all()
        await server.stop(timeout=1.0)
