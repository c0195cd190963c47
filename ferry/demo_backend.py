"""A small HTTP backend for demos and tests: it answers with who it is and what it got.

``GET /anything`` → ``{"backend": NAME, "method", "path", "query", "headers", "body_bytes"}``;
``/status/{code}`` answers that status and ``/delay/{ms}`` answers after that many
milliseconds, which makes failure and timeout demos easy.

Run one on its own with ``python -m ferry.demo_backend --name a --port 9001``.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from ferry_shared.http_site import start_site

#: Upper bound for ``/delay/{ms}`` so a typo cannot park a connection for hours.
MAX_DELAY_MS = 60_000


def create_demo_backend(name: str) -> web.Application:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        status = 200
        parts = request.path.strip("/").split("/")
        if len(parts) == 2 and parts[1].isdigit():
            if parts[0] == "status":
                status = int(parts[1])
            elif parts[0] == "delay":
                await asyncio.sleep(min(int(parts[1]), MAX_DELAY_MS) / 1000)
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


def main() -> None:
    parser = argparse.ArgumentParser(description="Ferry's demo backend")
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(create_demo_backend(args.name), host=args.host, port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
