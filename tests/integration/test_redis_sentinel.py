"""A control plane on ``redis+sentinel://`` with a real Sentinel, master and replica.

Every server is the ``redis-server`` Ferry embeds; passwords are set on the
data nodes (``requirepass``/``masterauth``) and on the Sentinel, so both
halves of the URL's credentials are exercised.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from control_plane.embedded_redis import EmbeddedRedis
from control_plane.server import ControlPlane
from tests.support.control_planes import start_control_plane
from tests.support.polling import wait_for
from tests.support.sentinel import SentinelServer

MASTER_PASSWORD = "m-secret"
SENTINEL_PASSWORD = "s-secret"


@dataclass
class SentinelSetup:
    master: EmbeddedRedis
    replica: EmbeddedRedis
    sentinel: SentinelServer

    @property
    def url(self) -> str:
        return (
            f"redis+sentinel://:{MASTER_PASSWORD}@127.0.0.1:{self.sentinel.port}/mymaster"
            f"?sentinel_password={SENTINEL_PASSWORD}"
        )


def _data_node(server: EmbeddedRedis) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=server.port, password=MASTER_PASSWORD,
                          decode_responses=True)


async def _role(server: EmbeddedRedis) -> str:
    client = _data_node(server)
    try:
        return str((await client.info("replication"))["role"])
    finally:
        await client.aclose()


@pytest.fixture
async def sentinel_setup(tmp_path: Path) -> AsyncIterator[SentinelSetup]:
    master = EmbeddedRedis(tmp_path / "master", appendonly=False)
    replica = EmbeddedRedis(tmp_path / "replica", appendonly=False)
    sentinel: SentinelServer | None = None
    try:
        for server in (master, replica):
            server.start()
            client = aioredis.Redis(host="127.0.0.1", port=server.port)
            # Either may be demoted by a failover: each needs the other's password.
            await client.config_set("masterauth", MASTER_PASSWORD)
            await client.config_set("requirepass", MASTER_PASSWORD)
            await client.aclose()
        client = _data_node(replica)
        await client.replicaof("127.0.0.1", master.port)

        async def linked() -> bool:
            return (await client.info("replication")).get("master_link_status") == "up"

        await wait_for(linked, message="the replica to sync with the master")
        await client.aclose()
        # Started after the replica attached: the Sentinel's first INFO of the master finds it.
        sentinel = SentinelServer(tmp_path / "sentinel", master.port,
                                  master_password=MASTER_PASSWORD, password=SENTINEL_PASSWORD)
        sentinel.start()
        yield SentinelSetup(master, replica, sentinel)
    finally:
        if sentinel is not None:
            sentinel.stop()
        replica.stop()
        master.stop()


async def _post(http: aiohttp.ClientSession, cp: ControlPlane, path: str, body: dict) -> tuple[int, dict]:
    async with http.post(f"http://127.0.0.1:{cp.admin_port}{path}", json=body) as response:
        return response.status, await response.json()


def _in_snapshot(cp: ControlPlane, entity_id: str) -> bool:
    current = cp.snapshots.current
    return current is not None and any(r.id == entity_id for r in current.resources)


async def _stored_in(server: EmbeddedRedis, entity_id: str) -> bool:
    client = _data_node(server)
    try:
        return await client.hexists("ferry:entities:upstreams", entity_id)
    finally:
        await client.aclose()


async def test_writes_through_sentinel_land_in_the_master_and_reach_the_snapshot(
    sentinel_setup: SentinelSetup, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cp = await start_control_plane(sentinel_setup.url, tmp_path / "cp")
    try:
        status, upstream = await _post(http, cp, "/upstreams", {"name": "via-sentinel"})
        assert status == 201, upstream
        assert await _stored_in(sentinel_setup.master, upstream["id"])
        await wait_for(lambda: _in_snapshot(cp, upstream["id"]), message="the write in the CP's snapshot")

        # With the master gone (the Sentinel still names it), the 503 says where and hides passwords.
        sentinel_setup.master.kill()
        async with http.get(f"http://127.0.0.1:{cp.admin_port}/upstreams") as response:
            assert response.status == 503
            message = (await response.json())["message"]
        assert message.startswith(
            "the database is unreachable (Redis master 'mymaster' via Sentinel "
            f"127.0.0.1:{sentinel_setup.sentinel.port}, last at 127.0.0.1:{sentinel_setup.master.port}): "
        ), message
        assert MASTER_PASSWORD not in message and SENTINEL_PASSWORD not in message
        # The snapshot the DPs are served is still there.
        assert _in_snapshot(cp, upstream["id"])
    finally:
        await cp.stop(grace=0.5)


async def test_after_the_master_dies_and_sentinel_fails_over_writes_go_to_the_new_master(
    sentinel_setup: SentinelSetup, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    setup = sentinel_setup
    cp = await start_control_plane(setup.url, tmp_path / "cp")
    try:
        status, before = await _post(http, cp, "/upstreams", {"name": "before"})
        assert status == 201, before
        await wait_for(lambda: _stored_in(setup.replica, before["id"]),
                       message="the first write to reach the replica")
        await wait_for(lambda: _in_snapshot(cp, before["id"]), message="the first write in the snapshot")

        setup.master.kill()
        sentinel = setup.sentinel.client()

        def failover_started() -> bool:
            try:
                return bool(sentinel.sentinel_failover("mymaster"))
            except ResponseError as exc:  # NOGOODSLAVE until the Sentinel has seen the replica
                if "NOGOODSLAVE" not in str(exc) and "INPROG" not in str(exc):
                    raise
                return False

        try:
            await wait_for(failover_started, timeout=30, interval=0.2, message="SENTINEL FAILOVER")
        finally:
            sentinel.close()
        await wait_for(lambda: setup.sentinel.master_address() == ("127.0.0.1", setup.replica.port),
                       timeout=30, message="the Sentinel to name the replica as master")
        assert await _role(setup.replica) == "master"

        # The CP's pooled connections pointed at the dead master: the write fails
        # there, redis-py asks the Sentinel for the master again and retries.
        status, after = await _post(http, cp, "/upstreams", {"name": "after"})
        assert status == 201, after
        assert await _stored_in(setup.replica, after["id"]), "written to the new master"
        async with http.get(f"http://127.0.0.1:{cp.admin_port}/upstreams/before") as response:
            assert response.status == 200, "the replicated data is served by the new master"
        await wait_for(lambda: _in_snapshot(cp, after["id"]) and _in_snapshot(cp, before["id"]),
                       message="both writes in the CP's snapshot")
    finally:
        await cp.stop(grace=0.5)
