"""gRPC proxying (data_plane/proxy/grpc_proxy.py): grpcio clients through an in-process
proxy with an ``http2`` listener (h2c) to real grpcio targets: unary and streaming
calls, statuses and trailers passed through, deadlines, the proxy's own errors as
gRPC statuses, passive health, round-robin.

Nothing asserts a duration: tests poll for a state with a deadline.
"""

from __future__ import annotations

import json
import os
import struct
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest

from data_plane.access_log import AccessLog
from data_plane.h2_upstream import H2Target
from data_plane.health.supervisor import HealthSupervisor
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config
from ferry_shared.listen import ListenAddress
from tests.support.backends import refused_port
from tests.support.grpc_servers import GrpcProcess, GrpcTarget
from tests.support.h2client import H2Client
from tests.support.polling import wait_for
from tests.support.proxy import client as http_client
from tests.support.tls import make_authority

GRPC_ROUTE = {"id": "r1", "protocols": ["grpc"], "paths": ["/test.Raw/"], "service": {"id": "s1"}}


def grpc_config(
    targets: list[str], *, healthchecks: dict[str, Any] | None = None,
    routes: list[dict[str, Any]] | None = None, **service: Any,
) -> RuntimeConfig:
    """Service "s1" (protocol grpc) over upstream "u1" with ``targets``, and a gRPC route."""
    upstream: dict[str, Any] = {"id": "u1", "name": "backends"}
    if healthchecks is not None:
        upstream["healthchecks"] = healthchecks
    return compile_config(1, "h1", {
        "upstreams": [upstream],
        "targets": [{"id": f"t{i}", "target": t, "upstream": {"id": "u1"}} for i, t in enumerate(targets)],
        "services": [{"id": "s1", "host": "backends", "port": 80, "protocol": "grpc", "retries": 2, **service}],
        "routes": routes if routes is not None else [GRPC_ROUTE],
    })


class Gateway:
    """The proxy (one h2c-capable plaintext listener) and a health supervisor."""

    def __init__(self, access_log: AccessLog | None = None) -> None:
        self.holder = ConfigHolder()
        self.health = HealthSupervisor()
        self.proxy = ProxyServer(
            self.holder, "127.0.0.1", 0, listen=[ListenAddress("127.0.0.1", 0, http2=True)],
            access_log=access_log,
        )

    async def start(self, stack: AsyncExitStack, config: RuntimeConfig) -> Gateway:
        self.holder.current = config
        self.health.apply(config)
        await self.proxy.start()
        stack.push_async_callback(self.proxy.stop, 2.0)
        stack.push_async_callback(self.health.stop)
        return self

    async def channel(self, stack: AsyncExitStack) -> grpc.aio.Channel:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.proxy.port}")
        stack.push_async_callback(channel.close)
        return channel

    def state(self, key: str) -> tuple[str, str]:
        config = self.holder.current
        assert config is not None
        checker = config.upstreams["u1"].health
        assert checker is not None
        return next((v.state, v.reason) for v in checker.view() if v.address.key == key)


async def _one_target(stack: AsyncExitStack, **service: Any) -> tuple[GrpcTarget, Gateway, grpc.aio.Channel]:
    target = await GrpcTarget().start(stack)
    gateway = await Gateway().start(stack, grpc_config([target.key], **service))
    return target, gateway, await gateway.channel(stack)


async def test_a_unary_call_is_proxied_with_forwarded_headers(stack: AsyncExitStack) -> None:
    _, gateway, channel = await _one_target(stack)
    assert await channel.unary_unary("/test.Raw/Echo")(b"hello", timeout=10) == b"hello"
    meta = json.loads(await channel.unary_unary("/test.Raw/Meta")(b"", metadata=(("x-custom", "1"),), timeout=10))
    assert meta["x-custom"] == "1"
    assert meta["x-forwarded-for"] == "127.0.0.1" and meta["x-forwarded-proto"] == "http"
    series = gateway.proxy.metrics.for_route(gateway.holder.current.router.match(  # type: ignore[union-attr]
        b"POST", None, b"/test.Raw/Echo").route)
    assert series.codes == {200: 2}


async def test_client_streaming_server_streaming_and_bidirectional_calls(stack: AsyncExitStack) -> None:
    _, _, channel = await _one_target(stack)
    collected = await channel.stream_unary("/test.Raw/Collect")(iter([b"a", b"b", b"c"]), timeout=10)
    assert collected == b"a,b,c"
    counted = [m async for m in channel.unary_stream("/test.Raw/Count")(b"500", timeout=10)]
    assert counted == [str(i).encode() for i in range(500)]
    chat = channel.stream_stream("/test.Raw/Chat")(timeout=10)
    for word in (b"x", b"y"):
        await chat.write(word)
        assert await chat.read() == b"re:" + word  # a reply per message, before the next
    await chat.done_writing()
    assert await chat.read() == grpc.aio.EOF
    assert await chat.code() == grpc.StatusCode.OK


async def test_large_messages_both_ways_pass_under_flow_control(stack: AsyncExitStack) -> None:
    _, _, channel = await _one_target(stack)
    big = bytes(range(256)) * 4096  # 1 MiB: several windows each way
    assert await channel.unary_unary("/test.Raw/Echo")(big, timeout=30) == big


async def test_a_non_ok_status_and_its_message_pass_through_in_trailers(stack: AsyncExitStack) -> None:
    _, _, channel = await _one_target(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Fail")("no such thing é".encode(), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no such thing é"


async def test_a_deadline_is_forwarded_and_when_it_expires_the_target_call_is_cancelled(
    stack: AsyncExitStack,
) -> None:
    target, _, channel = await _one_target(stack)
    # The deadline reaches the target (grpc-core rounds timeouts both ways, so only
    # its presence is asserted); without one, none is invented.
    meta = json.loads(await channel.unary_unary("/test.Raw/Meta")(b"", timeout=30))
    assert meta["time_remaining"] is not None and meta["time_remaining"] > 0
    meta = json.loads(await channel.unary_unary("/test.Raw/Meta")(b""))
    assert meta["time_remaining"] is None
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Hold")(b"x", timeout=0.5)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The target's call ended without being released: the proxy reset its stream.
    await wait_for(lambda: target.held == 0, message="the held call cancelled at the target")
    assert not target.release.is_set()


async def test_a_call_matching_no_route_is_not_found(stack: AsyncExitStack) -> None:
    _, _, channel = await _one_target(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/other.Service/Echo")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no Route matched with those values"


async def test_no_reachable_target_is_unknown_after_retries_and_no_healthy_one_unavailable(
    stack: AsyncExitStack,
) -> None:
    dead = f"127.0.0.1:{refused_port()}"
    # The first call's three tries (retries: 2) fail to connect: the third failure
    # makes the target unhealthy.
    checks = {"passive": {"unhealthy": {"tcp_failures": 3}}}
    gateway = await Gateway().start(stack, grpc_config([dead], healthchecks=checks))
    channel = await gateway.channel(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Echo")(b"x", timeout=10)
    # Kong's table: 502 is UNKNOWN.
    assert caught.value.code() == grpc.StatusCode.UNKNOWN
    assert gateway.state(dead)[0] == "UNHEALTHY"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Echo")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "failure to get a peer from the ring-balancer"


async def test_a_target_killed_mid_call_is_unavailable_and_a_passive_tcp_failure(stack: AsyncExitStack) -> None:
    process = await GrpcProcess().start(stack)
    key = f"127.0.0.1:{process.port}"
    checks = {"passive": {"unhealthy": {"tcp_failures": 1}}}
    gateway = await Gateway().start(stack, grpc_config([key], healthchecks=checks))
    channel = await gateway.channel(stack)
    call = channel.unary_unary("/test.Raw/Hold")(b"x", timeout=30)
    target = H2Target("127.0.0.1", process.port)

    def reached() -> bool:
        pool = gateway.proxy.grpc_pool
        return pool is not None and any(c.open_streams for c in pool.connections(target))

    await wait_for(reached, message="the call reached the target")
    await process.kill()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    state, reason = gateway.state(key)
    assert state == "UNHEALTHY" and "tcp" in reason, reason


async def test_two_targets_take_calls_round_robin(stack: AsyncExitStack) -> None:
    one = await GrpcTarget(name="one").start(stack)
    two = await GrpcTarget(name="two").start(stack)
    gateway = await Gateway().start(stack, grpc_config([one.key, two.key]))
    channel = await gateway.channel(stack)
    names = [await channel.unary_unary("/test.Raw/Who")(b"", timeout=10) for _ in range(4)]
    assert sorted(names) == [b"one", b"one", b"two", b"two"]
    assert names[0] != names[1]


async def test_a_non_grpc_request_on_a_grpc_route_is_415(stack: AsyncExitStack) -> None:
    _, gateway, _ = await _one_target(stack)
    client = await H2Client.open(stack, gateway.proxy.port)
    answer = await client.request("POST", "/test.Raw/Echo", headers=[("content-type", "application/json")], body=b"{}")
    assert answer.status == 415
    assert json.loads(answer.body) == {"message": "Non-gRPC request matched gRPC route"}


async def test_a_plaintext_call_on_a_grpcs_only_route_is_refused(stack: AsyncExitStack) -> None:
    target = await GrpcTarget().start(stack)
    route = {**GRPC_ROUTE, "protocols": ["grpcs"]}
    gateway = await Gateway().start(stack, grpc_config([target.key], routes=[route]))
    channel = await gateway.channel(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Echo")(b"x", timeout=10)
    assert caught.value.code() == grpc.StatusCode.CANCELLED
    assert caught.value.details() == "gRPC request matched gRPCs route"


async def test_http_1_1_on_a_grpc_route_is_426_for_grpc_and_415_otherwise(stack: AsyncExitStack) -> None:
    _, gateway, _ = await _one_target(stack)
    session = await http_client(stack)
    url = f"http://127.0.0.1:{gateway.proxy.port}/test.Raw/Echo"
    async with session.post(url, data=b"x", headers={"Content-Type": "application/grpc"}) as answer:
        assert answer.status == 426
        assert answer.headers["Upgrade"] == "HTTP/2"
        assert await answer.json() == {"message": "Please use HTTP2 protocol"}
    async with session.post(url, data=b"x", headers={"Content-Type": "text/plain"}) as answer:
        assert answer.status == 415
        assert await answer.json() == {"message": "Non-gRPC request matched gRPC route"}


def _grpc_message(payload: bytes) -> bytes:
    """gRPC's length-prefixed message framing (not compressed)."""
    return struct.pack(">BI", 0, len(payload)) + payload


async def test_the_proxy_enforces_the_deadline_itself_and_resets_the_target_stream(
    stack: AsyncExitStack,
) -> None:
    """A raw HTTP/2 client that never cancels: the proxy's own deadline answers."""
    target, gateway, _ = await _one_target(stack)
    client = await H2Client.open(stack, gateway.proxy.port)
    sid = client.start("POST", "/test.Raw/Hold", end=False, headers=[
        ("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "300m"),
    ])
    await client.send_body(sid, _grpc_message(b"x"))
    state = client.streams[sid]
    await client.until(lambda: state.ended or state.reset is not None)
    assert state.reset is None and state.status == 200
    assert state.headers["grpc-status"] == "4"  # DEADLINE_EXCEEDED, trailers-only
    await wait_for(lambda: target.held == 0, message="the target's call reset by the proxy")
    assert not target.release.is_set()


async def test_a_call_the_client_cancels_is_cancelled_at_the_target(stack: AsyncExitStack) -> None:
    target, _, channel = await _one_target(stack)
    call = channel.unary_unary("/test.Raw/Hold")(b"x", timeout=30)
    await wait_for(lambda: target.held == 1, message="the call held at the target")
    call.cancel()
    await wait_for(lambda: target.held == 0, message="the target's call cancelled")
    assert not target.release.is_set()


async def test_grpcs_services_reach_tls_targets_over_alpn_h2(stack: AsyncExitStack, tmp_path: Path) -> None:
    authority = make_authority(tmp_path, "ca")
    pair = authority.issue(tmp_path, "target", ["localhost"], ip_addresses=["127.0.0.1"])
    target = await GrpcTarget(certificate=pair, name="secure").start(stack)
    gateway = await Gateway().start(stack, grpc_config([target.key], protocol="grpcs"))
    channel = await gateway.channel(stack)
    assert await channel.unary_unary("/test.Raw/Who")(b"", timeout=10) == b"secure"
    counted = [m async for m in channel.unary_stream("/test.Raw/Count")(b"3", timeout=10)]
    assert counted == [b"0", b"1", b"2"]


async def test_calls_and_the_proxys_own_answers_are_in_the_access_log(stack: AsyncExitStack) -> None:
    read_fd, write_fd = os.pipe()
    stack.callback(os.close, read_fd)
    stack.callback(os.close, write_fd)
    access_log = AccessLog("json", component="data-plane", fd=write_fd)
    target = await GrpcTarget().start(stack)
    gateway = await Gateway(access_log).start(stack, grpc_config([target.key]))
    channel = await gateway.channel(stack)
    assert await channel.unary_unary("/test.Raw/Echo")(b"x", timeout=10) == b"x"
    with pytest.raises(grpc.aio.AioRpcError):
        await channel.unary_unary("/nowhere/Echo")(b"x", timeout=10)
    access_log.flush()
    proxied, local = (json.loads(line) for line in os.read(read_fd, 1 << 16).decode().splitlines())
    assert (proxied["status"], proxied["source"], proxied["upstream"]) == (200, "upstream", target.key)
    assert (local["status"], local["source"], local["upstream"]) == (404, "ferry", None)


async def test_a_call_ending_unavailable_counts_as_a_503_for_passive_health(stack: AsyncExitStack) -> None:
    one, two = await GrpcTarget(name="one").start(stack), await GrpcTarget(name="two").start(stack)
    checks = {"passive": {"unhealthy": {"http_failures": 1, "http_statuses": [503]}}}
    gateway = await Gateway().start(stack, grpc_config([one.key, two.key], healthchecks=checks))
    channel = await gateway.channel(stack)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Refuse")(b"", timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE  # the target's, passed through
    assert caught.value.details() == "going away"
    states = {key: gateway.state(key) for key in (one.key, two.key)}
    unhealthy = [key for key, (state, _) in states.items() if state == "UNHEALTHY"]
    assert len(unhealthy) == 1, states
    assert "503" in states[unhealthy[0]][1], states
