"""``GET /status/ready``'s checks and answers (control_plane/readiness.py), without I/O."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from control_plane.readiness import Readiness


async def _answer(readiness: Readiness) -> tuple[int, object]:
    app = web.Application()
    app.router.add_get("/status/ready", readiness.handler)
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/status/ready")
        return response.status, await response.json()


async def _pong() -> bool:
    return True


async def _no_answer() -> bool:
    return False


async def test_ready_when_redis_answers_and_a_configuration_is_loaded() -> None:
    assert await _answer(Readiness(_pong, lambda: True)) == (200, {"message": "ready"})


async def test_not_ready_without_a_configuration() -> None:
    status, body = await _answer(Readiness(_pong, lambda: False))
    assert status == 503
    assert body == {"message": "no configuration available (the configuration is not loaded yet)"}


async def test_not_ready_when_redis_does_not_answer() -> None:
    assert await _answer(Readiness(_no_answer, lambda: True)) == (
        503, {"message": "failed to connect to database"}
    )


async def test_not_ready_when_the_ping_outlasts_the_probe() -> None:
    async def hung() -> bool:
        await asyncio.sleep(30)
        return True

    status, body = await _answer(Readiness(hung, lambda: True, ping_timeout=0.05))
    assert (status, body) == (503, {"message": "failed to connect to database: no answer within 0.05s"})


async def test_a_known_outage_answers_without_asking_redis() -> None:
    asked = []

    async def ping() -> bool:
        asked.append(1)
        return True

    readiness = Readiness(ping, lambda: True, lambda: "the embedded redis-server exited (killed by SIGKILL)")
    status, body = await _answer(readiness)
    assert status == 503 and not asked
    assert body == {"message": "failed to connect to database: the embedded redis-server exited (killed by SIGKILL)"}
