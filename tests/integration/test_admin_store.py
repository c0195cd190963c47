"""The entity store against a real Redis: durability, versions, change stream, cascades."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis

from control_plane.errors import (
    ForeignKeyViolation,
    PrimaryKeyViolation,
    StoreUnavailable,
    UniqueViolation,
)
from control_plane.redis_connection import create_redis_client
from control_plane.schemas import validate_entity
from control_plane.store import EntityStore, WriteConflict
from tests.support.admin import call, change_stream, make


def entity(kind: str, **fields: Any) -> dict[str, Any]:
    now = int(time.time())
    return validate_entity(
        kind, {"id": str(uuid.uuid4()), "created_at": now, "updated_at": now, **fields}
    )


async def test_current_version_is_zero_before_any_write(store: EntityStore) -> None:
    assert await store.current_version() == 0
    assert store.version_key == "ferry:version"
    assert store.changes_stream_key == "ferry:changes"


async def test_a_write_is_in_redis_when_the_api_answers(
    admin: Any, redis_client: aioredis.Redis
) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    raw = await redis_client.hget("ferry:entities:upstreams", upstream["id"])
    assert raw is not None and json.loads(raw) == upstream
    assert await redis_client.hget("ferry:unique:upstreams:name", "a") == upstream["id"]


async def test_every_write_bumps_the_version_by_one_and_appends_to_the_stream(
    admin: Any, redis_client: aioredis.Redis
) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    assert await redis_client.get("ferry:version") == "1"
    await call(admin, "PATCH", "/upstreams/a", {"slots": 20})
    assert await redis_client.get("ferry:version") == "2"
    await call(admin, "PUT", "/upstreams/a", {"slots": 30})
    assert await redis_client.get("ferry:version") == "3"
    await call(admin, "DELETE", "/upstreams/a")
    assert await redis_client.get("ferry:version") == "4"
    assert await change_stream(redis_client) == [
        {"version": "1", "kind": "upstreams", "id": upstream["id"], "op": "upsert"},
        {"version": "2", "kind": "upstreams", "id": upstream["id"], "op": "upsert"},
        {"version": "3", "kind": "upstreams", "id": upstream["id"], "op": "upsert"},
        {"version": "4", "kind": "upstreams", "id": upstream["id"], "op": "delete"},
    ]


async def test_a_refused_write_changes_nothing(admin: Any, redis_client: aioredis.Redis) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, _ = await call(admin, "POST", "/upstreams", {"name": "a"})
    assert status == 409
    status, _ = await call(admin, "POST", "/upstreams", {"name": "b", "slots": 1})
    assert status == 400
    status, _ = await call(admin, "DELETE", "/upstreams/missing")
    assert status == 204
    assert await redis_client.get("ferry:version") == "1"
    assert len(await change_stream(redis_client)) == 1


async def test_cascade_delete_is_one_version_with_one_entry_per_entity(
    admin: Any, redis_client: aioredis.Redis
) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    t1 = await make(admin, "/upstreams/a/targets", {"target": "h:1"})
    t2 = await make(admin, "/upstreams/a/targets", {"target": "h:2"})
    await call(admin, "DELETE", "/upstreams/a")
    assert await redis_client.get("ferry:version") == "4"
    entries = (await change_stream(redis_client))[3:]
    assert {e["version"] for e in entries} == {"4"}
    assert sorted((e["kind"], e["id"], e["op"]) for e in entries) == sorted(
        [
            ("targets", t1["id"], "delete"),
            ("targets", t2["id"], "delete"),
            ("upstreams", upstream["id"], "delete"),
        ]
    )
    assert await redis_client.hlen("ferry:entities:targets") == 0
    assert await redis_client.hlen("ferry:unique:targets:target") == 0


async def test_load_all_returns_version_and_every_entity(admin: Any, store: EntityStore) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    target = await make(admin, "/upstreams/a/targets", {"target": "h:1"})
    service = await make(admin, "/services", {"name": "s", "host": "a"})
    route = await make(admin, "/services/s/routes", {"paths": ["/"]})
    version, entities = await store.load_all()
    assert version == 4
    assert entities == {
        "certificates": [],
        "ca_certificates": [],
        "snis": [],
        "upstreams": [upstream],
        "targets": [target],
        "services": [service],
        "routes": [route],
    }


async def test_load_all_on_an_empty_store(store: EntityStore) -> None:
    assert await store.load_all() == (
        0,
        {"certificates": [], "ca_certificates": [], "snis": [], "upstreams": [], "targets": [], "services": [], "routes": []},
    )


async def test_store_checks_unique_foreign_and_primary_keys(store: EntityStore) -> None:
    upstream = entity("upstreams", name="a")
    await store.insert("upstreams", upstream)
    with pytest.raises(PrimaryKeyViolation):
        await store.insert("upstreams", upstream)
    with pytest.raises(UniqueViolation):
        await store.insert("upstreams", entity("upstreams", name="a"))
    orphan = entity("targets", target="h:1", upstream={"id": str(uuid.uuid4())})
    with pytest.raises(ForeignKeyViolation):
        await store.insert("targets", orphan)
    assert await store.current_version() == 1


async def test_replace_is_a_compare_and_set(store: EntityStore) -> None:
    upstream = entity("upstreams", name="a")
    await store.insert("upstreams", upstream)
    stale = await store.get_raw("upstreams", upstream["id"])
    await store.replace("upstreams", {**upstream, "slots": 20}, stale)
    with pytest.raises(WriteConflict):
        await store.replace("upstreams", {**upstream, "slots": 30}, stale)
    assert (await store.get("upstreams", upstream["id"]) or {})["slots"] == 20


async def test_concurrent_patches_lose_no_update(admin: Any) -> None:
    await make(admin, "/upstreams", {"name": "a", "tags": []})
    # Each PATCH changes a different record field; all must survive.
    fields = ["interval", "successes"]
    results = await asyncio.gather(
        call(admin, "PATCH", "/upstreams/a", {"healthchecks": {"active": {"healthy": {fields[0]: 5}}}}),
        call(admin, "PATCH", "/upstreams/a", {"healthchecks": {"active": {"healthy": {fields[1]: 3}}}}),
        call(admin, "PATCH", "/upstreams/a", {"slots": 50}),
    )
    assert [status for status, _ in results] == [200, 200, 200]
    _, body = await call(admin, "GET", "/upstreams/a")
    healthy = body["healthchecks"]["active"]["healthy"]
    assert (healthy["interval"], healthy["successes"], body["slots"]) == (5, 3, 50)


async def test_concurrent_creates_of_one_name_leave_exactly_one(admin: Any, store: EntityStore) -> None:
    results = await asyncio.gather(*(call(admin, "POST", "/upstreams", {"name": "a"}) for _ in range(10)))
    assert sorted(status for status, _ in results) == [201] + [409] * 9
    _, entities = await store.load_all()
    assert len(entities["upstreams"]) == 1


async def test_unreachable_redis_raises_store_unavailable(unused_port: Any) -> None:
    # Ferry's client: bounded retries, so each call fails in well under a second.
    dead = create_redis_client(f"redis://127.0.0.1:{unused_port()}/0")
    store_ = EntityStore(dead)
    with pytest.raises(StoreUnavailable):
        await store_.current_version()
    with pytest.raises(StoreUnavailable):
        await store_.load_all()
    with pytest.raises(StoreUnavailable):
        await store_.insert("upstreams", entity("upstreams", name="a"))
    await dead.aclose()


async def test_store_works_without_decoded_responses(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)  # bytes replies
    try:
        store_ = EntityStore(client, prefix="other")
        upstream = entity("upstreams", name="a")
        assert await store_.insert("upstreams", upstream) == 1
        assert await store_.load_all() == (
            1,
            {"certificates": [], "ca_certificates": [], "snis": [], "upstreams": [upstream], "targets": [], "services": [], "routes": []},
        )
        assert await store_.id_by_unique("upstreams", "name", "a") == upstream["id"]
    finally:
        await client.aclose()
