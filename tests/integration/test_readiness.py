"""``GET /status/ready`` on a real control plane over a real Redis that goes away and comes back."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from control_plane.admin_tokens import add_token
from control_plane.embedded_redis import EmbeddedRedis
from tests.support.control_planes import start_control_plane
from tests.support.http import get_json
from tests.support.polling import wait_for


@pytest.fixture
def http_timeout() -> float:
    """Each request of this module's ``http`` session is bounded to 10 s."""
    return 10.0


async def test_readiness_needs_no_token_and_is_in_the_openapi_document(
    redis_url: str, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    tokens = tmp_path / "tokens.yaml"
    token = add_token(tokens, "ops", "admin")
    cp = await start_control_plane(redis_url, tmp_path / "cp", admin_tokens=tokens)
    try:
        url = f"http://127.0.0.1:{cp.admin_port}"
        assert await get_json(http, f"{url}/status/ready") == (200, {"message": "ready"})
        assert (await get_json(http, f"{url}/status"))[0] == 401, "only readiness is open"
        status, document = await get_json(http, f"{url}/openapi.json", headers={"Ferry-Admin-Token": token})
        assert status == 200
        operation = document["paths"]["/status/ready"]["get"]
        assert {"200", "503"} <= set(operation["responses"])
        schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
        assert schema["required"] == ["message"]
    finally:
        await cp.stop(0.5)


async def test_readiness_follows_an_external_redis_down_and_up(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    cp = None
    try:
        cp = await start_control_plane(redis.url, tmp_path / "cp")
        url = f"http://127.0.0.1:{cp.admin_port}"
        assert await get_json(http, f"{url}/status/ready") == (200, {"message": "ready"})

        redis.kill()
        assert await get_json(http, f"{url}/status/ready") == (503, {"message": "failed to connect to database"})
        status, body = await get_json(http, f"{url}/status")
        assert status == 200 and body["database"] == {"reachable": False}

        redis = EmbeddedRedis(tmp_path / "redis", port=redis.port)
        redis.start()

        async def ready() -> bool:
            return await get_json(http, f"{url}/status/ready") == (200, {"message": "ready"})

        await wait_for(ready, timeout=15, message="/status/ready to answer 200 again")
    finally:
        if cp is not None:
            await cp.stop(0.5)
        redis.stop()
