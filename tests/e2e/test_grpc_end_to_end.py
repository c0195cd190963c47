"""gRPC end to end: a real control plane configured through its Admin API (an upstream
with ``grpc`` active health checks, a ``protocol: grpc`` service, a ``protocols: ["grpc"]``
route) and a real ``ferry data-plane`` with an ``http2`` listener; grpcio clients call two
real grpcio targets through it, and a target that stops SERVING is taken out by the
gRPC health check and put back when it serves again."""

from __future__ import annotations

from contextlib import AsyncExitStack

import aiohttp
import grpc

from tests.support.admin import admin
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.grpc_servers import NOT_SERVING, SERVING, GrpcTarget
from tests.support.http import wait_http_ok
from tests.support.polling import wait_for


async def test_grpc_calls_through_a_real_data_plane_follow_grpc_health_checks(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    async with AsyncExitStack() as stack:
        a = await GrpcTarget(name="a").start(stack)
        b = await GrpcTarget(name="b").start(stack)
        cp = cluster.start_control_plane()
        await wait_http_ok(http, f"{cluster.admin}/status", cp)
        await admin(http, "POST", f"{cluster.admin}/upstreams", {
            "name": "greeter",
            "healthchecks": {"active": {
                "type": "grpc",
                "healthy": {"interval": 0.1, "successes": 1},
                "unhealthy": {"interval": 0.1, "http_failures": 1, "tcp_failures": 1},
            }},
        })
        for target in (a, b):
            await admin(http, "POST", f"{cluster.admin}/upstreams/greeter/targets", {"target": target.key})
        await admin(http, "POST", f"{cluster.admin}/services",
                    {"name": "greeter", "protocol": "grpc", "host": "greeter", "port": 80})
        await admin(http, "POST", f"{cluster.admin}/services/greeter/routes",
                    {"name": "raw", "protocols": ["grpc"], "paths": ["/test.Raw/"]})
        dp = cluster.start_data_plane("node", http2=True)
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
        await wait_dp_synced(http, cluster, dp.status)

        channel = grpc.aio.insecure_channel(dp.proxy.removeprefix("http://"))
        stack.push_async_callback(channel.close)
        who = channel.unary_unary("/test.Raw/Who")
        echo = channel.unary_unary("/test.Raw/Echo")
        assert await echo(b"hello", timeout=10) == b"hello"
        assert {await who(b"", timeout=10) for _ in range(6)} == {b"a", b"b"}

        # No route: the proxy's own answer, as a gRPC status (Kong's 404 → NOT_FOUND).
        try:
            await channel.unary_unary("/other.Service/Call")(b"", timeout=10)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        else:
            raise AssertionError("a call matching no route was answered")

        await b.set(NOT_SERVING)

        async def only_a() -> bool:
            return {await who(b"", timeout=10) for _ in range(6)} == {b"a"}

        await wait_for(only_a, timeout=15, message="the NOT_SERVING target taken out")
        await b.set(SERVING)

        async def both() -> bool:
            return {await who(b"", timeout=10) for _ in range(8)} == {b"a", b"b"}

        await wait_for(both, timeout=15, message="the target back once SERVING")
