"""Ferry's ``healthchecks.passive.outlier_detection`` and ``healthchecks.max_ejection_percent``
on the control plane: defaults (off), Kong-style messages, OpenAPI, declarative config,
and what the data plane compiles from the stored entity."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from control_plane.admin_openapi import build_openapi
from control_plane.declarative import resolve_document
from control_plane.errors import SchemaViolation
from control_plane.health_view import checks_enabled
from control_plane.schemas import expand_shorthands, validate_entity
from data_plane.health.outlier import OutlierSettings, SuccessRateRule
from data_plane.health.settings import compile_health_settings

BASE = {"id": str(uuid.uuid4()), "created_at": 1_700_000_000, "updated_at": 1_700_000_000}


def valid(**fields: Any) -> dict[str, Any]:
    return validate_entity("upstreams", {**BASE, **expand_shorthands("upstreams", {"name": "a", **fields})})


def violation(**fields: Any) -> dict[str, Any]:
    with pytest.raises(SchemaViolation) as caught:
        valid(**fields)
    return caught.value.fields or {}


def test_both_are_off_by_default_as_kong_behaves() -> None:
    checks = valid()["healthchecks"]
    assert checks["passive"]["outlier_detection"] is None
    assert checks["max_ejection_percent"] == 100
    assert not checks_enabled(valid())


def test_an_empty_outlier_detection_record_gets_envoys_defaults_and_counts_as_checks_on() -> None:
    upstream = valid(healthchecks={"passive": {"outlier_detection": {}}})
    assert upstream["healthchecks"]["passive"]["outlier_detection"] == {
        "interval": 10,
        "success_rate": {"minimum_hosts": 5, "request_volume": 100, "stdev_factor": 1900},
        "failure_percentage": {"threshold": 85, "minimum_hosts": 5, "request_volume": 50},
    }
    assert checks_enabled(upstream)


def test_a_null_detector_is_off_and_stays_null() -> None:
    record = {"interval": 0.5, "success_rate": None, "failure_percentage": {"threshold": 20}}
    stored = valid(healthchecks={"passive": {"outlier_detection": record}})
    assert stored["healthchecks"]["passive"]["outlier_detection"] == {
        "interval": 0.5,
        "success_rate": None,
        "failure_percentage": {"threshold": 20, "minimum_hosts": 5, "request_volume": 50},
    }


@pytest.mark.parametrize(
    ("record", "fields"),
    [
        ({"interval": 0}, {"interval": "value must be greater than 0"}),
        ({"interval": -1}, {"interval": "value should be between 0 and 65535"}),
        ({"success_rate": {"minimum_hosts": 0}},
         {"success_rate": {"minimum_hosts": "value should be between 1 and 2147483648"}}),
        ({"success_rate": {"request_volume": 0}},
         {"success_rate": {"request_volume": "value should be between 1 and 2147483648"}}),
        ({"success_rate": {"stdev_factor": 1.9}}, {"success_rate": {"stdev_factor": "expected an integer"}}),
        ({"failure_percentage": {"threshold": 101}},
         {"failure_percentage": {"threshold": "value should be between 0 and 100"}}),
        ({"failure_percentage": {"minimum_hosts": 0}},
         {"failure_percentage": {"minimum_hosts": "value should be between 1 and 2147483648"}}),
        ({"consecutive_5xx": 5}, {"consecutive_5xx": "unknown field"}),
    ],
)
def test_bad_values_get_kong_style_messages(record: dict[str, Any], fields: dict[str, Any]) -> None:
    got = violation(healthchecks={"passive": {"outlier_detection": record}})
    assert got == {"healthchecks": {"passive": {"outlier_detection": fields}}}


@pytest.mark.parametrize("value", [-1, 100.5])
def test_max_ejection_percent_is_between_0_and_100(value: float) -> None:
    got = violation(healthchecks={"max_ejection_percent": value})
    assert got == {"healthchecks": {"max_ejection_percent": "value should be between 0 and 100"}}
    assert valid(healthchecks={"max_ejection_percent": 12.5})["healthchecks"]["max_ejection_percent"] == 12.5


def test_openapi_shows_the_records_with_their_defaults() -> None:
    schemas = build_openapi([], "test")["components"]["schemas"]
    assert {"OutlierDetection", "OutlierSuccessRate", "OutlierFailurePercentage"} <= set(schemas)
    assert schemas["OutlierSuccessRate"]["properties"]["stdev_factor"]["default"] == 1900
    assert schemas["Healthchecks"]["properties"]["max_ejection_percent"]["default"] == 100


def test_declarative_config_carries_them_and_the_data_plane_compiles_what_is_stored() -> None:
    document = {
        "_format_version": "3.0",
        "upstreams": [{
            "name": "shop",
            "healthchecks": {
                "max_ejection_percent": 50,
                "passive": {"outlier_detection": {"interval": 2, "failure_percentage": None}},
            },
        }],
    }
    (upstream,) = resolve_document(document, {}, 1_700_000_000)["upstreams"]
    settings = compile_health_settings(upstream["healthchecks"])
    assert settings.max_ejection_percent == 50
    assert settings.passive.outlier == OutlierSettings(
        interval=2, success_rate=SuccessRateRule(), failure_percentage=None
    )
