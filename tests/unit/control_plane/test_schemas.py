"""Entity schemas: Kong's defaults, ranges, rules and messages, without a server."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from control_plane.errors import SchemaViolation, lua_pretty, schema_violation_message
from control_plane.schemas import (
    RuleError,
    decode_form,
    expand_shorthands,
    merge_patch,
    normalize_target,
    parse_host,
    validate_entity,
)

ID = str(uuid.uuid4())
BASE = {"id": ID, "created_at": 1_700_000_000, "updated_at": 1_700_000_000}


def valid(kind: str, **fields: Any) -> dict[str, Any]:
    return validate_entity(kind, {**BASE, **fields})


def errors(kind: str, **fields: Any) -> dict[str, Any]:
    with pytest.raises(SchemaViolation) as caught:
        validate_entity(kind, {**BASE, **fields})
    assert caught.value.status == 400
    return caught.value.fields or {}


# --------------------------------------------------------------------- upstreams


def test_upstream_defaults_match_kong() -> None:
    upstream = valid("upstreams", name="a")
    assert upstream["algorithm"] == "round-robin"
    assert upstream["slots"] == 10000
    assert upstream["hash_on"] == upstream["hash_fallback"] == "none"
    assert upstream["hash_on_cookie_path"] == "/"
    assert upstream["use_srv_name"] is False
    assert upstream["healthchecks"]["threshold"] == 0
    assert upstream["healthchecks"]["active"]["concurrency"] == 10
    assert upstream["healthchecks"]["active"]["unhealthy"]["http_statuses"] == [
        429, 404, 500, 501, 502, 503, 504, 505,
    ]
    assert upstream["healthchecks"]["passive"]["unhealthy"]["http_statuses"] == [429, 500, 503]


@pytest.mark.parametrize("slots", [9, 65537])
def test_upstream_slots_out_of_range(slots: int) -> None:
    assert errors("upstreams", name="a", slots=slots) == {
        "slots": "value should be between 10 and 65536"
    }


@pytest.mark.parametrize("slots", [10, 65536])
def test_upstream_slots_bounds_are_inclusive(slots: int) -> None:
    assert valid("upstreams", name="a", slots=slots)["slots"] == slots


def test_upstream_fractional_seconds_are_kept_and_integers_stay_integers() -> None:
    checks = valid("upstreams", name="a", healthchecks={"active": {"timeout": 0.5}})["healthchecks"]
    assert checks["active"]["timeout"] == 0.5
    assert isinstance(checks["active"]["healthy"]["interval"], int)


def test_upstream_threshold_range() -> None:
    assert errors("upstreams", name="a", healthchecks={"threshold": 101}) == {
        "healthchecks": {"threshold": "value should be between 0 and 100"}
    }


def test_upstream_concurrency_range() -> None:
    assert errors("upstreams", name="a", healthchecks={"active": {"concurrency": 0}}) == {
        "healthchecks": {"active": {"concurrency": "value should be between 1 and 2147483648"}}
    }


def test_upstream_check_type_choices() -> None:
    assert errors("upstreams", name="a", healthchecks={"active": {"type": "udp"}}) == {
        "healthchecks": {"active": {"type": "expected one of: tcp, http, https, grpc, grpcs"}}
    }


def test_upstream_probe_path_must_be_a_path() -> None:
    assert errors("upstreams", name="a", healthchecks={"active": {"http_path": "health"}}) == {
        "healthchecks": {"active": {"http_path": "should start with: /"}}
    }


def test_upstream_https_sni_must_not_be_an_ip() -> None:
    assert errors("upstreams", name="a", healthchecks={"active": {"https_sni": "1.2.3.4"}}) == {
        "healthchecks": {"active": {"https_sni": "must not be an IP"}}
    }


def test_upstream_type_errors_use_kongs_words() -> None:
    assert errors(
        "upstreams", name=5, use_srv_name="yes", healthchecks="x", tags="t"
    ) == {
        "name": "expected a string",
        "use_srv_name": "expected a boolean",
        "healthchecks": "expected a record",
        "tags": "expected a set",
    }


def test_explicit_null_for_a_defaulted_field_is_required_field_missing() -> None:
    assert errors("upstreams", name="a", slots=None) == {"slots": "required field missing"}


def test_empty_string_is_refused_like_kong() -> None:
    assert errors("upstreams", name="a", hash_on_query_arg="") == {
        "hash_on_query_arg": "length must be at least 1"
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"hash_on": "header"}, {"hash_on_header": "required field missing"}),
        ({"hash_on": "cookie"}, {"hash_on_cookie": "required field missing"}),
        ({"hash_on": "query_arg"}, {"hash_on_query_arg": "required field missing"}),
        ({"hash_on": "uri_capture"}, {"hash_on_uri_capture": "required field missing"}),
        ({"hash_on": "ip", "hash_fallback": "header"}, {"hash_fallback_header": "required field missing"}),
        ({"hash_on": "ip", "hash_fallback": "query_arg"}, {"hash_fallback_query_arg": "required field missing"}),
        ({"hash_on": "ip", "hash_fallback": "uri_capture"}, {"hash_fallback_uri_capture": "required field missing"}),
        ({"hash_on": "path", "hash_fallback": "path"}, {"hash_fallback": "expected one of: none, consumer, ip, header, cookie, query_arg, uri_capture"}),
        ({"hash_on": "consumer", "hash_fallback": "consumer"}, {"hash_fallback": "expected one of: none, ip, header, cookie, path, query_arg, uri_capture"}),
        ({"hash_on": "cookie", "hash_on_cookie": "c", "hash_fallback": "ip"}, {"hash_fallback": "expected one of: none"}),
    ],
)
def test_upstream_hash_companion_and_fallback_rules(
    fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    found = errors("upstreams", name="a", **fields)
    entity_messages = found.pop("@entity")
    assert found == expected
    assert all(m.startswith("failed conditional validation given value of field") for m in entity_messages)


def test_upstream_hash_query_args_must_be_distinct() -> None:
    assert errors(
        "upstreams", name="a", hash_on="query_arg", hash_on_query_arg="q",
        hash_fallback="query_arg", hash_fallback_query_arg="q",
    ) == {"@entity": ["values of these fields must be distinct: 'hash_on_query_arg', 'hash_fallback_query_arg'"]}


_COOKIE_NAME = (
    "contains one or more invalid characters. ASCII control characters (0-31;127), "
    'space, tab and the characters ()<>@,;:\\"/?={}[] are not allowed.'
)


def test_upstream_header_and_cookie_names_are_tokens() -> None:
    assert errors("upstreams", name="a", hash_on="header", hash_on_header="X Bad") == {
        "hash_on_header": "bad header name 'X Bad', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
    }
    assert errors("upstreams", name="a", hash_on="cookie", hash_on_cookie="c;") == {
        "hash_on_cookie": _COOKIE_NAME
    }
    # Kong 3.x: any HTTP token is a cookie name.
    assert valid("upstreams", name="a", hash_on="cookie", hash_on_cookie="c.d!~")["hash_on_cookie"] == "c.d!~"


def test_upstream_client_certificate_is_a_foreign_key() -> None:
    assert valid("upstreams", name="a", client_certificate={"id": ID})["client_certificate"] == {"id": ID}
    assert errors("upstreams", name="a", client_certificate={"id": "x"}) == {
        "client_certificate": {"id": "expected a valid UUID"}
    }


def test_upstream_host_header_may_carry_a_port() -> None:
    assert valid("upstreams", name="a", host_header="example.com:8080")["host_header"] == "example.com:8080"


# ----------------------------------------------------------------------- targets


@pytest.mark.parametrize(
    ("given", "normalised"),
    [
        ("example.com", "example.com:8000"),
        ("example.com:81", "example.com:81"),
        ("10.0.0.1", "10.0.0.1:8000"),
        ("[::1]", "[0000:0000:0000:0000:0000:0000:0000:0001]:8000"),
        ("[2001:db8::1]:443", "[2001:0db8:0000:0000:0000:0000:0000:0001]:443"),
    ],
)
def test_target_is_normalised_with_default_port_8000(given: str, normalised: str) -> None:
    assert normalize_target(given) == normalised
    target = valid("targets", target=given, upstream={"id": ID})
    assert target["target"] == normalised and target["weight"] == 100


@pytest.mark.parametrize("given", ["a b", "10.0.0.300", "host:99999", "[::zz]"])
def test_invalid_targets_are_refused_with_kongs_message(given: str) -> None:
    assert errors("targets", target=given, upstream={"id": ID}) == {
        "target": "Invalid target; not a valid hostname or ip address"
    }


@pytest.mark.parametrize("weight", [-1, 65536])
def test_target_weight_range(weight: int) -> None:
    assert errors("targets", target="h", weight=weight, upstream={"id": ID}) == {
        "weight": "value should be between 0 and 65535"
    }


def test_target_needs_its_upstream() -> None:
    assert errors("targets", target="h") == {"upstream": "required field missing"}
    assert errors("targets", target="h", upstream={"id": "x"}) == {
        "upstream": {"id": "expected a valid UUID"}
    }


# ---------------------------------------------------------------------- services


def test_service_defaults_match_kong() -> None:
    service = valid("services", host="example.com")
    assert (service["protocol"], service["port"], service["path"], service["retries"]) == (
        "http", 80, None, 5,
    )
    assert service["connect_timeout"] == service["read_timeout"] == service["write_timeout"] == 60000
    assert service["enabled"] is True


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("retries", 32768, "value should be between 0 and 32767"),
        ("connect_timeout", 0, "value should be between 1 and 2147483646"),
        ("read_timeout", 2147483647, "value should be between 1 and 2147483646"),
        ("port", 65536, "value should be between 0 and 65535"),
        ("protocol", "ws", "expected one of: grpc, grpcs, http, https"),
        ("path", "/a//b", "must not have empty segments"),
        ("host", "bad host", "invalid value: bad host"),
        ("enabled", "true", "expected a boolean"),
    ],
)
def test_service_field_rules(field: str, value: Any, message: str) -> None:
    fields = {"host": "example.com", field: value}
    assert errors("services", **fields) == {field: message}


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://a.test", ("http", "a.test", 80, None)),
        ("https://a.test", ("https", "a.test", 443, None)),
        ("https://a.test:8443/x/y", ("https", "a.test", 8443, "/x/y")),
        ("a.test:443", ("https", "a.test", 443, None)),
    ],
)
def test_service_url_shorthand(url: str, expected: tuple[Any, ...]) -> None:
    service = valid("services", **expand_shorthands("services", {"url": url}))
    assert (service["protocol"], service["host"], service["port"], service["path"]) == expected


def test_service_url_must_be_a_string() -> None:
    with pytest.raises(SchemaViolation) as caught:
        expand_shorthands("services", {"url": 5})
    assert caught.value.fields == {"url": "expected a string"}


# ------------------------------------------------------------------------ routes


def test_route_defaults_match_kong() -> None:
    route = valid("routes", paths=["/"])
    assert route["protocols"] == ["http", "https"]
    assert route["https_redirect_status_code"] == 426
    assert (route["strip_path"], route["preserve_host"], route["path_handling"]) == (True, False, "v0")
    assert (route["request_buffering"], route["response_buffering"]) == (True, True)
    assert route["regex_priority"] == 0 and route["service"] is None


def test_route_http_needs_something_to_match() -> None:
    assert errors("routes", protocols=["http"]) == {
        "@entity": ["must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'"]
    }
    assert valid("routes", protocols=["http"], headers={"x-version": ["2"]})["headers"] == {"x-version": ["2"]}


def test_route_snis_need_https() -> None:
    assert errors("routes", protocols=["http"], paths=["/"], snis=["a.test"]) == {
        "snis": "length must be 0",
        "@entity": ["'snis' can only be set when 'protocols' is 'grpcs', 'https' or 'tls'"],
    }
    assert valid("routes", snis=["a.test"])["snis"] == ["a.test"]


def test_route_sets_drop_duplicates() -> None:
    route = valid("routes", methods=["GET", "GET", "POST"], protocols=["http", "http"])
    assert route["methods"] == ["GET", "POST"] and route["protocols"] == ["http"]


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("*.a.*", "invalid wildcard: must have at most one wildcard"),
        ("a.*.b", "invalid wildcard: must be placed at leftmost or rightmost label"),
        ("bad host", "invalid hostname: bad host"),
    ],
)
def test_route_hosts(host: str, message: str) -> None:
    assert errors("routes", hosts=[host]) == {"hosts": [message]}


def test_route_hosts_accept_wildcards_and_ports() -> None:
    assert valid("routes", hosts=["*.a.test", "a.*", "b.test:8000"])["hosts"] == [
        "*.a.test", "a.*", "b.test:8000",
    ]


def test_route_header_host_is_refused() -> None:
    assert errors("routes", paths=["/"], headers={"Host": ["a"]}) == {
        "headers": "cannot contain 'host' header, which must be specified in the 'hosts' attribute"
    }


def test_route_redirect_code_choices() -> None:
    assert errors("routes", paths=["/"], https_redirect_status_code=303) == {
        "https_redirect_status_code": "expected one of: 426, 301, 302, 307, 308"
    }


def test_route_stream_fields_must_stay_null() -> None:
    assert errors("routes", paths=["/"], destinations=[{"ip": "1.2.3.4"}]) == {
        "destinations": "cannot set 'destinations' when 'protocols' is 'http' or 'https'"
    }


def test_route_path_percent_encoding_must_be_valid() -> None:
    assert errors("routes", paths=["/a%zz"]) == {"paths": ["invalid url-encoded value: '%zz'"]}


# ------------------------------------------------------------- common mechanics


def test_id_must_be_a_uuid_and_timestamps_positive() -> None:
    assert errors("services", host="a", id="abc", created_at=0) == {
        "id": "expected a valid UUID",
        "created_at": "expected a valid timestamp",
    }


def test_messages_follow_kongs_format() -> None:
    assert schema_violation_message({"a": "x"}) == "schema violation (a: x)"
    assert schema_violation_message({"b": "y", "a": "x", "@entity": ["e"]}) == (
        "3 schema violations (e; a: x; b: y)"
    )
    assert schema_violation_message({"p": [None, "bad"]}) == "schema violation (p.2: bad)"
    assert lua_pretty({"name": "x"}) == '{name="x"}'
    assert lua_pretty({"upstream": {"id": "u"}, "target": "t"}) == '{target="t",upstream={id="u"}}'


def test_parse_host_kinds() -> None:
    assert parse_host("a.test").kind == "name"
    assert parse_host("1.2.3.4:5").port == 5
    assert parse_host("[::1]:5").kind == "ipv6"
    with pytest.raises(RuleError, match="invalid port number"):
        parse_host("a.test:70000")
    with pytest.raises(RuleError, match="invalid hostname"):
        parse_host("-a-.test")


def test_merge_patch_merges_records_but_replaces_arrays_and_maps() -> None:
    current = valid(
        "upstreams", name="a", tags=["x", "y"],
        healthchecks={"active": {"timeout": 3, "headers": {"a": ["1"]}}},
    )
    merged = merge_patch(
        "upstreams", current,
        {"tags": ["z"], "healthchecks": {"active": {"headers": {"b": ["2"]}, "healthy": {"interval": 9}}}},
    )
    active = merged["healthchecks"]["active"]
    assert merged["tags"] == ["z"]
    assert active["timeout"] == 3 and active["headers"] == {"b": ["2"]}
    assert active["healthy"] == {"interval": 9, "http_statuses": [200, 302], "successes": 0}


def test_decode_form_types_values_by_schema() -> None:
    decoded = decode_form(
        "upstreams",
        [
            ("name", "a"), ("slots", "20"), ("use_srv_name", "true"), ("tags[]", "x"),
            ("tags[]", "y"), ("healthchecks.active.timeout", "1.5"),
            ("healthchecks.active.healthy.http_statuses[1]", "200"),
            ("healthchecks.active.healthy.http_statuses[2]", "201"), ("host_header", ""),
        ],
    )
    assert decoded == {
        "name": "a", "slots": 20, "use_srv_name": True, "tags": ["x", "y"],
        "healthchecks": {"active": {"timeout": 1.5, "healthy": {"http_statuses": [200, 201]}}},
        "host_header": None,
    }


def test_decode_form_single_value_for_an_array_field_becomes_an_array() -> None:
    assert decode_form("routes", [("paths", "/a"), ("service.id", ID)]) == {
        "paths": ["/a"], "service": {"id": ID},
    }


def test_decode_form_leaves_unconvertible_values_for_validation() -> None:
    decoded = decode_form("upstreams", [("name", "a"), ("slots", "many")])
    assert decoded["slots"] == "many"
    assert errors("upstreams", **decoded) == {"slots": "expected an integer"}


# ---------------------------------------------- upstream extensions (Envoy's ideas)


def test_upstream_slow_start_and_retry_budget_are_off_by_default() -> None:
    upstream = valid("upstreams", name="a")
    assert upstream["slow_start"] == 0
    assert upstream["retry_budget_percent"] is None


def test_upstream_slow_start_and_retry_budget_accept_fractions() -> None:
    upstream = valid("upstreams", name="a", slow_start=2.5, retry_budget_percent=20)
    assert upstream["slow_start"] == 2.5
    assert upstream["retry_budget_percent"] == 20


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("slow_start", -1, "value should be between 0 and 3600"),
        ("slow_start", 3601, "value should be between 0 and 3600"),
        ("retry_budget_percent", 101, "value should be between 0 and 100"),
        ("retry_budget_percent", "many", "expected a number"),
    ],
)
def test_upstream_extension_out_of_range_is_a_schema_violation(field: str, value: Any, message: str) -> None:
    assert errors("upstreams", name="a", **{field: value}) == {field: message}


def test_sticky_sessions_and_hash_balance_factor_are_off_by_default() -> None:
    upstream = valid("upstreams", name="a")
    assert upstream["sticky_sessions_cookie"] is None
    assert upstream["sticky_sessions_cookie_path"] == "/"
    assert upstream["hash_balance_factor"] == 0


def test_sticky_sessions_upstream_requires_its_cookie_as_kong_3_11() -> None:
    assert errors("upstreams", name="a", algorithm="sticky-sessions") == {
        "sticky_sessions_cookie": "required field missing",
        "@entity": ["failed conditional validation given value of field 'algorithm'"],
    }
    upstream = valid(
        "upstreams", name="a", algorithm="sticky-sessions",
        sticky_sessions_cookie="srv", sticky_sessions_cookie_path="/shop",
    )
    assert (upstream["sticky_sessions_cookie"], upstream["sticky_sessions_cookie_path"]) == ("srv", "/shop")


def test_sticky_sessions_upstream_hashes_on_nothing() -> None:
    assert errors(
        "upstreams", name="a", algorithm="sticky-sessions", sticky_sessions_cookie="srv", hash_on="ip"
    ) == {
        "hash_on": "expected one of: none",
        "@entity": ["failed conditional validation given value of field 'algorithm'"],
    }


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"sticky_sessions_cookie": "a b"}, "sticky_sessions_cookie", "contains one or more invalid characters"),
        ({"sticky_sessions_cookie_path": "/a;b"}, "sticky_sessions_cookie_path", "invalid cookie path"),
        ({"sticky_sessions_cookie_path": "nope"}, "sticky_sessions_cookie_path", "should start with: /"),
    ],
)
def test_sticky_cookie_name_and_path_follow_the_hash_cookie_rules(
    fields: dict[str, Any], field: str, message: str
) -> None:
    found = errors("upstreams", name="a", algorithm="sticky-sessions", **{"sticky_sessions_cookie": "s", **fields})
    assert str(found[field]).startswith(message)


@pytest.mark.parametrize("factor", [1, 99, -1, 2**31 + 1])
def test_hash_balance_factor_is_0_or_at_least_100(factor: int) -> None:
    assert errors("upstreams", name="a", algorithm="consistent-hashing", hash_balance_factor=factor) == {
        "hash_balance_factor": "must be 0 (off) or between 100 and 2147483648"
    }


def test_hash_balance_factor_only_with_consistent_hashing() -> None:
    assert valid("upstreams", name="a", algorithm="consistent-hashing", hash_on="ip", hash_balance_factor=125)["hash_balance_factor"] == 125
    assert valid("upstreams", name="a", algorithm="round-robin", hash_balance_factor=0)["hash_balance_factor"] == 0
    assert errors("upstreams", name="a", algorithm="least-connections", hash_balance_factor=150) == {
        "hash_balance_factor": "only allowed with algorithm 'consistent-hashing'",
        "@entity": ["failed conditional validation given value of field 'algorithm'"],
    }


def test_route_header_values_must_be_given_and_regexes_must_compile() -> None:
    # Both would otherwise reach every data plane as a config it cannot apply.
    assert errors("routes", paths=["/"], headers={"x-a": []}) == {
        "headers": "length must be at least 1"
    }
    fields = errors("routes", paths=["/"], headers={"x-a": ["~*("]})
    assert str(fields["headers"]).startswith("invalid regex: '('")
    assert valid("routes", paths=["/"], headers={"x-a": ["~*^v(?<n>\\d)$", "plain"]})["headers"] == {
        "x-a": ["~*^v(?<n>\\d)$", "plain"]
    }


# ------------------------------------------------- string bounds, NaN, shorthands


def test_every_string_has_kongs_only_length_bound_at_least_one() -> None:
    # Kong's schema gives every string len_min = 1 and, in typedefs, no len_max;
    # the implicit minimum is checked before a field's own validator.
    assert errors("upstreams", name="a", hash_on="header", hash_on_header="") == {
        "hash_on_header": "length must be at least 1"
    }
    assert errors("upstreams", name="a", hash_on="cookie", hash_on_cookie="") == {
        "hash_on_cookie": "length must be at least 1"
    }
    checks = {"active": {"headers": {"x-probe": [""]}}}
    assert errors("upstreams", name="a", healthchecks=checks) == {
        "healthchecks": {"active": {"headers": "length must be at least 1"}}
    }
    assert errors("routes", paths=["/"], headers={"x-a": [""]}) == {
        "headers": "length must be at least 1"
    }
    long = "a" * 10_000
    assert valid("services", host="example.com", name=long, tags=[long])["name"] == long


def test_nan_is_never_between_two_bounds() -> None:
    nan = float("nan")
    assert errors("upstreams", name="a", healthchecks={"threshold": nan}) == {
        "healthchecks": {"threshold": "value should be between 0 and 100"}
    }
    assert errors("upstreams", name="a", slow_start=nan) == {
        "slow_start": "value should be between 0 and 3600"
    }


def test_service_url_that_cannot_be_split_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation) as caught:
        expand_shorthands("services", {"url": "]Y"})
    assert caught.value.fields == {"url": "could not parse url. Invalid IPv6 URL"}


def test_decode_form_array_indexes_that_are_not_ascii_numbers_do_not_crash() -> None:
    decoded = decode_form("routes", [("paths[²]", "/a"), ("paths[1]", "/b"), ("paths[" + "9" * 5000 + "]", "/c")])
    assert sorted(decoded["paths"]) == ["/a", "/b", "/c"]


# ------------------------------------ newlines, control characters, surrogates
# Issue 12: what the CP accepts, every DP of the same version applies. Each value below
# got a 201 and then was refused by every data plane (a NACK), put on a request (a
# request split) or made the Admin API answer 500.

_HEADER_NAME = "bad header name '{}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
_PATH = "invalid path: '{}' (characters outside of the reserved list of RFC 3986 found)"
_NAME = "invalid value '{}': the only accepted ascii characters are alphanumerics or ., -, _, and ~"
_TAG = "invalid tag '{}': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"
_TARGET = "Invalid target; not a valid hostname or ip address"
_HASHING = {"name": "a", "algorithm": "consistent-hashing"}


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        # Python's "$" also matches before a final "\n": every pattern used with it
        # let a trailing newline through.
        ("upstreams", {**_HASHING, "hash_on": "header", "hash_on_header": "x-a\n"},
         {"hash_on_header": _HEADER_NAME.format("x-a\n")}),
        ("upstreams", {**_HASHING, "hash_on": "ip", "hash_fallback": "header",
                       "hash_fallback_header": "x-b\n"},
         {"hash_fallback_header": _HEADER_NAME.format("x-b\n")}),
        ("upstreams", {**_HASHING, "hash_on": "cookie", "hash_on_cookie": "c\n"},
         {"hash_on_cookie": _COOKIE_NAME}),
        ("upstreams", {"name": "a", "hash_on_cookie_path": "/a\n"},
         {"hash_on_cookie_path": _PATH.format("/a\n")}),
        ("upstreams", {"name": "a", "healthchecks": {"active": {"http_path": "/a\n"}}},
         {"healthchecks": {"active": {"http_path": _PATH.format("/a\n")}}}),
        ("upstreams", {"name": "a", "healthchecks": {"active": {"headers": {"x-a\n": ["v"]}}}},
         {"healthchecks": {"active": {"headers": _HEADER_NAME.format("x-a\n")}}}),
        ("upstreams", {"name": "a\n"}, {"name": "Invalid name ('a\n'); must be a valid hostname"}),
        ("upstreams", {"name": "a", "host_header": "a.example\n"},
         {"host_header": "invalid hostname: a.example\n"}),
        ("upstreams", {"name": "a", "host_header": "a.example:80\n"},
         {"host_header": "invalid hostname: a.example:80\n"}),
        ("upstreams", {"name": "a", "host_header": "[::1]:80\n"},
         {"host_header": "invalid ipv6 address: [::1]:80\n"}),
        ("upstreams", {"name": "a", "tags": ["t\n"]}, {"tags": [_TAG.format("t\n")]}),
        ("services", {"host": "example.com", "path": "/a\n"}, {"path": _PATH.format("/a\n")}),
        ("services", {"host": "example.com\n"}, {"host": "invalid value: example.com\n"}),
        ("services", {"host": "example.com", "name": "s\n"}, {"name": _NAME.format("s\n")}),
        ("routes", {"paths": ["/"], "name": "r\n"}, {"name": _NAME.format("r\n")}),
        ("routes", {"methods": ["GET\n"]}, {"methods": ["invalid value: GET\n"]}),
        ("routes", {"hosts": ["a.example\n"]}, {"hosts": ["invalid hostname: a.example\n"]}),
        ("routes", {"hosts": ["a.example:80\n"]}, {"hosts": ["invalid hostname: a.example:80\n"]}),
        ("routes", {"headers": {"x-a\n": ["v"]}}, {"headers": _HEADER_NAME.format("x-a\n")}),
        ("routes", {"protocols": ["https"], "snis": ["a.example\n"]},
         {"snis": ["invalid value: a.example\n"]}),
        ("targets", {"upstream": {"id": ID}, "target": "a.example:80\n"},
         {"target": _TARGET}),
        ("targets", {"upstream": {"id": ID}, "target": "10.0.0.1:80\n"},
         {"target": _TARGET}),
        # "\d" is any Unicode digit, and int() reads "٨٠" as 80: a Host header of
        # "a.example:٨٠" went to the targets, IDNA-mangled.
        ("upstreams", {"name": "a", "host_header": "a.example:\u0668\u0660"},
         {"host_header": "invalid hostname: a.example:\u0668\u0660"}),
        ("routes", {"hosts": ["a.example:\u0668\u0660"]},
         {"hosts": ["invalid hostname: a.example:\u0668\u0660"]}),
    ],
)
def test_a_trailing_newline_is_refused_like_any_other_bad_character(
    kind: str, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    assert errors(kind, **fields) == expected


def test_what_was_valid_before_the_newline_is_still_valid() -> None:
    upstream = valid("upstreams", **_HASHING, hash_on="header", hash_on_header="x-a", host_header="a.example:80",
                     tags=["t", "é"], healthchecks={"active": {"http_path": "/a", "headers": {"x-a": ["v\tw"]}}})
    assert (upstream["hash_on_header"], upstream["host_header"]) == ("x-a", "a.example:80")
    route = valid("routes", name="r~é", methods=["GET"], hosts=["a.example:80", "[::1]:80", "*.b.example"],
                  protocols=["https"], snis=["a.example"], headers={"x-a": ["v"]})
    assert route["hosts"] == ["a.example:80", "[::1]:80", "*.b.example"]
    assert valid("services", host="example.com", path="/a;b=c")["path"] == "/a;b=c"
    assert normalize_target("10.0.0.1:80") == "10.0.0.1:80"


@pytest.mark.parametrize("path", ["/a;b", "/;", "/a%3B;"])
def test_a_cookie_path_with_a_semicolon_is_refused(path: str) -> None:
    # Written into "Set-Cookie: name=uuid; Path=<path>; HttpOnly": a ";" would start
    # another attribute, and every data plane refuses the config (the same check).
    assert errors("upstreams", name="a", hash_on_cookie_path=path) == {
        "hash_on_cookie_path": f"invalid cookie path: '{path}' (';' is not allowed)"
    }


@pytest.mark.parametrize("path", ["/", "/shop", "/a%3Bb", "/a:b@c!$&'()*+,=~"])
def test_every_cookie_path_the_control_plane_accepts_a_data_plane_applies(path: str) -> None:
    from data_plane.hash_key import compile_hash_spec

    upstream = valid("upstreams", **_HASHING, hash_on="cookie", hash_on_cookie="c", hash_on_cookie_path=path)
    spec = compile_hash_spec(upstream)
    assert spec is not None


@pytest.mark.parametrize("path", ["/a;b", "/a\n", "/a\r\nX: y", "/é", "a", "/a\x00"])
def test_both_planes_refuse_the_same_cookie_paths(path: str) -> None:
    from data_plane.hash_key import compile_hash_spec

    assert "hash_on_cookie_path" in errors("upstreams", name="a", hash_on_cookie_path=path)
    with pytest.raises(ValueError, match="hash_on_cookie_path"):
        compile_hash_spec({**_HASHING, "hash_on": "cookie", "hash_on_cookie": "c", "hash_on_cookie_path": path})


@pytest.mark.parametrize("value", ["v\r\nX-Injected: 1", "v\n", "\x00", "v\x7f"])
def test_a_header_value_with_a_control_character_is_refused(value: str) -> None:
    message = f"bad header value '{value}': control characters are not allowed"
    assert errors("routes", paths=["/"], headers={"x-a": [value]}) == {"headers": message}
    assert errors("routes", paths=["/"], headers={"x-a": ["~*" + value]}) == {"headers": message.replace(
        f"'{value}'", f"'~*{value}'")}
    # A probe header would split the probe request (aiohttp refuses to send it).
    assert errors("upstreams", name="a", healthchecks={"active": {"headers": {"x-a": [value]}}}) == {
        "healthchecks": {"active": {"headers": message}}
    }


_LONE = "invalid unicode: a lone surrogate at position {}"


@pytest.mark.parametrize(
    ("kind", "fields", "expected"),
    [
        ("routes", {"paths": ["/ok", "/\ud800"]}, {"paths": [None, _LONE.format(1)]}),
        ("routes", {"paths": ["~/\udfff"]}, {"paths": [_LONE.format(2)]}),
        ("routes", {"paths": ["/"], "headers": {"x-a": ["v\ud800"]}}, {"headers": _LONE.format(1)}),
        ("routes", {"paths": ["/"], "headers": {"x-\ud800": ["v"]}},
         {"headers": "invalid unicode in a key: a lone surrogate at position 2"}),
        ("routes", {"paths": ["/"], "name": "r\ud800"}, {"name": _LONE.format(1)}),
        ("routes", {"hosts": ["\ud800.example"]}, {"hosts": [_LONE.format(0)]}),
        ("upstreams", {"name": "a", "host_header": "a\ud800"}, {"host_header": _LONE.format(1)}),
        ("upstreams", {"name": "a", "tags": ["ok", "t\ude00\ud83d"]}, {"tags": [None, _LONE.format(1)]}),
        ("upstreams", {"name": "a", "hash_on": "query_arg", "hash_on_query_arg": "q\ud800"},
         {"hash_on_query_arg": _LONE.format(1)}),
        ("upstreams", {"name": "a", "hash_on": "uri_capture", "hash_on_uri_capture": "\ud800"},
         {"hash_on_uri_capture": _LONE.format(0)}),
        ("upstreams", {"name": "a", "healthchecks": {"active": {"headers": {"x-a": ["\ud800"]}}}},
         {"healthchecks": {"active": {"headers": _LONE.format(0)}}}),
        ("upstreams", {"name": "a", "algorithm": "\ud800"}, {"algorithm": _LONE.format(0)}),
        ("upstreams", {"name": "a", "\ud800": 1},
         {"@entity": ["invalid unicode in a key: a lone surrogate at position 0"]}),
        ("services", {"host": "example.com", "name": "s\ud800"}, {"name": _LONE.format(1)}),
        ("services", {"host": "example.com", "path": "/\ud800"}, {"path": _LONE.format(1)}),
        ("targets", {"upstream": {"id": ID}, "target": "a\ud800"}, {"target": _LONE.format(1)}),
    ],
)
def test_a_lone_surrogate_is_a_schema_violation_naming_the_field_not_a_crash(
    kind: str, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    # It has no UTF-8 form: pydantic failed rendering a message that quoted it (a
    # 500), or it was accepted and could be neither stored nor applied by a DP.
    found = errors(kind, **fields)
    assert found == expected
    schema_violation_message(found).encode("utf-8")  # the answer itself is text


def test_a_character_beyond_the_bmp_is_valid_text() -> None:
    # What a JSON surrogate pair ("\\ud83d\\ude00") decodes to.
    assert valid("services", host="example.com", name="s\U0001f600", tags=["\U0001f600"])["tags"] == [
        "\U0001f600"
    ]


# ------------------------------------------------------------- TLS entities


def test_https_service_takes_tls_fields_and_http_refuses_each() -> None:
    from control_plane.schemas.services import TLS_FIELDS

    values: dict[str, Any] = {
        "client_certificate": {"id": ID}, "tls_verify": True, "tls_verify_depth": 3, "ca_certificates": [ID],
    }
    service = valid("services", host="h", protocol="https", **values)
    assert {name: service[name] for name in TLS_FIELDS} == values
    for name in TLS_FIELDS:
        assert errors("services", host="h", **{name: values[name]}) == {
            name: "value must be null",
            "@entity": ["failed conditional validation given value of field 'protocol'"],
        }


def test_service_ca_certificates_are_uuids() -> None:
    assert errors("services", host="h", protocol="https", ca_certificates=[ID, "x"]) == {
        "ca_certificates": [None, "expected a valid UUID"]
    }


def test_sni_names_are_stored_lower_case() -> None:
    assert valid("snis", name="*.Example.COM", certificate={"id": ID})["name"] == "*.example.com"


def test_certificate_keeps_no_snis_field() -> None:
    from tests.support.tls import pem_pair

    pair = pem_pair()
    assert errors("certificates", cert=pair.cert, key=pair.key, snis=["a.com"]) == {"snis": "unknown field"}


def test_ca_certificate_digest_follows_the_certificate_whatever_the_body_says() -> None:
    from ferry_shared.certificates import cert_digest
    from tests.support.tls import pem_pair

    ca = pem_pair("CA", is_ca=True)
    assert valid("ca_certificates", cert=ca.cert, cert_digest="forged")["cert_digest"] == cert_digest(ca.cert)
