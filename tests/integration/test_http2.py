"""HTTP/2 from clients (data_plane/proxy/http2.py), in-process with real backends.

``curl --http2`` over TLS (ALPN) and ``--http2-prior-knowledge`` on h2c; the ``h2``
library as a raw client (tests/support/h2client.py) for multiplexing, flow control with
large bodies both ways, RST_STREAM, GOAWAY on shutdown, and the attack guards (rapid
reset, CONTINUATION, SETTINGS and PING floods); routing, errors, retries and metrics
as over HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

from data_plane.proxy import ClientTimeouts, ProxyServer
from data_plane.proxy.http2 import (
    MAX_HEADER_BLOCK_FRAMES,
    MAX_PINGS_PER_WINDOW,
    MAX_RESETS_PER_WINDOW,
    MAX_SETTINGS_PER_WINDOW,
    Http2Connection,
)
from data_plane.proxy.http2_stream import STREAM_HIGH_WATER
from data_plane.proxy.upstream import _UpstreamConnection
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config
from data_plane.tls_termination import TlsTermination, load_or_create_default_certificate
from ferry_shared.listen import ListenAddress
from tests.support.backends import Backend, refused_port, start_backend
from tests.support.h2client import H2Client, h2_tls_context
from tests.support.polling import wait_for
from tests.support.proxy import body_json, make_config
from tests.support.tls import make_authority

ALL_PATHS = [{"id": "r1", "paths": ["/"], "strip_path": False, "service": {"id": "s1"}}]


async def _start(
    stack: AsyncExitStack, tmp_path: Path, config: RuntimeConfig | None, *, http2: bool = True
) -> ProxyServer:
    """A proxy with a plaintext and an ``ssl`` listener, both with ``http2`` (unless not)."""
    holder = ConfigHolder(config)
    default_pem = load_or_create_default_certificate(tmp_path / "data")
    proxy = ProxyServer(
        holder, "127.0.0.1", 0,
        listen=[ListenAddress("127.0.0.1", 0, http2=http2), ListenAddress("127.0.0.1", 0, ssl=True, http2=http2)],
        tls=TlsTermination(lambda: None, default_pem),
    )
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    return proxy


async def _direct(stack: AsyncExitStack, tmp_path: Path, backend: Backend, **service: Any) -> ProxyServer:
    return await _start(stack, tmp_path, make_config(
        1, direct=("127.0.0.1", backend.port), routes=ALL_PATHS, service=service or None,
    ))


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "-w", "\n%{http_version} %{http_code}", *args],
        capture_output=True, text=True, timeout=30, check=False,
    )


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_speaks_http2_over_tls_alpn_and_h2c_with_prior_knowledge(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    tls = await asyncio.to_thread(_curl, "--http2", "-k", f"https://127.0.0.1:{proxy.tls_port}/echo?x=1")
    body, _, last = tls.stdout.rpartition("\n")
    assert last == "2 200", tls.stderr
    echoed = json.loads(body)
    assert echoed["path_qs"] == "/echo?x=1"
    assert echoed["headers"]["X-Forwarded-Proto"] == "https"
    h2c = await asyncio.to_thread(_curl, "--http2-prior-knowledge", f"http://127.0.0.1:{proxy.port}/echo")
    body, _, last = h2c.stdout.rpartition("\n")
    assert last == "2 200", h2c.stderr
    assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "http"
    # The same listeners still speak HTTP/1.1 to a client that does not offer h2.
    plain = await asyncio.to_thread(_curl, "--http1.1", "-k", f"https://127.0.0.1:{proxy.tls_port}/echo")
    assert plain.stdout.rpartition("\n")[2] == "1.1 200", plain.stderr
    plain = await asyncio.to_thread(_curl, f"http://127.0.0.1:{proxy.port}/echo")
    assert plain.stdout.rpartition("\n")[2] == "1.1 200", plain.stderr


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_a_listener_without_http2_offers_only_http_1_1(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _start(stack, tmp_path, make_config(1, direct=("127.0.0.1", backend.port), routes=ALL_PATHS),
                         http2=False)
    tls = await asyncio.to_thread(_curl, "--http2", "-k", f"https://127.0.0.1:{proxy.tls_port}/echo")
    assert tls.stdout.rpartition("\n")[2] == "1.1 200", tls.stderr
    h2c = await asyncio.to_thread(_curl, "--http2-prior-knowledge", f"http://127.0.0.1:{proxy.port}/echo")
    assert h2c.returncode != 0  # the preface is an HTTP/1.1 request there: 400 and close


async def test_streams_multiplexed_on_one_connection_reach_both_backends(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    one, two = await start_backend(stack, "one"), await start_backend(stack, "two")
    proxy = await _start(stack, tmp_path, make_config(
        1, [(f"127.0.0.1:{one.port}", 100), (f"127.0.0.1:{two.port}", 100)], routes=ALL_PATHS,
    ))
    client = await H2Client.open(stack, proxy.tls_port, tls=h2_tls_context(), server_name="api.test")
    sids = [client.start("GET", f"/echo/{i}", headers=[("x-n", str(i))]) for i in range(20)]
    await client.until(lambda: all(client.streams[s].ended for s in sids))
    seen = set()
    for i, sid in enumerate(sids):
        state = client.streams[sid]
        assert state.status == 200
        echoed = body_json(bytes(state.body))
        headers = {k.lower(): v for k, v in echoed["headers"].items()}
        assert echoed["path_qs"] == f"/echo/{i}" and headers["x-n"] == str(i)
        assert headers["x-forwarded-host"] == "api.test" and headers["x-forwarded-proto"] == "https"
        assert "connection" not in state.headers and "transfer-encoding" not in state.headers
        seen.add(echoed["backend"])
    assert seen == {"one", "two"}
    assert proxy.connections == 1
    assert proxy.metrics.connections_accepted == 1


async def test_no_route_and_a_dead_target_answer_as_over_http_1_1_with_retries(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _start(stack, tmp_path, make_config(
        1, [(f"127.0.0.1:{refused_port()}", 100), (f"127.0.0.1:{backend.port}", 100)],
        routes=[{"id": "r1", "name": "api", "paths": ["/api"], "service": {"id": "s1"}}],
    ))
    client = await H2Client.open(stack, proxy.port)
    missing = await client.request("GET", "/nowhere")
    assert missing.status == 404
    assert body_json(missing.body)["message"] == "no Route matched with those values"
    for _ in range(4):  # round-robin meets the refused target; the retry goes to the live one
        ok = await client.request("GET", "/api/x")
        assert ok.status == 200 and body_json(ok.body)["backend"] == "b"
    head = await client.request("HEAD", "/api/x")
    assert head.status == 200 and head.body == b""
    counts = proxy.metrics.snapshot(proxy.connections)
    assert counts["connections_accepted"] == 1 and counts["connections_active"] == 1
    series = {(row["service"], row["route"]): row for row in counts["series"]}
    assert series[("svc", "api")]["codes"] == {"200": 5}  # the four GETs and the HEAD
    assert series[("", "")]["local_codes"] == {"404": 1}


async def test_all_targets_dead_is_502(stack: AsyncExitStack, tmp_path: Path) -> None:
    proxy = await _start(stack, tmp_path, make_config(
        1, [(f"127.0.0.1:{refused_port()}", 100)], routes=ALL_PATHS, service={"retries": 1},
    ))
    client = await H2Client.open(stack, proxy.port)
    answer = await client.request("GET", "/x")
    assert answer.status == 502


async def test_request_and_response_bodies_larger_than_the_windows(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    body = bytes(range(256)) * (12 * 1024)  # 3 MiB: past the stream and connection windows
    sized = await client.request("POST", "/upload", body=body, headers=[("content-length", str(len(body)))])
    assert sized.status == 200
    assert body_json(sized.body) == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    chunked = await client.request("POST", "/upload", body=body)  # no length: chunked upstream
    assert body_json(chunked.body)["sha256"] == hashlib.sha256(body).hexdigest()
    big = await client.request("GET", f"/download?size={5 * 1024 * 1024}")
    assert big.status == 200 and len(big.body) == 5 * 1024 * 1024


def _buffered(proxy: ProxyServer) -> int:
    """Response bytes the proxy holds for its HTTP/2 clients (streams and transports)."""
    total = 0
    for client in list(proxy._clients):
        if isinstance(client, Http2Connection):
            total += sum(s.pending_size for s in client._streams.values())
            if client._transport is not None:
                total += client._transport.get_write_buffer_size()
    return total


async def test_a_slow_reader_keeps_the_proxys_memory_bounded(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port, auto_ack=False)
    size = 64 * 1024 * 1024
    sid = client.start("GET", f"/download?size={size}")
    state = client.streams[sid]
    await client.until(lambda: len(state.body) >= 65535 - 16384)  # the client's first window

    def upstream_paused() -> bool:
        return any(
            isinstance(c, _UpstreamConnection) and c._paused_for_client
            for c in _upstreams(proxy)
        )

    await wait_for(upstream_paused, timeout=10)
    cap = STREAM_HIGH_WATER + 1024 * 1024
    assert _buffered(proxy) < cap
    # Now read it all: acknowledging reopens the windows and the transfer completes.
    client.auto_ack = True
    client.conn.acknowledge_received_data(len(state.body), sid)
    client.flush()
    peak = 0

    async def read_all() -> None:
        nonlocal peak
        while not state.ended:
            await client.read_some()
            peak = max(peak, _buffered(proxy))

    await asyncio.wait_for(read_all(), 60)
    assert len(state.body) == size
    assert peak < cap


def _upstreams(proxy: ProxyServer) -> list[object]:
    found: list[object] = []
    for client in list(proxy._clients):
        if isinstance(client, Http2Connection):
            for stream in client._streams.values():
                for ex in stream.client._queue:
                    if ex.conn is not None:
                        found.append(ex.conn)
    return found


async def test_rst_stream_mid_response_closes_its_upstream_connection(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port, auto_ack=False)
    sid = client.start("GET", f"/download?size={32 * 1024 * 1024}")
    state = client.streams[sid]
    await client.until(lambda: len(state.body) > 0)
    client.conn.reset_stream(sid, ErrorCodes.CANCEL)
    client.flush()
    # The exchange is abandoned: its upstream connection closed, never pooled.
    await wait_for(lambda: not any(c._streams for c in proxy._clients if isinstance(c, Http2Connection)))
    assert proxy.pool.idle_count() == 0
    again = await H2Client.open(stack, proxy.port)
    answer = await again.request("GET", "/echo")
    assert answer.status == 200
    assert backend.connections == 2  # a fresh connection, not the one cut short


async def _calmed(client: H2Client) -> None:
    await client.read_to_close()
    assert client.goaway == ErrorCodes.ENHANCE_YOUR_CALM


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    for _ in range(MAX_RESETS_PER_WINDOW + 10):
        sid = client.start("GET", "/slow?s=5")
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
    client.flush()
    await _calmed(client)
    await wait_for(lambda: proxy.connections == 0)


async def test_continuation_flood_ends_the_connection(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    for frames, size in ((MAX_HEADER_BLOCK_FRAMES + 4, 10), (6, 16000)):
        client = await H2Client.open(stack, proxy.port)
        block = client.conn.encoder.encode([(":method", "GET"), (":path", "/"), (":scheme", "http")])
        client.send_raw(HeadersFrame(1, data=block).serialize())  # no END_HEADERS
        for _ in range(frames):
            client.send_raw(ContinuationFrame(1, data=b"\x00" * size).serialize())
        await _calmed(client)
    assert backend.requests == []


async def test_settings_flood_ends_the_connection(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    for _ in range(MAX_SETTINGS_PER_WINDOW + 10):
        client.send_raw(SettingsFrame(0, settings={0x3: 100}).serialize())
    await _calmed(client)


async def test_ping_flood_ends_the_connection(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    for n in range(MAX_PINGS_PER_WINDOW + 10):
        client.send_raw(PingFrame(0, opaque_data=n.to_bytes(8, "big")).serialize())
    await _calmed(client)


async def test_a_few_pings_and_settings_are_answered(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    for n in range(10):
        client.conn.ping(n.to_bytes(8, "big"))
    client.flush()
    await client.until(lambda: client.pings_acked == 10)
    assert (await client.request("GET", "/echo")).status == 200


async def test_graceful_stop_sends_goaway_finishes_the_stream_in_flight_and_refuses_new_ones(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    sid = client.start("GET", "/slow?s=0.5")
    await wait_for(lambda: len(backend.requests) == 1)
    stopping = asyncio.create_task(proxy.stop(10.0))
    await client.until(lambda: client.goaway is not None)
    assert client.goaway == ErrorCodes.NO_ERROR and client.goaway_last_stream == sid
    # A stream opened after the GOAWAY is refused: it never reaches the backend.
    late = HeadersFrame(sid + 2, data=client.conn.encoder.encode(
        [(":method", "GET"), (":path", "/late"), (":scheme", "http"), (":authority", "api.test")]
    ), flags=("END_HEADERS", "END_STREAM"))
    client.send_raw(late.serialize())
    state = client.streams[sid]
    await client.until(lambda: state.ended)
    assert state.status == 200 and bytes(state.body) == b"late"
    await asyncio.wait_for(stopping, 10)
    await client.read_to_close()
    assert [r["path_qs"] for r in backend.requests] == ["/slow?s=0.5"]


async def test_malformed_requests_are_reset_and_never_proxied(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    # A value with a line break would split the HTTP/1.1 head it is written into.
    block = client.conn.encoder.encode([
        (":method", "GET"), (":path", "/echo"), (":scheme", "http"), (":authority", "api.test"),
        ("x-evil", "a\r\nx-injected: 1"),
    ])
    frame = HeadersFrame(1, data=block, flags=("END_HEADERS", "END_STREAM"))
    client.send_raw(frame.serialize())
    fine = await H2Client.open(stack, proxy.port)
    assert (await fine.request("GET", "/echo")).status == 200
    assert all("x-injected" not in {k.lower() for k in r["headers"]} for r in backend.requests)
    assert len(backend.requests) == 1



async def test_sni_and_https_only_routes_see_an_http2_tls_stream_as_tls(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _start(stack, tmp_path, make_config(1, direct=("127.0.0.1", backend.port), routes=[
        {"id": "r1", "paths": ["/"], "snis": ["api.test"], "protocols": ["https"], "service": {"id": "s1"}},
        {"id": "r2", "paths": ["/tls-only"], "protocols": ["https"], "service": {"id": "s1"}},
    ]))
    named = await H2Client.open(stack, proxy.tls_port, tls=h2_tls_context(), server_name="api.test")
    assert (await named.request("GET", "/echo")).status == 200
    other = await H2Client.open(stack, proxy.tls_port, tls=h2_tls_context(), server_name="other.test")
    assert (await other.request("GET", "/echo")).status == 404
    assert (await other.request("GET", "/tls-only")).status == 200
    plain = await H2Client.open(stack, proxy.port)
    assert (await plain.request("GET", "/tls-only")).status == 426  # Kong's https_only answer


async def test_idle_connections_and_silent_clients_are_closed(stack: AsyncExitStack, tmp_path: Path) -> None:
    backend = await start_backend(stack, "b")
    holder = ConfigHolder(make_config(1, direct=("127.0.0.1", backend.port), routes=ALL_PATHS))
    proxy = ProxyServer(
        holder, "127.0.0.1", 0, listen=[ListenAddress("127.0.0.1", 0, http2=True)],
        client_keepalive_timeout=0.3, client_timeouts=ClientTimeouts(header=0.3, body=5, send=5),
    )
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    idle = await H2Client.open(stack, proxy.port)
    assert (await idle.request("GET", "/echo")).status == 200
    await idle.read_to_close()
    assert idle.goaway == ErrorCodes.NO_ERROR
    # A client that sends nothing (not even the first bytes that tell the protocol).
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    stack.callback(writer.close)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    # A client that opened HTTP/2 and never asks anything.
    silent = await H2Client.open(stack, proxy.port)
    await silent.read_to_close()
    await wait_for(lambda: proxy.connections == 0)


async def test_a_head_over_the_http_1_1_limit_is_431_and_one_over_the_hard_cap_ends_the_connection(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "b")
    proxy = await _direct(stack, tmp_path, backend)
    client = await H2Client.open(stack, proxy.port)
    big = [(f"x-h{i}", "v" * 2000) for i in range(20)]  # 40 KiB: over 32 KiB, under 64 KiB
    answer = await client.request("GET", "/echo", headers=big)
    assert answer.status == 431
    assert (await client.request("GET", "/echo")).status == 200  # the connection lives on
    bomb = await H2Client.open(stack, proxy.port)
    bomb.start("GET", "/echo", headers=[(f"x-h{i}", "v" * 8000) for i in range(10)])  # 80 KiB
    await _calmed(bomb)
    assert len(backend.requests) == 1


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_a_certificate_chosen_by_sni_still_offers_h2_on_http2_listeners_only(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "b")
    authority = make_authority(tmp_path / "ca", "Ferry Test CA")
    pair = authority.issue(tmp_path / "certs", "api", ["api.test"])
    config = compile_config(1, "h1", {
        "certificates": [{"id": "c1", "cert": pair.cert.read_text(), "key": pair.key.read_text()}],
        "snis": [{"id": "n1", "name": "api.test", "certificate": {"id": "c1"}}],
        "services": [{"id": "s1", "name": "svc", "host": "127.0.0.1", "port": backend.port}],
        "routes": [{"id": "r1", "paths": ["/"], "service": {"id": "s1"}}],
    })
    holder = ConfigHolder(config)
    proxy = ProxyServer(
        holder, "127.0.0.1", 0,
        listen=[ListenAddress("127.0.0.1", 0, ssl=True, http2=True), ListenAddress("127.0.0.1", 0, ssl=True)],
        tls=TlsTermination(lambda: holder.current.server_certificates if holder.current else None,
                           load_or_create_default_certificate(tmp_path / "data")),
    )
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    (_, h2_port), (_, h1_port) = proxy.bound()

    def curl(port: int) -> str:
        done = _curl("--http2", "--cacert", str(authority.pair.cert),
                     "--resolve", f"api.test:{port}:127.0.0.1", f"https://api.test:{port}/echo")
        assert done.returncode == 0, done.stderr  # verified: the SNI certificate was served
        return done.stdout.rpartition("\n")[2]

    assert await asyncio.to_thread(curl, h2_port) == "2 200"
    assert await asyncio.to_thread(curl, h1_port) == "1.1 200"
