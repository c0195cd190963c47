"""Kong's ``spec/02-integration/05-proxy/10-balancer/08-retries_spec.lua``, case by case
(``08-retry_spec.lua`` is the same spec under its earlier name).

Kong counts the tries of the second request in its ``http-log`` plugin's entry; Ferry
has no plugins, so the target itself counts the requests that reach it.

A deliberate difference: the second request first goes out on the keep-alive connection
the first one left in the pool, which the target closes without answering. Kong counts
that as the first of its 6 tries; Ferry replays a request that failed that way (a
reused idle connection, nothing received) once on a fresh connection without spending a
try, as HTTP clients and Envoy do, so a target that merely closed an idle connection
costs no retry. The target therefore sees the stale attempt plus the same 6 tries.
"""

from __future__ import annotations

import asyncio

import aiohttp

from tests.support.admin import admin_call
from tests.support.kong import KongCluster, unique

SPEC = "08-retries_spec.lua"


async def test_exceeded_limit(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong: it("exceeded limit") — 08-retries_spec.lua: a service (retries 5) whose
    target answers the first request and then closes every connection without an
    answer: the first request is 200, the second 502 after 6 tries."""
    seen = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                seen += 1
                if seen > 1:
                    break  # ngx.HTTP_CLOSE: close without an answer
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhello\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        path = f"/{unique('hello')}"
        _, svc = await admin_call(
            http, "POST", f"{kong.admin}/services",
            {"name": unique("retry_service"), "host": "127.0.0.1", "port": port, "retries": 5}, 201,
        )
        await admin_call(
            http, "POST", f"{kong.admin}/routes", {"service": {"id": svc["id"]}, "paths": [path], "strip_path": False}, 201
        )
        dp = await kong.data_plane()
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{dp.proxy}{path}") as response:
                assert response.status == 200
        async with aiohttp.ClientSession() as client:
            async with client.get(f"{dp.proxy}{path}") as response:
                assert response.status == 502
        stale_replay = 1
        assert seen - 1 == stale_replay + 6  # the second request's tries: 1 + retries
    finally:
        server.close()
        await server.wait_closed()
