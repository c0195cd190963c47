"""Starting an aiohttp application on a TCP address and learning the bound port."""

from __future__ import annotations

from aiohttp import web


async def start_site(runner: web.AppRunner, host: str, port: int) -> int:
    """Start ``runner`` (already set up) on ``host:port``; return the bound port.

    Port 0 binds an ephemeral port, which tests and ``ferry up`` rely on.
    """
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    server = site._server  # aiohttp exposes the bound sockets only through the server
    sockets = list(getattr(server, "sockets", None) or [])
    return int(sockets[0].getsockname()[1]) if sockets else port
