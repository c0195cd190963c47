"""``GET /config`` and ``POST /config`` over a real Redis: one atomic replace, Kong's errors."""

from __future__ import annotations

import copy
import json
import uuid
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from control_plane.declarative import entities_hash
from control_plane.snapshot import build_snapshot
from control_plane.store import ConfigChanged, EntityStore
from tests.support.admin import AppClient, call, change_stream, make, serve_admin

Client = AppClient


async def build_shop(admin: Client) -> None:
    """A configuration made through the ordinary Admin API, one write at a time."""
    await make(admin, "/upstreams", {"name": "shop.internal", "healthchecks": {"threshold": 25}})
    await make(admin, "/upstreams/shop.internal/targets", {"target": "10.0.0.1:8080"})
    await make(admin, "/upstreams/shop.internal/targets", {"target": "10.0.0.2:8080", "weight": 5})
    await make(admin, "/services", {"name": "shop", "host": "shop.internal", "tags": ["team-a"]})
    await make(admin, "/services/shop/routes", {"name": "shop", "paths": ["/shop"]})
    await make(admin, "/routes", {"name": "orphan", "hosts": ["example.com"]})


async def export(admin: Client) -> dict[str, Any]:
    status, document = await call(admin, "GET", "/config")
    assert status == 200, document
    return document  # type: ignore[no-any-return]


async def test_get_config_exports_every_entity_with_the_version_and_published_hash(
    admin: Client, store: EntityStore
) -> None:
    await build_shop(admin)
    document = await export(admin)
    version, entities = await store.load_all()
    assert document["_format_version"] == "3.0" and document["_transform"] is False
    assert document["_config_version"] == version == 6
    assert document["_config_hash"] == build_snapshot(version, entities).hash
    assert list(document)[4:] == [
        "certificates", "ca_certificates", "upstreams", "targets", "services", "routes",
    ]
    for kind in ("upstreams", "targets", "services", "routes"):
        assert document[kind] == entities[kind]


async def test_get_config_of_an_empty_store(admin: Client) -> None:
    document = await export(admin)
    assert document["_config_version"] == 0
    assert document["_config_hash"] == entities_hash({})
    assert [document[k] for k in ("upstreams", "targets", "services", "routes")] == [[], [], [], []]


async def test_post_config_on_an_empty_store_is_one_version_with_one_entry_per_entity(
    admin: Client, store: EntityStore, redis_client: aioredis.Redis
) -> None:
    await build_shop(admin)
    source = await export(admin)
    await redis_client.flushdb()

    status, body = await call(admin, "POST", "/config", source)
    assert status == 201, body
    assert body["_config_version"] == 1
    assert body["_config_hash"] == source["_config_hash"]
    assert await export(admin) == {**source, "_config_version": 1}
    entries = await change_stream(redis_client)
    assert {e["version"] for e in entries} == {"1"}
    assert sorted((e["kind"], e["id"], e["op"]) for e in entries) == sorted(
        (kind, entity["id"], "upsert")
        for kind in ("upstreams", "targets", "services", "routes")
        for entity in source[kind]
    )


async def test_the_imported_config_keeps_every_index_the_admin_api_relies_on(
    admin: Client, redis_client: aioredis.Redis
) -> None:
    await build_shop(admin)
    source = await export(admin)
    await redis_client.flushdb()
    assert (await call(admin, "POST", "/config", source))[0] == 201

    # names and targets resolve, uniqueness and references hold, cascades work
    assert (await call(admin, "GET", "/services/shop"))[0] == 200
    assert (await call(admin, "GET", "/upstreams/shop.internal/targets/10.0.0.2:8080"))[0] == 200
    status, routes = await call(admin, "GET", "/services/shop/routes")
    assert [r["name"] for r in routes["data"]] == ["shop"]
    assert (await call(admin, "POST", "/services", {"name": "shop", "host": "x"}))[0] == 409
    assert (await call(admin, "POST", "/upstreams/shop.internal/targets", {"target": "10.0.0.1:8080"}))[0] == 409
    status, body = await call(admin, "DELETE", "/services/shop")
    assert status == 400 and body["fields"] == {"@referenced_by": "routes"}
    assert (await call(admin, "DELETE", "/upstreams/shop.internal"))[0] == 204
    assert await redis_client.hlen("ferry:entities:targets") == 0


async def test_posting_the_exported_config_again_writes_nothing(
    admin: Client, redis_client: aioredis.Redis
) -> None:
    await build_shop(admin)
    source = await export(admin)
    status, body = await call(admin, "POST", "/config", source)
    assert status == 201
    assert body["_config_version"] == 6 and body["_config_hash"] == source["_config_hash"]
    assert len(await change_stream(redis_client)) == 6
    status, body = await call(admin, "POST", "/config?check_hash=1", source)
    assert (status, body) == (304, None)


async def test_a_document_without_some_entities_deletes_them_in_one_version(
    admin: Client, store: EntityStore, redis_client: aioredis.Redis
) -> None:
    await build_shop(admin)
    source = await export(admin)
    kept = copy.deepcopy(source)
    kept["routes"] = [r for r in source["routes"] if r["name"] == "orphan"]
    kept["services"] = []
    kept["upstreams"] = []
    kept["targets"] = []

    status, body = await call(admin, "POST", "/config", kept)
    assert status == 201, body
    assert body["_config_version"] == 7
    _, entities = await store.load_all()
    assert [r["name"] for r in entities["routes"]] == ["orphan"]
    assert entities["services"] == entities["upstreams"] == entities["targets"] == []
    entries = (await change_stream(redis_client))[6:]
    assert {e["version"] for e in entries} == {"7"}
    assert sorted((e["kind"], e["op"]) for e in entries) == [
        ("routes", "delete"), ("services", "delete"), ("targets", "delete"),
        ("targets", "delete"), ("upstreams", "delete"),
    ]
    # No index is left behind: the names are free again.
    assert await redis_client.hlen("ferry:unique:services:name") == 0
    assert await redis_client.keys("ferry:refs:*") == []
    await make(admin, "/upstreams", {"name": "shop.internal"})


async def test_two_entities_may_swap_names_in_one_document(admin: Client) -> None:
    a = await make(admin, "/services", {"name": "a", "host": "a"})
    b = await make(admin, "/services", {"name": "b", "host": "b"})
    document = await export(admin)
    swapped = {s["id"]: s for s in copy.deepcopy(document["services"])}
    swapped[a["id"]]["name"], swapped[b["id"]]["name"] = "b", "a"
    document["services"] = list(swapped.values())
    status, body = await call(admin, "POST", "/config", document)
    assert status == 201, body
    assert (await call(admin, "GET", "/services/a"))[1]["id"] == b["id"]
    assert (await call(admin, "GET", "/services/b"))[1]["id"] == a["id"]


async def test_an_invalid_document_is_400_with_kongs_body_and_changes_nothing(
    admin: Client, store: EntityStore, redis_client: aioredis.Redis
) -> None:
    await build_shop(admin)
    before = await store.load_all()
    document = await export(admin)
    document["services"].append({"name": "broken", "host": "bad host", "port": 99999})
    document["routes"].append({"name": "lost", "paths": ["/x"], "service": {"name": "nowhere"}})

    status, body = await call(admin, "POST", "/config", document)
    assert status == 400
    assert body["code"] == 14 and body["name"] == "invalid declarative configuration"
    assert body["message"].startswith("declarative config is invalid: {")
    assert body["fields"]["services"] == [None, {
        "host": "invalid value: bad host", "port": "value should be between 0 and 65535"
    }]
    assert body["fields"]["routes"][2]["service"].startswith("the foreign key '{name=\"nowhere\"}'")
    by_name = {e["entity_name"]: e for e in body["flattened_errors"]}
    assert by_name["broken"]["entity_type"] == "service"
    assert by_name["broken"]["entity"] == {"name": "broken", "host": "bad host", "port": 99999}
    assert [e["field"] for e in by_name["broken"]["errors"]] == ["host", "port"]
    assert await store.load_all() == before
    assert len(await change_stream(redis_client)) == 6


async def test_yaml_bodies_and_kongs_config_form_field_are_accepted(admin: Client) -> None:
    text = '_format_version: "3.0"\nservices:\n- name: s\n  host: h\n  routes:\n  - name: r\n    paths: [/r]\n'
    status, body = await call(admin, "POST", "/config", data=text,
                              headers={"Content-Type": "application/yaml"})
    assert status == 201, body
    assert [r["name"] for r in body["routes"]] == ["r"]

    form = aiohttp.FormData()
    form.add_field("config", text.replace("name: r", "name: r2"), filename="kong.yml")
    status, body = await call(admin, "POST", "/config", data=form)
    assert status == 201, body
    assert [r["name"] for r in body["routes"]] == ["r2"]
    assert body["_config_version"] == 2

    status, body = await call(admin, "POST", "/config", data={"config": text})
    assert status == 201 and [r["name"] for r in body["routes"]] == ["r"]


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        ("{not json", "application/json", "failed parsing declarative configuration: Expecting"),
        ("[1, 2]", "application/json", "expected a mapping"),
        ("a: [1", "application/yaml", "failed parsing declarative configuration: while parsing"),
        ("", "application/yaml", "the document is empty"),
    ],
)
async def test_an_unparsable_body_is_400(admin: Client, body: str, content_type: str, reason: str) -> None:
    status, answer = await call(admin, "POST", "/config", data=body, headers={"Content-Type": content_type})
    assert status == 400
    assert reason in answer["message"]


async def test_expected_version_refuses_a_config_that_moved_and_changes_nothing(
    admin: Client, redis_client: aioredis.Redis
) -> None:
    await make(admin, "/services", {"name": "a", "host": "a"})
    document = await export(admin)
    document["services"][0]["retries"] = 1
    await make(admin, "/services", {"name": "b", "host": "b"})  # version 2 now

    status, body = await call(admin, "POST", "/config?expected_version=1", document)
    assert status == 409
    assert body["version"] == 2 and "not the expected 1" in body["message"]
    assert len(await change_stream(redis_client)) == 2
    status, body = await call(admin, "POST", "/config?expected_version=x", document)
    assert status == 400 and body["name"] == "invalid options"
    status, body = await call(admin, "POST", "/config?expected_version=2", document)
    assert status == 201 and body["_config_version"] == 3
    assert [s["name"] for s in body["services"]] == ["a"]


async def test_the_store_refuses_a_plan_computed_against_an_older_version(store: EntityStore) -> None:
    service = {"id": str(uuid.uuid4()), "name": "s", "host": "h"}
    with pytest.raises(ConfigChanged) as caught:
        await store.replace_config([("services", service)], [], expect_version=3)
    assert caught.value.version == 0
    assert await store.current_version() == 0
    assert await store.replace_config([], [], expect_version=0) == 0


async def test_a_document_larger_than_aiohttps_default_limit_is_accepted(
    admin: Client, store: EntityStore
) -> None:
    document = {
        "_format_version": "3.0",
        "upstreams": [
            {"name": f"u{i}.internal", "targets": [{"target": f"10.0.{i // 250}.{i % 250}:80"}]}
            for i in range(2000)
        ],
    }
    status, body = await call(admin, "POST", "/config", document)
    assert status == 201
    assert len(body["upstreams"]) == len(body["targets"]) == 2000
    assert await store.current_version() == 1
    exported = await export(admin)
    assert len(json.dumps(exported)) > 2 * 1024 * 1024  # aiohttp refuses 1 MiB by default
    status, again = await call(admin, "POST", "/config", exported)
    assert status == 201 and again["_config_version"] == 1


async def test_the_openapi_document_describes_config(admin: Client) -> None:
    status, doc = await call(admin, "GET", "/openapi.json")
    assert status == 200
    assert set(doc["paths"]["/config"]) == {"get", "head", "post"}
    post = doc["paths"]["/config"]["post"]
    assert "application/yaml" in post["requestBody"]["content"]
    assert "201" in post["responses"]
    assert "DeclarativeConfig" in doc["components"]["schemas"]


class RacedStore(EntityStore):
    """Lets another write land between the import's read and its replace, once."""

    raced = False

    async def replace_config(self, *args: Any, **kwargs: Any) -> int:
        if not self.raced:
            self.raced = True
            now = 1_700_000_000
            await self.insert("services", {"id": str(uuid.uuid4()), "created_at": now,
                                           "updated_at": now, "name": "racer", "host": "r"})
        return await super().replace_config(*args, **kwargs)


async def test_a_write_racing_the_import_makes_it_recompute_against_the_new_config(
    redis_client: aioredis.Redis,
) -> None:
    store = RacedStore(redis_client, prefix="ferry")
    document = {"_format_version": "3.0", "services": [{"name": "s", "host": "h"}]}
    async with serve_admin(store) as admin:
        status, body = await call(admin, "POST", "/config", document)
        assert status == 201, body
        # The racer (version 1) is not in the document, so the import (version 2) deleted it.
        assert body["_config_version"] == 2
        assert [s["name"] for s in body["services"]] == ["s"]
        assert [(e["version"], e["op"]) for e in await change_stream(redis_client)] == [
            ("1", "upsert"), ("2", "delete"), ("2", "upsert")
        ]
        store.raced = False
        status, body = await call(admin, "POST", "/config?expected_version=2", document)
        assert status == 409 and body["version"] == 3
