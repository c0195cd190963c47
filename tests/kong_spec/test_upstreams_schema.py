"""Kong's ``spec/01-unit/01-db/01-schema/09-upstreams_spec.lua``, case by case.

Kong's cases validate tables against its ``upstreams`` schema in process; Ferry's
equivalent is :func:`control_plane.schemas.validate_entity` (what every Admin API
write and ``POST /config`` go through), called here directly. Kong's
``process_auto_fields(..., "insert")`` (id and timestamps) is :func:`_auto`.

The spec version read is one of Kong's 1.x files; where Kong 3.x changed a fact,
the case asserts Kong 3.x's (named in the case): algorithm names
(``least-connections`` for 1.x's ``least``), the ``hash_on`` modes added since
(``path``, ``query_arg``, ``uri_capture``), the counters' range 0..255, the cookie
name rule (an HTTP token) and the quoted value in the name messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from control_plane.errors import SchemaViolation
from control_plane.schemas import expand_shorthands, validate_entity

SPEC = "spec/01-unit/01-db/01-schema/09-upstreams_spec.lua"
A_VALID_UUID = "cbb297c0-a956-486d-ad1d-f9b42df9465a"


def _auto(entity: Mapping[str, Any]) -> dict[str, Any]:
    """Kong's ``process_auto_fields(entity, "insert")``: id and timestamps, and the
    Admin API's shorthands (``hash_on`` without ``algorithm``)."""
    body = expand_shorthands("upstreams", dict(entity))
    return {"id": str(uuid.uuid4()), "created_at": 1, "updated_at": 1, **body}


def validate(entity: Mapping[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(entity, None)`` when valid, ``(None, fields)`` when not, as Kong's ``validate``."""
    try:
        return validate_entity("upstreams", _auto(entity)), None
    except SchemaViolation as exc:
        return None, dict(exc.fields or {})


def _leaf(errors: Any) -> str:
    """The first message in Kong's nested error shape (records and arrays)."""
    while not isinstance(errors, str):
        if isinstance(errors, dict):
            errors = next(iter(errors.values()))
        else:
            errors = next(item for item in errors if item is not None)
    return errors


def test_validates_a_valid_load_upstream() -> None:
    """Kong (09-upstreams_spec.lua): it("validates a valid load upstream")."""
    ok, errs = validate({
        "id": A_VALID_UUID,
        "name": "my_service",
        "hash_on": "header",
        "hash_on_header": "X-Balance",
        "hash_fallback": "cookie",
        "hash_on_cookie": "a_cookie",
    })
    assert errs is None and ok is not None
    assert ok["id"] == A_VALID_UUID
    # Kong 3.x: hash_on without algorithm selects consistent hashing.
    assert ok["algorithm"] == "consistent-hashing"


def test_invalid_name_produces_error() -> None:
    """Kong (09-upstreams_spec.lua): it("invalid name produces error")."""
    for name in ("1234", "fafa fafa", "192.168.0.1", "myserver:8000"):
        ok, errs = validate({"name": name})
        assert ok is None and errs is not None
        assert errs["name"], name


@pytest.mark.skip(
    reason="Kong case 'hash_on with 'least' algorithm produces error': this spec's 'least' "
    "algorithm predates Kong 1.3's names; Ferry's least-connections (as Kong 3.x's) has no such "
    "rule in the spec version translated, and refusing it would break working Kong 3.x configs"
)
def test_hash_on_with_least_algorithm_produces_error() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on with 'least' algorithm produces error")."""


def test_invalid_hash_on_cookie_produces_error() -> None:
    """Kong (09-upstreams_spec.lua): it("invalid hash_on_cookie produces error")."""
    ok, errs = validate({"name": "a", "hash_on_cookie": "a cookie"})
    assert ok is None and errs is not None
    assert errs["hash_on_cookie"]


@pytest.mark.parametrize(
    ("case", "healthchecks", "path"),
    [
        ("invalid healthckecks.active.timeout produces error",
         {"active": {"timeout": -1}}, ("active", "timeout")),
        ("invalid healthckecks.active.concurrency produces error",
         {"active": {"concurrency": -1}}, ("active", "concurrency")),
        ("invalid healthckecks.active.http_path produces error",
         {"active": {"http_path": "potato"}}, ("active", "http_path")),
        ("invalid healthckecks.active.healthy.interval produces error",
         {"active": {"healthy": {"interval": -1}}}, ("active", "healthy", "interval")),
        ("invalid healthckecks.active.healthy.successes produces error",
         {"active": {"healthy": {"successes": -1}}}, ("active", "healthy", "successes")),
        ("invalid healthckecks.active.healthy.http_statuses produces error",
         {"active": {"healthy": {"http_statuses": "potato"}}}, ("active", "healthy", "http_statuses")),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
def test_invalid_healthchecks_field_produces_error(
    case: str, healthchecks: dict[str, Any], path: tuple[str, ...]
) -> None:
    """Kong (09-upstreams_spec.lua): the six it("invalid healthckecks.<field> produces
    error") cases, one parameter each (Kong's spelling kept in the ids)."""
    ok, errs = validate({"name": "a", "healthchecks": healthchecks})
    assert ok is None and errs is not None
    node: Any = errs["healthchecks"]
    for part in path:
        node = node[part]
    assert node


def test_hash_on_header_makes_hash_on_header_required() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on = 'header' makes hash_on_header required")."""
    ok, errs = validate({"name": "a", "hash_on": "header"})
    assert ok is None and errs is not None
    assert errs["hash_on_header"] == "required field missing"


def test_hash_fallback_header_makes_hash_fallback_header_required() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_fallback = 'header' makes hash_fallback_header required")."""
    ok, errs = validate({"name": "a", "hash_fallback": "header"})
    assert ok is None and errs is not None
    assert errs["hash_fallback_header"] == "required field missing"


def test_hash_on_cookie_makes_hash_on_cookie_required() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on = 'cookie' makes hash_on_cookie required"),
    the first of two cases of that name (``hash_on: cookie``)."""
    ok, errs = validate({"name": "a", "hash_on": "cookie"})
    assert ok is None and errs is not None
    assert errs["hash_on_cookie"] == "required field missing"


def test_hash_on_cookie_makes_hash_on_cookie_required_for_the_fallback() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on = 'cookie' makes hash_on_cookie required"),
    the second case of that name (``hash_fallback: cookie``)."""
    ok, errs = validate({"name": "a", "hash_fallback": "cookie"})
    assert ok is None and errs is not None
    assert errs["hash_on_cookie"] == "required field missing"


def test_hash_on_none_requires_that_hash_fallback_is_also_none() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on = 'none' requires that hash_fallback is also none")."""
    ok, errs = validate({"name": "a", "hash_on": "none", "hash_fallback": "header"})
    assert ok is None and errs is not None
    assert errs["hash_fallback"] == "expected one of: none"


def test_hash_on_cookie_requires_that_hash_fallback_is_also_none() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on = 'cookie' requires that hash_fallback is also none")."""
    ok, errs = validate({"name": "a", "hash_on": "cookie", "hash_fallback": "header"})
    assert ok is None and errs is not None
    assert errs["hash_fallback"] == "expected one of: none"


def test_hash_on_must_be_different_from_hash_fallback() -> None:
    """Kong (09-upstreams_spec.lua): it("hash_on must be different from hash_fallback")."""
    for mode in ("consumer", "ip"):
        ok, errs = validate({"name": "a", "hash_on": mode, "hash_fallback": mode})
        assert ok is None and errs is not None
        assert errs["hash_fallback"].startswith("expected one of: none, ")
        assert mode not in errs["hash_fallback"].split(": ", 1)[1].split(", ")


def test_produces_defaults() -> None:
    """Kong (09-upstreams_spec.lua): it("produces defaults")."""
    ok, errs = validate({"name": "www.example.com"})
    assert errs is None and ok is not None
    uuid.UUID(ok["id"])
    assert ok["name"] == "www.example.com"
    assert ok["hash_on"] == "none"
    assert ok["hash_fallback"] == "none"
    assert ok["hash_on_cookie_path"] == "/"
    assert ok["slots"] == 10000
    healthchecks = ok["healthchecks"]
    # Ferry's additions (passive half-open ejection times, the gRPC probes' service
    # name, active.unhealthy.other_statuses, outlier detection and its cap) are left out
    # of the comparison; the last two are off by default.
    passive = {
        k: v
        for k, v in healthchecks["passive"].items()
        if not k.endswith("_ejection_time") and k != "outlier_detection"
    }
    assert healthchecks["passive"]["outlier_detection"] is None
    assert healthchecks["max_ejection_percent"] == 100
    active = {k: v for k, v in healthchecks["active"].items() if k != "grpc_service_name"}
    active["unhealthy"] = {k: v for k, v in active["unhealthy"].items() if k != "other_statuses"}
    assert active == {
        "type": "http",
        "timeout": 1,
        "concurrency": 10,
        "http_path": "/",
        # Kong 3.x lists the fields without a default as null.
        "https_sni": None,
        "https_verify_certificate": True,
        "headers": None,
        "healthy": {"interval": 0, "http_statuses": [200, 302], "successes": 0},
        "unhealthy": {
            "interval": 0,
            "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
            "tcp_failures": 0,
            "timeouts": 0,
            "http_failures": 0,
        },
    }
    assert passive == {
        "type": "http",
        "healthy": {
            "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                              300, 301, 302, 303, 304, 305, 306, 307, 308],
            "successes": 0,
        },
        "unhealthy": {"http_statuses": [429, 500, 503], "tcp_failures": 0, "timeouts": 0, "http_failures": 0},
    }


def test_name_attribute_requires_a_valid_name_with_no_port() -> None:
    """Kong (09-upstreams_spec.lua): describe("name attribute") it("requires a valid name
    with no port"). Kong 3.x quotes the name in the message."""
    assert validate({})[1] == {"name": "required field missing"}
    assert validate({"name": "123.123.123.123"})[1] == {
        "name": "Invalid name ('123.123.123.123'); no ip addresses allowed"
    }
    bad = "\\\\bad\\\\////name////"
    assert validate({"name": bad})[1] == {"name": f"Invalid name ('{bad}'); must be a valid hostname"}
    assert validate({"name": "name:80"})[1] == {"name": "Invalid name ('name:80'); no port allowed"}


def test_name_attribute_accepts_valid_names() -> None:
    """Kong (09-upstreams_spec.lua): describe("name attribute") it("accepts valid names")."""
    ok, errs = validate({"name": "valid.host.name"})
    assert errs is None and ok is not None


_SECONDS = "value should be between 0 and 65535"
_POS_INTEGER = "value should be between 1 and 2147483648"
#: Kong 3.x's counters are 0..255 (Kong 1.x: 0..2^31).
_ZERO_INTEGER = "value should be between 0 and 255"
_STATUS_CODE = "value should be between 100 and 999"
_INTEGER = "expected an integer"
_BOOLEAN = "expected a boolean"
_INVALID_HOST = "invalid value: "
_INVALID_HOST_PORT = "must not have a port"
_INVALID_IP = "must not be an IP"

_REFUSED: list[tuple[dict[str, Any], str]] = [
    ({"active": {"timeout": -1}}, _SECONDS),
    ({"active": {"timeout": 1e42}}, _SECONDS),
    ({"active": {"concurrency": 0.5}}, _INTEGER),
    ({"active": {"concurrency": 0}}, _POS_INTEGER),
    ({"active": {"concurrency": -10}}, _POS_INTEGER),
    ({"active": {"http_path": ""}}, "length must be at least 1"),
    ({"active": {"http_path": "ovo"}}, "should start with: /"),
    ({"active": {"https_sni": "127.0.0.1"}}, _INVALID_IP),
    ({"active": {"https_sni": "127.0.0.1:8080"}}, _INVALID_IP),
    ({"active": {"https_sni": "/example"}}, _INVALID_HOST),
    ({"active": {"https_sni": ".example"}}, _INVALID_HOST),
    ({"active": {"https_sni": "example."}}, _INVALID_HOST),
    ({"active": {"https_sni": "example:"}}, _INVALID_HOST),
    ({"active": {"https_sni": "mock;bin"}}, _INVALID_HOST),
    ({"active": {"https_sni": "example.com/org"}}, _INVALID_HOST),
    ({"active": {"https_sni": "example-.org"}}, _INVALID_HOST),
    ({"active": {"https_sni": "example.org-"}}, _INVALID_HOST),
    ({"active": {"https_sni": "hello..example.com"}}, _INVALID_HOST),
    ({"active": {"https_sni": "hello-.example.com"}}, _INVALID_HOST),
    ({"active": {"https_sni": "example.com:1234"}}, _INVALID_HOST_PORT),
    ({"active": {"https_verify_certificate": "ovo"}}, _BOOLEAN),
    ({"active": {"healthy": {"interval": -1}}}, _SECONDS),
    ({"active": {"healthy": {"interval": 1e42}}}, _SECONDS),
    ({"active": {"healthy": {"http_statuses": 404}}}, "expected an array"),
    ({"active": {"healthy": {"http_statuses": ["ovo"]}}}, _INTEGER),
    ({"active": {"healthy": {"http_statuses": [-1]}}}, _STATUS_CODE),
    ({"active": {"healthy": {"http_statuses": [99]}}}, _STATUS_CODE),
    ({"active": {"healthy": {"http_statuses": [1000]}}}, _STATUS_CODE),
    ({"active": {"healthy": {"http_statuses": [111.314]}}}, _INTEGER),
    ({"active": {"healthy": {"successes": 0.5}}}, _INTEGER),
    ({"active": {"healthy": {"successes": -1}}}, _ZERO_INTEGER),
    ({"active": {"unhealthy": {"interval": -1}}}, _SECONDS),
    ({"active": {"unhealthy": {"interval": 1e42}}}, _SECONDS),
    ({"active": {"unhealthy": {"http_statuses": 404}}}, "expected an array"),
    ({"active": {"unhealthy": {"http_statuses": ["ovo"]}}}, _INTEGER),
    ({"active": {"unhealthy": {"http_statuses": [-1]}}}, _STATUS_CODE),
    ({"active": {"unhealthy": {"http_statuses": [99]}}}, _STATUS_CODE),
    ({"active": {"unhealthy": {"http_statuses": [1000]}}}, _STATUS_CODE),
    ({"active": {"unhealthy": {"tcp_failures": 0.5}}}, _INTEGER),
    ({"active": {"unhealthy": {"tcp_failures": -1}}}, _ZERO_INTEGER),
    ({"active": {"unhealthy": {"timeouts": 0.5}}}, _INTEGER),
    ({"active": {"unhealthy": {"timeouts": -1}}}, _ZERO_INTEGER),
    ({"active": {"unhealthy": {"http_failures": 0.5}}}, _INTEGER),
    ({"active": {"unhealthy": {"http_failures": -1}}}, _ZERO_INTEGER),
    ({"passive": {"healthy": {"http_statuses": 404}}}, "expected an array"),
    ({"passive": {"healthy": {"http_statuses": ["ovo"]}}}, _INTEGER),
    ({"passive": {"healthy": {"http_statuses": [-1]}}}, _STATUS_CODE),
    ({"passive": {"healthy": {"http_statuses": [99]}}}, _STATUS_CODE),
    ({"passive": {"healthy": {"http_statuses": [1000]}}}, _STATUS_CODE),
    ({"passive": {"healthy": {"successes": 0.5}}}, _INTEGER),
    ({"passive": {"healthy": {"successes": -1}}}, _ZERO_INTEGER),
    ({"passive": {"unhealthy": {"http_statuses": 404}}}, "expected an array"),
    ({"passive": {"unhealthy": {"http_statuses": ["ovo"]}}}, _INTEGER),
    ({"passive": {"unhealthy": {"http_statuses": [-1]}}}, _STATUS_CODE),
    ({"passive": {"unhealthy": {"http_statuses": [99]}}}, _STATUS_CODE),
    ({"passive": {"unhealthy": {"http_statuses": [1000]}}}, _STATUS_CODE),
    ({"passive": {"unhealthy": {"tcp_failures": 0.5}}}, _INTEGER),
    ({"passive": {"unhealthy": {"tcp_failures": -1}}}, _ZERO_INTEGER),
    ({"passive": {"unhealthy": {"timeouts": 0.5}}}, _INTEGER),
    ({"passive": {"unhealthy": {"timeouts": -1}}}, _ZERO_INTEGER),
    ({"passive": {"unhealthy": {"http_failures": 0.5}}}, _INTEGER),
    ({"passive": {"unhealthy": {"http_failures": -1}}}, _ZERO_INTEGER),
]


def test_healthchecks_attribute_rejects_invalid_configurations() -> None:
    """Kong (09-upstreams_spec.lua): describe("healthchecks attribute") it("rejects invalid
    configurations"): each entry refused, its first message containing Kong's text."""
    for healthchecks, expected in _REFUSED:
        ok, errs = validate({"name": "x", "healthchecks": healthchecks})
        assert ok is None and errs is not None, healthchecks
        assert expected in _leaf(errs), (healthchecks, errs)


_ACCEPTED: list[dict[str, Any]] = [
    {"active": {"timeout": 0.5}},
    {"active": {"timeout": 1}},
    {"active": {"concurrency": 2}},
    {"active": {"http_path": "/"}},
    {"active": {"http_path": "/test"}},
    {"active": {"https_sni": "example.com"}},
    {"active": {"https_verify_certificate": False}},
    {"active": {"healthy": {"interval": 0}}},
    {"active": {"healthy": {"http_statuses": [200, 300]}}},
    {"active": {"healthy": {"successes": 2}}},
    {"active": {"unhealthy": {"interval": 0}}},
    {"active": {"unhealthy": {"http_statuses": [404]}}},
    {"active": {"unhealthy": {"tcp_failures": 3}}},
    {"active": {"unhealthy": {"timeouts": 9}}},
    {"active": {"unhealthy": {"http_failures": 2}}},
    {"passive": {"healthy": {"http_statuses": [200, 201]}}},
    {"passive": {"healthy": {"successes": 2}}},
    {"passive": {"unhealthy": {"http_statuses": [400, 500]}}},
    {"passive": {"unhealthy": {"tcp_failures": 8}}},
    {"passive": {"unhealthy": {"timeouts": 1}}},
    {"passive": {"unhealthy": {"http_failures": 2}}},
]


def test_healthchecks_attribute_accepts_inputs_with_the_correct_values() -> None:
    """Kong (09-upstreams_spec.lua): describe("healthchecks attribute") it("accepts inputs
    with the correct values")."""
    for healthchecks in _ACCEPTED:
        ok, errs = validate({"name": "x", "healthchecks": healthchecks})
        assert errs is None and ok is not None, (healthchecks, errs)
