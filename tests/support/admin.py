"""Admin API clients of the tests.

* :class:`AdminClient`: a running control plane's Admin API over a test's session.
* :func:`admin_call` / :func:`admin`: one call by full URL (e2e and Kong spec tests,
  whose control planes are child processes).
* :func:`serve_admin`, :class:`FixedDataPlanes`, :func:`call`, :func:`make`: the Admin
  app served in-process by :class:`aiohttp.test_utils.TestClient` over a real
  :class:`EntityStore`; the fixtures ``store`` (that store over the test's Redis) and
  ``admin`` (the app over it), registered by ``tests/integration/conftest.py``;
  :func:`change_stream`, what the store appended to its change stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from control_plane.admin_api import create_admin_app
from control_plane.server import ControlPlane
from control_plane.store import EntityStore

# ------------------------------------------------------------------ over HTTP


class AdminClient:
    """The Admin API of ``plane`` (a :class:`ControlPlane` or a base URL), through ``http``.

    ``text_fallback``: an answer whose body is not JSON comes back as its text instead of
    failing the call (for tests of answers that may not be the API's JSON)."""

    def __init__(
        self, http: aiohttp.ClientSession, plane: ControlPlane | str, *, text_fallback: bool = False
    ) -> None:
        self.http = http
        self.base = plane if isinstance(plane, str) else f"http://127.0.0.1:{plane.admin_port}"
        self.text_fallback = text_fallback

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        data: Any = None,
    ) -> tuple[int, Any]:
        """One request: (status, decoded JSON body or None when empty). ``raw`` sends
        those exact bytes as a JSON body instead of encoding ``body``; ``data`` sends a
        body as aiohttp takes it (bytes, an async iterator of them), with no Content-Type
        but what ``headers`` give; ``headers`` go with the request."""
        options: dict[str, Any]
        if raw is not None:
            options = {"data": raw, "headers": {"Content-Type": "application/json", **(headers or {})}}
        elif data is not None:
            options = {"data": data, "headers": headers}
        else:
            options = {"json": body, "headers": headers}
        async with self.http.request(method, self.base + path, **options) as response:
            text = await response.text()
            try:
                return response.status, (json.loads(text) if text else None)
            except ValueError:
                if not self.text_fallback:
                    raise
                return response.status, text

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        """:meth:`call` that must succeed (2xx); returns the body."""
        status, answer = await self.call(method, path, body)
        assert status < 300, f"{method} {path} → {status} {answer}"
        return answer

    async def make(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """``POST path`` that must create (201); returns the entity."""
        status, entity = await self.call("POST", path, body)
        assert status == 201, entity
        return entity  # type: ignore[no-any-return]

    async def health(self, upstream: str) -> dict[str, dict[str, Any]]:
        """``GET /upstreams/{u}/health`` as target → item."""
        status, body = await self.call("GET", f"/upstreams/{upstream}/health")
        assert status == 200, body
        return {item["target"]: item for item in body["data"]}

    def until(
        self, upstream: str, check: Callable[[dict[str, dict[str, Any]]], bool]
    ) -> Callable[[], Awaitable[dict[str, dict[str, Any]] | None]]:
        """A ``wait_for`` predicate: the health view once ``check`` accepts it."""

        async def poll() -> dict[str, dict[str, Any]] | None:
            view = await self.health(upstream)
            return view if check(view) else None

        return poll


async def admin_call(
    http: aiohttp.ClientSession, method: str, url: str, body: Any = None, expect: int | None = None
) -> tuple[int, Any]:
    """One Admin API call: ``(status, json body or None)``; asserts ``expect`` if given."""
    async with http.request(method, url, json=body) as response:
        payload = await response.json(content_type=None) if response.status != 204 else None
        if expect is not None:
            assert response.status == expect, f"{method} {url} → {response.status} {payload}"
        return response.status, payload


async def admin(
    http: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None
) -> Any:
    """One Admin API call that must succeed (2xx); returns the JSON body (None for 204)."""
    status, payload = await admin_call(http, method, url, body)
    assert status < 300, f"{method} {url} → {status} {payload}"
    return payload


# ------------------------------------------------------------------ in-process app

#: What :class:`FixedDataPlanes` lists.
DATA_PLANES = [{"id": "dp-1", "hostname": "dp1.local", "sync_status": "SYNCED", "version": "0.1.0"}]

AppClient = TestClient[Any, Any]


class FixedDataPlanes:
    """Stands in for the cluster server's registry: a fixed list of data planes."""

    async def list_data_planes(self) -> list[dict[str, Any]]:
        return [dict(row) for row in DATA_PLANES]


@asynccontextmanager
async def serve_admin(store: EntityStore) -> AsyncIterator[AppClient]:
    """The Admin app over ``store`` (data planes: :class:`FixedDataPlanes`), served
    in-process while the context lasts."""
    app = create_admin_app(store, FixedDataPlanes(), node_id="node-1", version="0.1.0")
    async with TestClient(TestServer(app)) as client:
        yield client


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> EntityStore:
    """An :class:`EntityStore` over the test's (emptied) Redis, key prefix ``ferry``."""
    return EntityStore(redis_client, prefix="ferry")


@pytest.fixture(name="admin")
async def admin_app(store: EntityStore) -> AsyncIterator[AppClient]:
    """The fixture ``admin``: :func:`serve_admin` over ``store``, for the test."""
    async with serve_admin(store) as client:
        yield client


async def change_stream(redis_client: aioredis.Redis) -> list[dict[str, str]]:
    """The entries of ``store``'s change stream (``ferry:changes``), oldest first."""
    return [fields for _, fields in await redis_client.xrange("ferry:changes")]


async def call(
    client: AppClient, method: str, path: str, body: Any = None, **kwargs: Any
) -> tuple[int, Any]:
    """One request; returns (status, decoded JSON body or None)."""
    if body is not None:
        kwargs["json"] = body
    async with client.request(method, path, **kwargs) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text else None)


async def make(client: AppClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """``POST path`` that must create (201); returns the entity."""
    status, entity = await call(client, "POST", path, body)
    assert status == 201, entity
    return entity  # type: ignore[no-any-return]
