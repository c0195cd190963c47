"""Admin API access control and body limits, on a real control plane over real Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from control_plane.admin_tokens import add_token
from control_plane.server import ControlPlane, ControlPlaneSettings
from tests.support.admin import AdminClient
from tests.support.control_planes import start_control_plane

BODY_LIMIT = 64 * 1024


class Guarded(AdminClient):
    """The Admin API of a control plane that asks for tokens (a body that is not JSON
    comes back as its text), and the two tokens it knows."""

    def __init__(
        self, http: aiohttp.ClientSession, cp: ControlPlane, admin_token: str, reader_token: str
    ) -> None:
        super().__init__(http, cp, text_fallback=True)
        self.admin_token = admin_token
        self.reader_token = reader_token


@pytest.fixture
async def guarded(redis_url: str, tmp_path: Path) -> AsyncIterator[Guarded]:
    tokens = tmp_path / "tokens.yaml"
    admin_token = add_token(tokens, "ops", "admin")
    reader_token = add_token(tokens, "grafana", "read-only")
    async with AsyncExitStack() as stack:
        cp = await start_control_plane(
            redis_url, tmp_path / "cp", admin_tokens=tokens, admin_body_limit=BODY_LIMIT
        )
        stack.push_async_callback(cp.stop, 0.5)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        stack.push_async_callback(http.close)
        yield Guarded(http, cp, admin_token, reader_token)


UNAUTHORIZED = {"message": "Invalid credentials. Token or User credentials required"}


@pytest.mark.parametrize("path", ["/", "/status", "/upstreams", "/clustering/data-planes", "/metrics"])
async def test_every_call_without_a_token_gets_401(guarded: Guarded, path: str) -> None:
    assert await guarded.call("GET", path) == (401, UNAUTHORIZED)


async def test_a_wrong_token_gets_401_and_a_write_without_one_changes_nothing(guarded: Guarded) -> None:
    bad = {"Ferry-Admin-Token": guarded.admin_token + "x"}
    assert await guarded.call("GET", "/upstreams", headers=bad) == (401, UNAUTHORIZED)
    assert await guarded.call("POST", "/upstreams", {"name": "u1"}) == (401, UNAUTHORIZED)
    ok = {"Ferry-Admin-Token": guarded.admin_token}
    status, body = await guarded.call("GET", "/upstreams", headers=ok)
    assert (status, body["data"]) == (200, [])


async def test_a_read_only_token_reads_but_every_write_gets_403(guarded: Guarded) -> None:
    admin = {"Ferry-Admin-Token": guarded.admin_token}
    reader = {"Ferry-Admin-Token": guarded.reader_token}
    status, _ = await guarded.call("POST", "/upstreams", {"name": "u1"}, headers=admin)
    assert status == 201
    status, body = await guarded.call("GET", "/upstreams/u1", headers=reader)
    assert (status, body["name"]) == (200, "u1")
    cases = [
        ("POST", "/upstreams", {"name": "u2"}, "create"),
        ("PATCH", "/upstreams/u1", {"slots": 100}, "update"),
        ("PUT", "/upstreams/u2", {}, "update"),
        ("DELETE", "/upstreams/u1", None, "delete"),
    ]
    for method, path, body, verb in cases:
        status, answer = await guarded.call(method, path, body, headers=reader)
        assert status == 403, (method, path, answer)
        assert answer == {"message": f"grafana, you do not have permissions to {verb} this resource"}
    status, body = await guarded.call("GET", "/upstreams", headers=admin)
    assert [u["name"] for u in body["data"]] == ["u1"]
    assert body["data"][0]["slots"] == 10000


async def test_kongs_header_and_a_bearer_token_are_accepted(guarded: Guarded) -> None:
    for headers in (
        {"Kong-Admin-Token": guarded.reader_token},
        {"Authorization": f"Bearer {guarded.reader_token}"},
    ):
        status, _ = await guarded.call("GET", "/status", headers=headers)
        assert status == 200, headers
    status, _ = await guarded.call("GET", "/status", headers={"Authorization": f"Basic {guarded.reader_token}"})
    assert status == 401


async def test_the_console_page_needs_no_token(guarded: Guarded) -> None:
    async with guarded.http.get(guarded.base + "/console") as response:
        assert response.status == 200
        assert response.content_type == "text/html"


async def test_a_body_over_the_limit_gets_413_before_it_is_read(guarded: Guarded) -> None:
    admin = {"Ferry-Admin-Token": guarded.admin_token}
    big = {"name": "u1", "tags": ["x" * 1000] * (BODY_LIMIT // 1000 + 2)}
    status, body = await guarded.call("POST", "/upstreams", big, headers=admin)
    assert status == 413
    assert body == {"message": f"Request body too large: the limit is {BODY_LIMIT} bytes"}
    # Even without a token: the size is checked first, so nobody can make the CP read it.
    status, _ = await guarded.call("POST", "/config", data=b"x" * (BODY_LIMIT + 1))
    assert status == 413
    status, body = await guarded.call("GET", "/upstreams", headers=admin)
    assert body["data"] == []


async def test_a_chunked_body_over_the_limit_gets_413(guarded: Guarded) -> None:
    admin = {"Ferry-Admin-Token": guarded.admin_token, "Content-Type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"name": "u1", "tags": ["'
        for _ in range(BODY_LIMIT // 1024 + 1):
            yield b"x" * 1024
        yield b'"]}'

    status, body = await guarded.call("POST", "/upstreams", headers=admin, data=chunks())
    assert status == 413, body


async def test_without_tokens_the_admin_api_is_open_but_still_limits_bodies(
    redis_url: str, tmp_path: Path
) -> None:
    cp = await start_control_plane(redis_url, tmp_path / "cp", admin_body_limit=BODY_LIMIT)
    try:
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{cp.admin_port}"
            async with http.get(url + "/upstreams") as response:
                assert response.status == 200
            async with http.post(url + "/upstreams", data=b"{" + b" " * BODY_LIMIT + b"}",
                                 headers={"Content-Type": "application/json"}) as response:
                assert response.status == 413
    finally:
        await cp.stop(0.5)


def test_an_unusable_tokens_file_stops_the_control_plane_before_it_starts(tmp_path: Path) -> None:
    empty = tmp_path / "tokens.yaml"
    empty.write_text("tokens: []\n")
    with pytest.raises(ValueError, match="holds no token"):
        ControlPlaneSettings(admin_tokens=empty, cluster_insecure=True)
