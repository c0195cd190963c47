"""The HTTP/2 upstream client against a real grpcio server: gRPC framing sent by hand
(5-byte prefix + message) over pooled, multiplexed streams, trailers read back, flow
control both ways, TLS with ALPN h2 and a client certificate, cancel, a server that
goes away. No timing assertions: waits poll a state with a deadline."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from data_plane.h2_upstream import H2Stream, H2StreamError, H2Target, H2UpstreamPool
from data_plane.health.grpc_probe import grpc_frame, grpc_messages
from data_plane.upstream_tls import TlsEntities
from tests.support.grpc_servers import NOT_SERVING, GrpcProcess, GrpcTarget
from tests.support.polling import wait_for
from tests.support.tls import entity_pems, make_authority

TIMEOUT = 10.0


async def pool_of(stack: AsyncExitStack, **options: float | int) -> H2UpstreamPool:
    pool = H2UpstreamPool(**options)  # type: ignore[arg-type]
    stack.callback(pool.close)
    return pool


def request(path: str, authority: str, scheme: bytes = b"http") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"POST"),
        (b":scheme", scheme),
        (b":path", path.encode()),
        (b":authority", authority.encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


async def start_call(
    pool: H2UpstreamPool, target: H2Target, path: str, message: bytes
) -> H2Stream:
    stream = await pool.open_stream(
        target, request(path, f"{target.host}:{target.port}", b"https" if target.tls else b"http"),
        connect_timeout=TIMEOUT,
    )
    await stream.send(grpc_frame(message))
    await stream.end()
    return stream


async def finish(stream: H2Stream) -> tuple[dict[bytes, bytes], list[bytes], dict[bytes, bytes]]:
    async with asyncio.timeout(TIMEOUT):
        headers = dict(await stream.response())
        body = await stream.read_all()
    return headers, grpc_messages(body), dict(stream.trailers or ())


async def call(
    pool: H2UpstreamPool, target: H2Target, path: str, message: bytes
) -> tuple[dict[bytes, bytes], list[bytes], dict[bytes, bytes]]:
    return await finish(await start_call(pool, target, path, message))


async def test_a_unary_call_answers_its_message_and_grpc_status_trailers(stack: AsyncExitStack) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    check = health_pb2.HealthCheckRequest(service="").SerializeToString()

    headers, messages, trailers = await call(pool, target, "/grpc.health.v1.Health/Check", check)
    assert headers[b":status"] == b"200"
    assert headers[b"content-type"] == b"application/grpc"
    assert [health_pb2.HealthCheckResponse.FromString(m).status for m in messages] == [
        health_pb2.HealthCheckResponse.SERVING
    ]
    assert trailers[b"grpc-status"] == b"0"

    await server.set(NOT_SERVING)
    _, messages, _ = await call(pool, target, "/grpc.health.v1.Health/Check", check)
    assert health_pb2.HealthCheckResponse.FromString(messages[0]).status == NOT_SERVING
    assert len(pool.connections(target)) == 1  # the second call reused the connection


async def test_an_unknown_method_is_a_trailers_only_answer(stack: AsyncExitStack) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    headers, messages, trailers = await call(
        pool, H2Target("127.0.0.1", server.port), "/test.Raw/Nope", b"x"
    )
    assert messages == [] and trailers == {}
    assert headers[b"grpc-status"] == b"12"  # UNIMPLEMENTED, in the headers


async def test_a_server_streaming_call_delivers_every_message_then_trailers(
    stack: AsyncExitStack,
) -> None:
    server = await GrpcTarget().start(stack)
    # A stream window smaller than the answer: the server waits for this side's reads.
    pool = await pool_of(stack, stream_window=1024, connection_window=65535)
    _, messages, trailers = await call(
        pool, H2Target("127.0.0.1", server.port), "/test.Raw/Count", b"3000"
    )
    assert messages == [str(i).encode() for i in range(3000)]
    assert trailers[b"grpc-status"] == b"0"


async def test_a_request_larger_than_the_peers_window_is_sent_under_flow_control(
    stack: AsyncExitStack,
) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    big = bytes(range(256)) * 4096  # 1 MiB, far past HTTP/2's initial 64 KiB window
    _, messages, trailers = await call(pool, H2Target("127.0.0.1", server.port), "/test.Raw/Echo", big)
    assert messages == [big]
    assert trailers[b"grpc-status"] == b"0"


async def test_concurrent_streams_share_one_connection(stack: AsyncExitStack) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    streams = [await start_call(pool, target, "/test.Raw/Hold", str(i).encode()) for i in range(10)]
    await wait_for(lambda: server.held == 10, message="10 calls held by the server")
    assert len(pool.connections(target)) == 1
    assert pool.connections(target)[0].open_streams == 10

    server.release.set()
    answers = await asyncio.gather(*(finish(s) for s in streams))
    assert [messages for _, messages, _ in answers] == [[str(i).encode()] for i in range(10)]
    assert pool.connections(target)[0].open_streams == 0


async def test_a_connection_at_the_peers_stream_limit_makes_the_pool_open_another(
    stack: AsyncExitStack,
) -> None:
    server = await GrpcTarget(max_concurrent_streams=2).start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    streams = [await start_call(pool, target, "/test.Raw/Hold", b"x") for _ in range(5)]
    await wait_for(lambda: server.held == 5, message="5 calls held by the server")
    assert sorted(c.open_streams for c in pool.connections(target)) == [1, 2, 2]
    assert {c.max_streams for c in pool.connections(target)} == {2}
    server.release.set()
    for stream in streams:
        _, _, trailers = await finish(stream)
        assert trailers[b"grpc-status"] == b"0"


async def test_cancel_resets_the_stream_and_frees_its_slot(stack: AsyncExitStack) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    stream = await start_call(pool, target, "/test.Raw/Hold", b"x")
    await wait_for(lambda: server.held == 1, message="the call held")
    stream.cancel()
    assert pool.connections(target)[0].open_streams == 0
    await wait_for(lambda: server.held == 0, message="the server saw the RST_STREAM")
    with pytest.raises(H2StreamError, match="cancelled"):
        await stream.read()
    # The connection still serves.
    _, messages, _ = await call(pool, target, "/test.Raw/Echo", b"after")
    assert messages == [b"after"]


async def test_a_killed_server_fails_the_open_streams(stack: AsyncExitStack) -> None:
    server = await GrpcProcess().start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    streams = [await start_call(pool, target, "/test.Raw/Hold", b"x") for _ in range(3)]
    await server.kill()
    for stream in streams:
        with pytest.raises(H2StreamError, match="lost"):
            async with asyncio.timeout(TIMEOUT):
                await stream.response()
    await wait_for(lambda: not pool.connections(target), message="the dead connection dropped")


async def test_a_graceful_goaway_lets_the_streams_it_covers_finish(stack: AsyncExitStack) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    streams = [await start_call(pool, target, "/test.Raw/Hold", str(i).encode()) for i in range(3)]
    await wait_for(lambda: server.held == 3, message="3 calls held")
    stopping = asyncio.create_task(server.server.stop(grace=TIMEOUT))  # GOAWAY, then waits
    await wait_for(lambda: not pool.connections(target)[0].usable, message="GOAWAY received")
    server.release.set()
    answers = [await finish(stream) for stream in streams]
    assert [(m, t[b"grpc-status"]) for _, m, t in answers] == [
        ([str(i).encode()], b"0") for i in range(3)
    ]
    await stopping
    await wait_for(lambda: not pool.connections(target), message="the connection closed")


async def test_a_server_stopping_without_grace_answers_the_open_calls_unavailable(
    stack: AsyncExitStack,
) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port)
    streams = [await start_call(pool, target, "/test.Raw/Hold", b"x") for _ in range(3)]
    await wait_for(lambda: server.held == 3, message="3 calls held")
    await server.server.stop(None)
    for stream in streams:
        headers, _, _ = await finish(stream)
        assert headers[b"grpc-status"] == b"14"  # UNAVAILABLE: grpcio cancelled them


async def test_an_idle_connection_is_closed_after_the_idle_timeout(stack: AsyncExitStack) -> None:
    server = await GrpcTarget().start(stack)
    pool = await pool_of(stack, idle_timeout=0.05)
    target = H2Target("127.0.0.1", server.port)
    await call(pool, target, "/test.Raw/Echo", b"x")
    await wait_for(lambda: not pool.connections(target), message="the idle connection closed")


async def test_tls_with_alpn_h2_presents_the_client_certificate(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    ca = make_authority(tmp_path, "ca")
    leaf = ca.issue(tmp_path, "greeter.test")
    client = ca.issue(tmp_path, "ferry-client")
    server = await GrpcTarget(certificate=leaf, client_ca=ca.pair.cert).start(stack)
    entities = TlsEntities(
        [{"id": "c1", **entity_pems(client)}], [{"id": "ca1", "cert": ca.pem()}]
    )
    tls = entities.for_service(
        verify=True, depth=None, ca_ids=["ca1"], client_certificate_id="c1", alpn=("h2",)
    )
    http11 = entities.for_service(
        verify=True, depth=None, ca_ids=["ca1"], client_certificate_id="c1"
    )
    assert http11 is not tls and http11.pool_prefix != tls.pool_prefix
    pool = await pool_of(stack)
    target = H2Target("127.0.0.1", server.port, tls=tls, server_name="greeter.test")
    _, messages, trailers = await call(pool, target, "/test.Raw/Echo", b"over tls")
    assert messages == [b"over tls"] and trailers[b"grpc-status"] == b"0"

    # Verification is real: a name the certificate does not carry fails the connect.
    wrong = H2Target("127.0.0.1", server.port, tls=tls, server_name="other.test")
    with pytest.raises(OSError):
        await pool.open_stream(wrong, request("/test.Raw/Echo", "other.test"), connect_timeout=TIMEOUT)
