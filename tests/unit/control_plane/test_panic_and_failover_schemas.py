"""The Admin API fields of issue 18 items 3 and 4: ``healthchecks.panic_threshold``
(Ferry's, Envoy's panic mode) and the target field ``failover`` (Kong 3.12's); both
off by default, validated with Kong-style messages, carried by declarative config."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from control_plane.declarative import resolve_document
from control_plane.errors import SchemaViolation
from control_plane.schemas import validate_entity

BASE = {"id": str(uuid.uuid4()), "created_at": 1_700_000_000, "updated_at": 1_700_000_000}
UPSTREAM = {"id": str(uuid.uuid4())}


def valid(kind: str, **fields: Any) -> dict[str, Any]:
    return validate_entity(kind, {**BASE, **fields})


def errors(kind: str, **fields: Any) -> dict[str, Any]:
    with pytest.raises(SchemaViolation) as caught:
        validate_entity(kind, {**BASE, **fields})
    return caught.value.fields or {}


def test_panic_threshold_defaults_to_0_off_and_keeps_what_is_given() -> None:
    assert valid("upstreams", name="a")["healthchecks"]["panic_threshold"] == 0
    kept = valid("upstreams", name="a", healthchecks={"panic_threshold": 37.5})
    assert kept["healthchecks"]["panic_threshold"] == 37.5
    assert valid("upstreams", name="a", healthchecks={"panic_threshold": 50})["healthchecks"][
        "panic_threshold"
    ] == 50


@pytest.mark.parametrize(
    ("value", "message"),
    [(101, "value should be between 0 and 100"), (-1, "value should be between 0 and 100"),
     ("x", "expected a number")],
)
def test_panic_threshold_out_of_range_gets_kongs_message(value: object, message: str) -> None:
    assert errors("upstreams", name="a", healthchecks={"panic_threshold": value}) == {
        "healthchecks": {"panic_threshold": message}
    }


def test_target_failover_defaults_to_false_and_must_be_a_boolean() -> None:
    assert valid("targets", target="10.0.0.1:80", upstream=UPSTREAM)["failover"] is False
    assert valid("targets", target="10.0.0.1:80", upstream=UPSTREAM, failover=True)["failover"] is True
    assert errors("targets", target="10.0.0.1:80", upstream=UPSTREAM, failover="yes") == {
        "failover": "expected a boolean"
    }


def test_declarative_config_carries_failover_and_panic_threshold() -> None:
    document = {
        "_format_version": "3.0",
        "upstreams": [{
            "name": "shop.internal",
            "healthchecks": {"panic_threshold": 50},
            "targets": [{"target": "10.0.0.1:8080"}, {"target": "10.0.0.2:8080", "failover": True}],
        }],
    }
    config = resolve_document(document, {}, 1_700_000_000)
    (upstream,) = config["upstreams"]
    assert upstream["healthchecks"]["panic_threshold"] == 50
    assert sorted((t["target"], t["failover"]) for t in config["targets"]) == [
        ("10.0.0.1:8080", False), ("10.0.0.2:8080", True)
    ]
