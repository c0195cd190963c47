"""A target that holds requests until the test lets them go: "a target busy with N
requests" becomes a state a test sets, not a timing.

:class:`HoldingBackend` is a real aiohttp server on a free loopback port; its stop is
registered on the test's :class:`AsyncExitStack`.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import cast

from aiohttp import web


class HoldingBackend:
    """An aiohttp target: a path with a ``hold`` segment answers once :attr:`gate` is
    set, anything else at once. Every request that arrived is in :attr:`seen` (its
    path), every TCP connection it served a request on in :attr:`transports`."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.seen: list[str] = []
        self.transports: list[object] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def key(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.path_qs)
        if not any(t is request.transport for t in self.transports):
            self.transports.append(request.transport)
        if "hold" in request.path.split("/"):
            await self.gate.wait()
        return web.json_response({"backend": self.name})

    async def start(self, stack: AsyncExitStack) -> HoldingBackend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        server = cast(asyncio.Server, site._server)  # uvloop's Server is not asyncio's class
        self.port = server.sockets[0].getsockname()[1]
        stack.push_async_callback(self.stop)
        return self

    async def stop(self) -> None:
        self.gate.set()
        if self.runner is not None:
            runner, self.runner = self.runner, None
            await runner.cleanup()
