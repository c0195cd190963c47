"""The demo backend's partial failure (``--fail-percent``, switched on by SIGUSR1 in the
process; :func:`start_failing` here): a share of 500s on every path but ``/health``."""

from __future__ import annotations

from collections import Counter

from aiohttp.test_utils import TestClient, TestServer

from ferry.demo_backend import create_demo_backend, start_failing


async def statuses(client: TestClient, path: str, n: int) -> Counter[int]:
    seen: Counter[int] = Counter()
    for _ in range(n):
        async with client.get(path) as resp:
            seen[resp.status] += 1
    return seen


async def test_fail_percent_answers_500s_only_once_switched_on_and_never_on_health() -> None:
    app = create_demo_backend("b1", fail_percent=30)
    async with TestClient(TestServer(app)) as client:
        assert await statuses(client, "/anything", 50) == {200: 50}
        start_failing(app)
        seen = await statuses(client, "/anything", 400)
        # Seeded with the name: about 30 %, the same share on every run.
        assert 80 <= seen[500] <= 160 and seen[500] + seen[200] == 400
        assert await statuses(client, "/health", 50) == {200: 50}


async def test_without_fail_percent_switching_on_changes_nothing() -> None:
    app = create_demo_backend("b1")
    async with TestClient(TestServer(app)) as client:
        start_failing(app)
        assert await statuses(client, "/anything", 50) == {200: 50}
