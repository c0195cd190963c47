"""Shared fixtures: one real ``redis-server`` per test session, free ports, deadlines.

Tests never sleep a fixed time; they poll a condition with
:func:`tests.support.polling.wait_for`. The fixtures every directory may use are defined
in ``tests/support/`` and registered here by name (a conftest may import support
modules; a test module imports no other test module or conftest).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import redis.asyncio as aioredis
import uvloop

from control_plane.embedded_redis import EmbeddedRedis
from ferry_shared.listen import free_port
from tests.support.backends import backends as backends
from tests.support.control_planes import control_planes as control_planes
from tests.support.http import http as http
from tests.support.http import http_timeout as http_timeout


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, object]:
    """Run every async test on uvloop, the loop Ferry runs on in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real redis-server on a free loopback port, for the whole session."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_url(redis_server: EmbeddedRedis) -> AsyncIterator[str]:
    """URL of the session's Redis, emptied before each test (tests run serially)."""
    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    yield redis_server.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def unused_port() -> Callable[[], int]:
    return free_port
