"""The overload caps (``max_connections``, ``max_pending_requests``, ``max_requests``) in
the Admin API: off (0) by default, Kong-style messages, in ``/openapi.json``, carried by
``GET``/``POST /config`` and in the snapshot the data planes compile."""

from __future__ import annotations

import json
from typing import Any

import pytest

from control_plane.snapshot import build_snapshot
from control_plane.store import EntityStore
from data_plane.overload import OverloadCaps
from data_plane.runtime import compile_config
from tests.support.admin import AppClient, call, make

CAPS = ("max_connections", "max_pending_requests", "max_requests")


async def test_the_caps_are_off_by_default(admin: AppClient) -> None:
    upstream = await make(admin, "/upstreams", {"name": "shop"})
    assert {cap: upstream[cap] for cap in CAPS} == dict.fromkeys(CAPS, 0)


async def test_the_caps_are_set_patched_and_read_back(admin: AppClient) -> None:
    await make(admin, "/upstreams", {"name": "shop", "max_requests": 100, "max_connections": 10})
    status, patched = await call(admin, "PATCH", "/upstreams/shop", {"max_pending_requests": 5})
    assert status == 200, patched
    status, read = await call(admin, "GET", "/upstreams/shop")
    assert status == 200
    assert {cap: read[cap] for cap in CAPS} == {
        "max_connections": 10, "max_pending_requests": 5, "max_requests": 100,
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "value should be between 0 and 2147483647"),
        (2**31, "value should be between 0 and 2147483647"),
        ("many", "expected an integer"),
        (1.5, "expected an integer"),
    ],
)
@pytest.mark.parametrize("cap", CAPS)
async def test_a_cap_out_of_range_is_a_schema_violation(
    admin: AppClient, cap: str, value: Any, message: str
) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "shop", cap: value})
    assert status == 400
    assert body["name"] == "schema violation"
    assert body["fields"] == {cap: message}


async def test_the_openapi_document_shows_the_caps(admin: AppClient) -> None:
    status, doc = await call(admin, "GET", "/openapi.json")
    assert status == 200
    properties = doc["components"]["schemas"]["Upstream"]["properties"]
    for cap in CAPS:
        assert properties[cap]["default"] == 0
        assert properties[cap]["minimum"] == 0
        assert properties[cap]["maximum"] == 2**31 - 1


async def test_the_caps_travel_in_declarative_config_and_the_snapshot(
    admin: AppClient, store: EntityStore
) -> None:
    await make(admin, "/upstreams", {"name": "shop", "max_requests": 3, "max_pending_requests": 2,
                                     "max_connections": 1})
    await make(admin, "/upstreams/shop/targets", {"target": "10.0.0.1:8080"})
    await make(admin, "/services", {"name": "shop", "host": "shop"})
    status, document = await call(admin, "GET", "/config")
    assert status == 200
    (exported,) = document["upstreams"]
    assert (exported["max_connections"], exported["max_pending_requests"], exported["max_requests"]) == (1, 2, 3)
    # Posting the exported document back changes nothing (the caps round-trip).
    status, answer = await call(admin, "POST", "/config", document)
    assert status == 201, answer
    version, entities = await store.load_all()
    snapshot = build_snapshot(version, entities)
    # What a data plane receives compiles into the caps.
    decoded: dict[str, list[dict[str, Any]]] = {}
    for resource in snapshot.resources:
        decoded.setdefault(resource.kind, []).append(json.loads(resource.body))
    config = compile_config(snapshot.version, snapshot.hash, decoded)
    (upstream,) = config.upstreams.values()
    assert upstream.overload is not None
    assert upstream.overload.caps == OverloadCaps(max_connections=1, max_pending_requests=2, max_requests=3)
