"""Retries through the real proxy: which failed tries are tried again, on which target,
with which body, and how the retry budget caps them.

Kong runs nginx's ``proxy_next_upstream error timeout``: a connection error or timeout
is retried on another target, but a request that may already have reached a target is
sent again only when its method is idempotent. Backends here are real sockets: an aiohttp
echo server, a raw server that reads a request head and hangs up without answering, and
a refused port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections.abc import Iterable
from contextlib import AsyncExitStack

import pytest
from aiohttp import web

from data_plane.balancers import Address, BalancerHandle
from data_plane.balancers.round_robin import RoundRobinBalancer
from data_plane.router import Router, RouteSpec
from data_plane.runtime import RuntimeConfig, compile_config
from tests.support.backends import RawBackend, refused_port, start_backend
from tests.support.hot_path import needs_interpreted_subclass
from tests.support.polling import wait_for
from tests.support.proxy import client, make_config, start_proxy


async def start_hang_up(stack: AsyncExitStack) -> RawBackend:
    """A target that reads each request head and closes without a byte of answer."""
    backend = RawBackend(b"", close=True)
    await backend.start()
    stack.push_async_callback(backend.stop)
    return backend


async def test_an_idempotent_request_is_retried_on_another_target_after_a_hang_up(
    stack: AsyncExitStack,
) -> None:
    live = await start_backend(stack, "a")
    hang_up = await start_hang_up(stack)
    config = make_config(
        1, [(f"127.0.0.1:{live.port}", 100), (f"127.0.0.1:{hang_up.port}", 100)]
    )
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    for i in range(4):
        async with session.get(f"{url}/api/item/{i}") as resp:
            assert resp.status == 200
            assert (await resp.json())["backend"] == "a"
    # Round-robin sent about half of the first tries to the target that hung up; each
    # of those reached it (it read the head) and was answered by the other target.
    assert len(hang_up.received) == 2
    assert all(head.startswith(b"GET /item/") for head in hang_up.received)


async def test_a_post_that_reached_a_target_is_not_sent_again(stack: AsyncExitStack) -> None:
    live = await start_backend(stack, "a")
    hang_up = await start_hang_up(stack)
    config = make_config(
        1, [(f"127.0.0.1:{live.port}", 100), (f"127.0.0.1:{hang_up.port}", 100)]
    )
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    statuses = []
    for _ in range(4):
        async with session.post(f"{url}/api/order", data=b"one order") as resp:
            statuses.append(resp.status)
            if resp.status == 502:
                assert await resp.json() == {
                    "message": "An invalid response was received from the upstream server"
                }
    assert sorted(statuses) == [200, 200, 502, 502]
    assert len(hang_up.received) == 2
    posted = [r for r in live.requests if r["method"] == "POST"]
    assert len(posted) == 2, "each order reached at most one target"


async def test_a_retried_put_sends_its_whole_body_again(stack: AsyncExitStack) -> None:
    live = await start_backend(stack, "a")
    hang_up = await start_hang_up(stack)
    config = make_config(
        1, [(f"127.0.0.1:{live.port}", 100), (f"127.0.0.1:{hang_up.port}", 100)]
    )
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    body = bytes(range(256)) * 400  # 100 KiB: under the replay limit

    async def chunks() -> object:
        for i in range(0, len(body), 10_000):
            yield body[i : i + 10_000]

    for use_chunked in (False, True, False, True):
        data = chunks() if use_chunked else body
        async with session.put(f"{url}/api/doc", data=data) as resp:
            assert resp.status == 200
            answer = await resp.json()
        assert answer["body_len"] == len(body)
        assert answer["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert len(hang_up.received) == 2


async def test_retries_go_to_every_other_target_before_any_repeats(stack: AsyncExitStack) -> None:
    live = await start_backend(stack, "a")
    dead = [await start_hang_up(stack) for _ in range(3)]
    targets = [(f"127.0.0.1:{b.port}", 100) for b in dead] + [(f"127.0.0.1:{live.port}", 100)]
    _, _, url = await start_proxy(stack, make_config(1, targets, service={"retries": 3}))
    session = await client(stack)
    for i in range(4):
        async with session.get(f"{url}/api/req{i}") as resp:
            assert resp.status == 200
    # However the first pick fell, no dead target saw the same request twice: the
    # retries went through every untried target, reaching the live one in time.
    for b in dead:
        paths = [head.split(b" ")[1] for head in b.received]
        assert len(paths) == len(set(paths)), paths
    assert sum(len(b.received) for b in dead) >= 3


class FailFirstBalancer(RoundRobinBalancer):
    """Sends every first try to ``first`` and every retry to ``then`` (a real balancer
    for everything else), so that the test decides which try fails."""

    def __init__(self, first: Address, then: Address, addresses: Iterable[Address]) -> None:
        self.first = first
        self.then = then
        super().__init__(addresses)

    def pick(self, handle: BalancerHandle) -> Address | None:
        address = self.first if handle.retries == 0 else self.then
        handle.tried.add(address.key)
        return address


class GatedBackend:
    """An aiohttp server whose answers wait until ``gate`` is set; counts arrivals."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.arrivals = 0
        self.port = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.arrivals += 1
        await self.gate.wait()
        return web.json_response({"backend": "gated"})

    async def start(self, stack: AsyncExitStack) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(self.gate.set)  # never leave a handler waiting at teardown
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = runner.addresses[0][1]


def budget_config(gated: GatedBackend, budget_percent: float | None) -> RuntimeConfig:
    upstream: dict[str, object] = {"id": "u1", "name": "backends"}
    if budget_percent is not None:
        upstream["retry_budget_percent"] = budget_percent
    dead = Address("127.0.0.1", refused_port())
    live = Address("127.0.0.1", gated.port)
    base = compile_config(
        1,
        "h",
        {
            "upstreams": [upstream],
            "targets": [
                {"id": "t1", "target": dead.key, "upstream": {"id": "u1"}},
                {"id": "t2", "target": live.key, "upstream": {"id": "u1"}},
            ],
            "services": [{"id": "s1", "host": "backends", "port": 80}],
            "routes": [],
        },
    )
    balancer = FailFirstBalancer(dead, live, [dead, live])
    service = base.services["s1"]
    assert service.upstream is not None
    # The proxy picks through the upstream (upstream.begin_try): swap its balancer.
    svc = dataclasses.replace(
        service, balancer=balancer, upstream=dataclasses.replace(service.upstream, balancer=balancer)
    )
    route = RouteSpec(id="r1", name="all", service=svc, paths=("/",), strip_path=False)
    return RuntimeConfig(
        version=1, hash="h", router=Router([route]), services={"s1": svc}, upstreams=base.upstreams
    )


@needs_interpreted_subclass
@pytest.mark.parametrize(("budget_percent", "retried"), [(None, 6), (0.0, 3), (100.0, 6)])
async def test_the_retry_budget_caps_retries_in_progress(
    stack: AsyncExitStack, budget_percent: float | None, retried: int
) -> None:
    gated = GatedBackend()
    await gated.start(stack)
    config = budget_config(gated, budget_percent)
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)

    async def get(i: int) -> int:
        async with session.get(f"{url}/r/{i}") as resp:
            await resp.read()
            return resp.status

    # Six requests at once, each first refused by the dead target. Retries wait at the
    # gated target until released, so they are all in progress together: the budget
    # (Envoy's max(min_retry_concurrency 3, percent x active requests)) lets 3 through
    # and answers the others with the refused try's 502 at once; without a budget all
    # six are retried.
    tasks = [asyncio.ensure_future(get(i)) for i in range(6)]
    try:
        refused = 6 - retried
        await wait_for(
            lambda: gated.arrivals == retried and sum(t.done() for t in tasks) == refused,
            message=f"{retried} retries at the gate and {refused} answered",
        )
        assert [t.result() for t in tasks if t.done()] == [502] * refused
        gated.gate.set()
        statuses = await asyncio.gather(*tasks)
    finally:
        gated.gate.set()
        for t in tasks:
            t.cancel()
    assert sorted(statuses) == [200] * retried + [502] * refused
    assert gated.arrivals == retried
    budget = config.upstreams["u1"].retry_budget
    if budget is not None:
        # Every request and retry counted in was counted out again.
        await wait_for(lambda: budget.active_requests == 0 and budget.active_retries == 0,
                       message="the budget to be empty")
