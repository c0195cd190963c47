"""A small HTTP backend for demos and tests: it answers with who it is and what it got.

``GET /anything`` → ``{"backend": NAME, "method", "path", "query", "headers"}``;
``/status/{code}`` answers that status, which makes failure demos easy.
"""

from __future__ import annotations

from aiohttp import web

from ferry.http_site import start_site


def create_demo_backend(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        status = 200
        parts = request.path.strip("/").split("/")
        if len(parts) == 2 and parts[0] == "status" and parts[1].isdigit():
            status = int(parts[1])
        return web.json_response(
            {
                "backend": name,
                "method": request.method,
                "path": request.path,
                "query": request.query_string,
                "headers": dict(request.headers),
                "body_bytes": len(body),
            },
            status=status,
            headers={"X-Demo-Backend": name},
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


async def start_demo_backend(name: str, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
    """Start the backend; returns its runner (call ``cleanup()`` to stop) and bound port."""
    runner = web.AppRunner(create_demo_backend(name), access_log=None, handle_signals=False)
    await runner.setup()
    return runner, await start_site(runner, host, port)
