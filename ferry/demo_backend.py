"""A small HTTP backend for demos and tests: it answers with who it is and what it got.

``GET /anything`` → ``{"backend": NAME, "method", "path", "query", "headers", "body_bytes"}``;
``/status/{code}`` answers that status and ``/delay/{ms}`` answers after that many
milliseconds, which makes failure and timeout demos easy.

With ``--fail-percent N`` it answers about N % of requests (all but ``/health``) with
500 once it gets ``SIGUSR1`` (a partially failing target whose health endpoint still
says it is fine; the failing requests are drawn from a generator seeded with the
name, so a run is repeatable). ``bench/failover_bench.py`` uses it.

Run one on its own with ``python -m ferry.demo_backend --name a --port 9001``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal

from aiohttp import web

from ferry_shared.http_site import start_site

#: Upper bound for ``/delay/{ms}`` so a typo cannot park a connection for hours.
MAX_DELAY_MS = 60_000


class _Failing:
    """Whether the app answers ``fail_percent`` % of its requests with 500 now."""

    on = False


_FAILING = web.AppKey("failing", _Failing)


def create_demo_backend(name: str, fail_percent: float = 0) -> web.Application:
    """The app; with ``fail_percent``, SIGUSR1 (or :func:`start_failing`) turns on 500s
    for that share of requests to paths other than ``/health``."""
    draw = random.Random(name).random
    failing = _Failing()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        status = 200
        if failing.on and request.path != "/health" and draw() * 100 < fail_percent:
            status = 500
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
    app[_FAILING] = failing
    app.router.add_route("*", "/{tail:.*}", echo)
    if fail_percent > 0:

        async def on_signal(app: web.Application) -> None:
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, start_failing, app)

        app.on_startup.append(on_signal)
    return app



def start_failing(app: web.Application) -> None:
    """From now on, answer ``fail_percent`` % of requests with 500."""
    app[_FAILING].on = True


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
    parser.add_argument("--fail-percent", type=float, default=0,
                        help="after SIGUSR1, answer this %% of requests (not /health) with 500")
    args = parser.parse_args()
    web.run_app(create_demo_backend(args.name, args.fail_percent), host=args.host, port=args.port,
                access_log=None, print=None)


if __name__ == "__main__":
    main()
