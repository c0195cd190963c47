"""Overload caps through the real proxy (data_plane/overload.py): past ``max_requests``
or ``max_pending_requests`` the proxy answers 503 with ``X-Ferry-Overloaded: true`` at
once, nothing of a refused request reaches a target, a target at its cap is passed over
for another one, every count returns to zero, and the overflow is counted.

Targets are real aiohttp servers whose ``/hold`` requests wait until the test opens
their gate, so "a target busy with N requests" is a state the test sets, not a timing.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import grpc
import pytest

from data_plane.overload import OverloadGuard
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config
from ferry_shared.listen import ListenAddress
from tests.support.grpc_servers import GrpcTarget
from tests.support.holding_backend import HoldingBackend
from tests.support.polling import wait_for
from tests.support.proxy import HealthGateway, client, connect, read_response


def caps_config(
    targets: list[str], *, version: int = 1, service: dict[str, Any] | None = None,
    healthchecks: dict[str, Any] | None = None, **upstream: Any,
) -> RuntimeConfig:
    """Upstream "u1" (``upstream`` fields: the caps) over ``targets``; service "s1" on
    it (5 retries, ``service`` fields); a route sending every path there."""
    return compile_config(
        version,
        f"h{version}",
        {
            "upstreams": [
                {"id": "u1", "name": "backends", "healthchecks": healthchecks or {}, **upstream}
            ],
            "targets": [
                {"id": f"t{i}", "target": t, "upstream": {"id": "u1"}} for i, t in enumerate(targets)
            ],
            "services": [
                {"id": "s1", "host": "backends", "port": 80, "retries": 5, **(service or {})}
            ],
            "routes": [{"id": "r1", "paths": ["/"], "service": {"id": "s1"}, "strip_path": False}],
        },
    )


def guard_of(gw: HealthGateway) -> OverloadGuard:
    cfg = gw.holder.current
    assert cfg is not None
    guard = cfg.upstreams["u1"].overload
    assert guard is not None
    return guard


def counts(gw: HealthGateway) -> dict[str, tuple[int, int, int]]:
    """Per target: (requests, connections, pending), only those not all zero."""
    return {
        key: (load.requests, load.connections, load.pending)
        for key, load in guard_of(gw).loads().items()
        if load.requests or load.connections or load.pending
    }


async def get(session: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
    async with session.get(url, **kwargs) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), json.loads(body) if body else None


def assert_overloaded(answer: tuple[int, dict[str, str], Any]) -> None:
    status, headers, body = answer
    assert status == 503
    assert headers.get("X-Ferry-Overloaded") == "true"
    assert body == {"message": "upstream overloaded"}


async def test_past_max_requests_a_request_is_answered_503_overloaded_and_never_sent(
    stack: AsyncExitStack,
) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config([backend.key], max_requests=2))
    session = await client(stack)
    held = [asyncio.create_task(get(session, gw.url + f"/hold/{i}")) for i in range(2)]
    await wait_for(lambda: len(backend.seen) == 2, message="two requests held by the target")
    assert counts(gw) == {backend.key: (2, 0, 0)}

    assert_overloaded(await get(session, gw.url + "/refused"))
    assert_overloaded(await get(session, gw.url + "/refused-too"))
    assert backend.seen == ["/hold/0", "/hold/1"] or backend.seen == ["/hold/1", "/hold/0"]

    backend.gate.set()
    assert [a[0] for a in await asyncio.gather(*held)] == [200, 200]
    await wait_for(lambda: counts(gw) == {}, message="every count back to zero")
    assert gw.proxy.metrics.overflows == {("backends", "max_requests"): 2}
    # The overload 503s were the proxy's own answers, not a verdict on the target:
    # the route's series counts them as local 503s, and the target takes requests.
    series = gw.proxy.metrics.snapshot(0)["series"]
    assert sum(s["local_codes"].get("503", 0) for s in series) == 2
    status, headers, body = await get(session, gw.url + "/after")
    assert status == 200 and "X-Ferry-Overloaded" not in headers


async def test_a_target_at_max_requests_is_passed_over_for_another_before_refusing(
    stack: AsyncExitStack,
) -> None:
    a = await HoldingBackend("a").start(stack)
    b = await HoldingBackend("b").start(stack)
    gw = HealthGateway()
    # One hash key: without the cap every request would go to the same target.
    await gw.start(stack, caps_config(
        [a.key, b.key], algorithm="consistent-hashing", hash_on="header",
        hash_on_header="x-key", max_requests=1,
    ))
    session = await client(stack)
    first = asyncio.create_task(get(session, gw.url + "/hold/1", headers={"x-key": "hot"}))
    await wait_for(lambda: len(a.seen) + len(b.seen) == 1, message="the first request held")
    owner, other = (a, b) if a.seen else (b, a)
    second = asyncio.create_task(get(session, gw.url + "/hold/2", headers={"x-key": "hot"}))
    await wait_for(lambda: other.seen == ["/hold/2"], message="the second request on the other target")
    assert owner.seen == ["/hold/1"]
    assert counts(gw) == {a.key: (1, 0, 0), b.key: (1, 0, 0)}
    # Both at their cap: the third is refused, and reaches neither.
    assert_overloaded(await get(session, gw.url + "/hold/3", headers={"x-key": "hot"}))
    assert owner.seen == ["/hold/1"] and other.seen == ["/hold/2"]
    a.gate.set()
    b.gate.set()
    assert [r[2]["backend"] for r in await asyncio.gather(first, second)] == [owner.name, other.name]
    await wait_for(lambda: counts(gw) == {}, message="every count back to zero")
    # The pass-over was not a retry: the key's owner takes the next request again.
    assert (await get(session, gw.url + "/x", headers={"x-key": "hot"}))[2]["backend"] == owner.name
    assert gw.proxy.metrics.overflows == {("backends", "max_requests"): 1}


async def test_past_max_pending_requests_a_request_is_answered_503_at_once(
    stack: AsyncExitStack,
) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config(
        [backend.key], max_connections=1, max_pending_requests=1,
        service={"connect_timeout": 60_000},
    ))
    session = await client(stack)
    first = asyncio.create_task(get(session, gw.url + "/hold/1"))
    await wait_for(lambda: backend.seen == ["/hold/1"], message="the first request held")
    # The one connection is busy: the second request waits for it (pending)...
    second = asyncio.create_task(get(session, gw.url + "/after-1"))
    await wait_for(lambda: counts(gw) == {backend.key: (2, 1, 1)}, message="one pending try")
    # ...and the third finds the pending queue full: refused at once, never sent.
    assert_overloaded(await get(session, gw.url + "/refused"))
    assert not second.done()
    assert backend.seen == ["/hold/1"]
    backend.gate.set()
    # The first request's connection is handed to the pending one: still one connection.
    assert [r[0] for r in await asyncio.gather(first, second)] == [200, 200]
    assert backend.seen == ["/hold/1", "/after-1"]
    assert len(backend.transports) == 1
    assert gw.proxy.metrics.overflows == {("backends", "max_pending_requests"): 1}
    # The idle pooled connection still counts against max_connections...
    await wait_for(lambda: counts(gw) == {backend.key: (0, 1, 0)}, message="one idle connection")
    # ...until it closes (the target goes away): then every count is zero.
    await backend.stop()
    await wait_for(lambda: counts(gw) == {}, message="every count back to zero")


async def test_a_pending_request_waits_at_most_the_connect_timeout_then_is_overloaded(
    stack: AsyncExitStack,
) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config(
        [backend.key], max_connections=1, service={"connect_timeout": 200},
        healthchecks={"passive": {"unhealthy": {"tcp_failures": 1, "timeouts": 1}}},
    ))
    session = await client(stack)
    first = asyncio.create_task(get(session, gw.url + "/hold/1"))
    await wait_for(lambda: backend.seen == ["/hold/1"], message="the first request held")
    # The connection stays busy past the connect timeout: the waiting request is
    # answered 503 overloaded (not 504, not retried), and nothing of it was sent.
    assert_overloaded(await get(session, gw.url + "/waited"))
    assert backend.seen == ["/hold/1"]
    assert gw.proxy.metrics.overflows == {("backends", "max_connections"): 1}
    # No verdict on the target: it stays healthy despite tcp_failures/timeouts = 1.
    assert gw.state(backend.key) == "HEALTHY"
    backend.gate.set()
    assert (await first)[0] == 200
    await wait_for(lambda: counts(gw) == {backend.key: (0, 1, 0)}, message="one idle connection")


async def test_counts_return_to_zero_when_clients_go_away_mid_request_or_while_pending(
    stack: AsyncExitStack,
) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config(
        [backend.key], max_connections=1, max_requests=5, service={"connect_timeout": 60_000},
    ))
    port = gw.proxy.port
    # A client whose request the target holds, and one whose request is pending.
    reader1, writer1 = await connect(stack, port)
    writer1.write(b"GET /hold/1 HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: backend.seen == ["/hold/1"], message="the first request held")
    reader2, writer2 = await connect(stack, port)
    writer2.write(b"GET /pending HTTP/1.1\r\nHost: x\r\n\r\n")
    await wait_for(lambda: counts(gw) == {backend.key: (2, 1, 1)}, message="one pending try")
    writer2.close()  # the pending client goes away
    await wait_for(lambda: counts(gw) == {backend.key: (1, 1, 0)}, message="the pending try gone")
    writer1.close()  # the held client goes away: its upstream connection is dropped
    await wait_for(lambda: counts(gw) == {}, message="every count back to zero")
    assert backend.seen == ["/hold/1"]
    # The slots were released, not leaked: new requests get connections.
    backend.gate.set()
    session = await client(stack)
    results = await asyncio.gather(*(get(session, gw.url + f"/n/{i}") for i in range(4)))
    assert [r[0] for r in results] == [200] * 4
    await wait_for(lambda: counts(gw) == {backend.key: (0, 1, 0)}, message="one idle connection")


async def test_a_failed_try_releases_its_count_before_the_retry(stack: AsyncExitStack) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    # The first target refuses connections; the retry goes to the live one.
    await gw.start(stack, caps_config(["127.0.0.1:1", backend.key], max_requests=1, max_connections=1))
    session = await client(stack)
    for i in range(4):
        status, _, body = await get(session, gw.url + f"/r/{i}")
        assert status == 200 and body == {"backend": "a"}
    await wait_for(
        lambda: counts(gw) == {backend.key: (0, 1, 0)}, message="only the idle connection counted"
    )


async def test_the_overload_answer_to_http10_and_head_requests(stack: AsyncExitStack) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config([backend.key], max_requests=1))
    session = await client(stack)
    held = asyncio.create_task(get(session, gw.url + "/hold/1"))
    await wait_for(lambda: backend.seen == ["/hold/1"], message="the first request held")
    reader, writer = await connect(stack, gw.proxy.port)
    writer.write(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader, head_only=True)
    assert status == 503 and headers["x-ferry-overloaded"] == "true" and body == b""
    writer.write(b"GET /x HTTP/1.0\r\nHost: x\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 503 and headers["x-ferry-overloaded"] == "true"
    assert json.loads(body) == {"message": "upstream overloaded"}
    backend.gate.set()
    assert (await held)[0] == 200
    assert backend.seen == ["/hold/1"]


async def test_a_grpc_call_past_max_requests_is_unavailable_and_marked_overloaded(
    stack: AsyncExitStack,
) -> None:
    target = await GrpcTarget().start(stack)
    config = compile_config(1, "h1", {
        "upstreams": [{"id": "u1", "name": "backends", "max_requests": 1}],
        "targets": [{"id": "t0", "target": target.key, "upstream": {"id": "u1"}}],
        "services": [{"id": "s1", "host": "backends", "port": 80, "protocol": "grpc", "retries": 2}],
        "routes": [{"id": "r1", "protocols": ["grpc"], "paths": ["/test.Raw/"], "service": {"id": "s1"}}],
    })
    holder = ConfigHolder(config)
    proxy = ProxyServer(holder, "127.0.0.1", 0, listen=[ListenAddress("127.0.0.1", 0, http2=True)])
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
    stack.push_async_callback(channel.close)
    held = channel.unary_unary("/test.Raw/Hold")(b"x", timeout=30)
    await wait_for(lambda: target.held == 1, message="the first call held at the target")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await channel.unary_unary("/test.Raw/Hold")(b"y", timeout=30)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert caught.value.details() == "upstream overloaded"
    assert ("x-ferry-overloaded", "true") in tuple(caught.value.trailing_metadata() or ())
    assert target.held == 1  # the refused call never reached the target
    assert proxy.metrics.overflows == {("backends", "max_requests"): 1}
    target.release.set()
    assert await held == b"x"
    guard = config.upstreams["u1"].overload
    assert guard is not None
    await wait_for(lambda: guard.load(target.key).requests == 0, message="the count back to zero")


async def test_a_timed_out_try_releases_its_request_and_connection(stack: AsyncExitStack) -> None:
    backend = await HoldingBackend("a").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config(
        [backend.key], max_requests=1, max_connections=1, service={"read_timeout": 200, "retries": 0},
    ))
    session = await client(stack)
    status, headers, _ = await get(session, gw.url + "/hold/1")
    assert status == 504 and "X-Ferry-Overloaded" not in headers
    # The timed-out try and its (aborted) connection gave back their counts.
    await wait_for(lambda: counts(gw) == {}, message="every count back to zero")
    backend.gate.set()
    assert (await get(session, gw.url + "/after"))[0] == 200
    assert gw.proxy.metrics.overflows == {}


async def test_under_a_burst_with_aborts_every_answer_is_200_or_overloaded_and_counts_settle(
    stack: AsyncExitStack,
) -> None:
    """Every cap at once, two targets, 60 concurrent requests of which every fifth
    client goes away mid-wait: each answer is the target's 200 or the proxy's 503
    overloaded, only answered requests reached a target, and afterwards nothing is
    counted but the idle pooled connections (at most max_connections per target)."""
    a = await HoldingBackend("a").start(stack)
    b = await HoldingBackend("b").start(stack)
    gw = HealthGateway()
    await gw.start(stack, caps_config(
        [a.key, b.key], max_requests=4, max_connections=2, max_pending_requests=3,
        service={"connect_timeout": 60_000},
    ))
    session = await client(stack)
    port = gw.proxy.port

    async def abort_after_sending(i: int) -> None:
        reader, writer = await connect(stack, port)
        writer.write(b"GET /hold/abort-%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        await writer.drain()
        writer.close()

    answers = [asyncio.create_task(get(session, gw.url + f"/hold/{i}")) for i in range(60) if i % 5]
    aborts = [asyncio.create_task(abort_after_sending(i)) for i in range(60) if i % 5 == 0]
    await asyncio.gather(*aborts)
    # Everything not refused is held or waiting; then the targets answer.
    await wait_for(
        lambda: sum(1 for t in answers if t.done()) + sum(
            load.requests for load in guard_of(gw).loads().values()
        ) >= len(answers),
        message="every request refused, held or pending",
    )
    a.gate.set()
    b.gate.set()
    results = await asyncio.gather(*answers)
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    for answer in refused:
        assert_overloaded(answer)
    # Nothing answers before the gates open, and at most 2 × max_requests tries are in
    # flight then: all the others were refused.
    assert len(refused) >= len(answers) - 8
    reached = [p for p in a.seen + b.seen if "abort" not in p]
    assert len(reached) == len(ok)  # a refused request reached no target
    await wait_for(
        lambda: all(r == 0 and p == 0 and c <= 2 for r, c, p in counts(gw).values()),
        message="only idle connections counted",
    )
    overflows = gw.proxy.metrics.overflows
    assert sum(overflows.values()) == len(refused)
