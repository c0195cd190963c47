"""The Admin API over a real Redis and a real aiohttp server: Kong's behaviour, end to end."""

from __future__ import annotations

import uuid
from typing import Any

from control_plane.redis_connection import create_redis_client
from control_plane.store import EntityStore
from tests.support.admin import DATA_PLANES, AppClient, call, make, serve_admin

Client = AppClient


def violation(fields: dict[str, Any], message: str) -> dict[str, Any]:
    return {"code": 2, "name": "schema violation", "message": message, "fields": fields}


# ------------------------------------------------------------------ upstreams


async def test_upstream_post_returns_201_with_kongs_defaults(admin: Client) -> None:
    upstream = await make(admin, "/upstreams", {"name": "backend.internal"})
    assert uuid.UUID(upstream["id"])
    assert isinstance(upstream["created_at"], int) and upstream["created_at"] > 0
    assert upstream["updated_at"] >= upstream["created_at"]
    expected = {
        "name": "backend.internal",
        "algorithm": "round-robin",
        "hash_on": "none",
        "hash_fallback": "none",
        "hash_on_cookie_path": "/",
        "slots": 10000,
        "tags": None,
        "host_header": None,
        "client_certificate": None,
        "use_srv_name": False,
        "hash_on_header": None,
        # Kong 3.11's sticky sessions (used by algorithm sticky-sessions only).
        "sticky_sessions_cookie": None,
        "sticky_sessions_cookie_path": "/",
        # Ferry's: consistent hashing's bounded load (Envoy's), off.
        "hash_balance_factor": 0,
    }
    assert {key: upstream[key] for key in expected} == expected
    checks = upstream["healthchecks"]
    assert checks["threshold"] == 0
    assert checks["active"] == {
        "type": "http",
        "timeout": 1,
        "concurrency": 10,
        "http_path": "/",
        "https_sni": None,
        "https_verify_certificate": True,
        "headers": None,
        # Ferry's field: the service a grpc/grpcs probe asks about (Kong has none).
        "grpc_service_name": None,
        "healthy": {"interval": 0, "http_statuses": [200, 302], "successes": 0},
        "unhealthy": {
            "interval": 0,
            "http_statuses": [429, 404, 500, 501, 502, 503, 504, 505],
            "tcp_failures": 0,
            "timeouts": 0,
            "http_failures": 0,
            # Ferry's: statuses in neither list count as failures when true (Kong #14861).
            "other_statuses": False,
        },
    }
    assert checks["passive"] == {
        "type": "http",
        "healthy": {
            "http_statuses": [200, 201, 202, 203, 204, 205, 206, 207, 208, 226,
                              300, 301, 302, 303, 304, 305, 306, 307, 308],
            "successes": 0,
        },
        "unhealthy": {"http_statuses": [429, 500, 503], "tcp_failures": 0, "timeouts": 0, "http_failures": 0},
        # Ferry's half-open breaker (Envoy's outlier ejection times), beyond Kong's fields.
        "base_ejection_time": 30,
        "max_ejection_time": 300,
        # Ferry's outlier detection (Envoy's), off by default.
        "outlier_detection": None,
    }
    assert checks["max_ejection_percent"] == 100


async def test_upstream_slots_out_of_range_is_a_schema_violation_with_kongs_message(
    admin: Client,
) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "slots": 5})
    assert status == 400
    assert body == violation(
        {"slots": "value should be between 10 and 65536"},
        "schema violation (slots: value should be between 10 and 65536)",
    )


async def test_upstream_slots_as_a_string_in_json_is_expected_an_integer(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "slots": "20"})
    assert status == 400
    assert body["fields"] == {"slots": "expected an integer"}


async def test_upstream_without_name_is_required_field_missing(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {})
    assert status == 400
    assert body == violation(
        {"name": "required field missing"}, "schema violation (name: required field missing)"
    )


async def test_upstream_name_that_is_an_ip_is_refused(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "10.0.0.1"})
    assert status == 400
    assert body["fields"] == {"name": "Invalid name ('10.0.0.1'); no ip addresses allowed"}


async def test_upstream_name_with_a_port_is_refused(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "svc.local:80"})
    assert status == 400
    assert body["fields"] == {"name": "Invalid name ('svc.local:80'); no port allowed"}


async def test_upstream_name_that_is_not_a_hostname_is_refused(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "not a host"})
    assert status == 400
    assert body["fields"] == {"name": "Invalid name ('not a host'); must be a valid hostname"}


async def test_upstream_unknown_algorithm_lists_the_choices(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "algorithm": "random"})
    assert status == 400
    assert body["fields"] == {
        "algorithm": (
            "expected one of: round-robin, consistent-hashing, least-connections, latency,"
            " sticky-sessions"
        )
    }


async def test_unknown_field_is_a_schema_violation(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "colour": "blue"})
    assert status == 400
    assert body == violation({"colour": "unknown field"}, "schema violation (colour: unknown field)")


async def test_two_errors_are_counted_in_the_message(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "slots": 1, "x": 1})
    assert status == 400
    assert body["message"] == (
        "2 schema violations (slots: value should be between 10 and 65536; x: unknown field)"
    )


async def test_nested_healthcheck_errors_are_nested_like_kong(admin: Client) -> None:
    body_in = {"name": "a", "healthchecks": {"active": {"timeout": 70000, "healthy": {"successes": 256}}}}
    status, body = await call(admin, "POST", "/upstreams", body_in)
    assert status == 400
    assert body["fields"] == {
        "healthchecks": {
            "active": {
                "timeout": "value should be between 0 and 65535",
                "healthy": {"successes": "value should be between 0 and 255"},
            }
        }
    }
    assert body["message"] == (
        "2 schema violations (healthchecks.active.healthy.successes: value should be between 0 "
        "and 255; healthchecks.active.timeout: value should be between 0 and 65535)"
    )


async def test_http_status_out_of_range_reports_its_position(admin: Client) -> None:
    body_in = {"name": "a", "healthchecks": {"passive": {"unhealthy": {"http_statuses": [500, 1000]}}}}
    status, body = await call(admin, "POST", "/upstreams", body_in)
    assert status == 400
    assert body["fields"] == {
        "healthchecks": {"passive": {"unhealthy": {"http_statuses": [None, "value should be between 100 and 999"]}}}
    }


async def test_hash_on_header_without_its_header_is_an_entity_violation(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "hash_on": "header"})
    assert status == 400
    assert body == violation(
        {
            "@entity": ["failed conditional validation given value of field 'hash_on'"],
            "hash_on_header": "required field missing",
        },
        "2 schema violations (failed conditional validation given value of field 'hash_on'; "
        "hash_on_header: required field missing)",
    )


async def test_hash_fallback_must_be_none_when_hash_on_is_none(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams", {"name": "a", "hash_fallback": "ip"})
    assert status == 400
    assert body["fields"] == {
        "@entity": ["failed conditional validation given value of field 'hash_on'"],
        "hash_fallback": "expected one of: none",
    }


async def test_hash_fallback_must_differ_from_hash_on_ip(admin: Client) -> None:
    status, body = await call(
        admin, "POST", "/upstreams", {"name": "a", "hash_on": "ip", "hash_fallback": "ip"}
    )
    assert status == 400
    assert body["fields"]["hash_fallback"] == (
        "expected one of: none, consumer, header, cookie, path, query_arg, uri_capture"
    )


async def test_hash_on_and_fallback_headers_must_be_distinct(admin: Client) -> None:
    upstream = {
        "name": "a", "hash_on": "header", "hash_on_header": "X-A",
        "hash_fallback": "header", "hash_fallback_header": "X-A",
    }
    status, body = await call(admin, "POST", "/upstreams", upstream)
    assert status == 400
    assert body["fields"] == {
        "@entity": ["values of these fields must be distinct: 'hash_on_header', 'hash_fallback_header'"]
    }


async def test_valid_consistent_hashing_upstream_is_accepted(admin: Client) -> None:
    upstream = await make(admin, "/upstreams", {
        "name": "a", "algorithm": "consistent-hashing", "hash_on": "cookie",
        "hash_on_cookie": "session", "hash_on_cookie_path": "/app",
    })
    assert upstream["hash_on_cookie"] == "session"


async def test_upstream_name_is_unique(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, body = await call(admin, "POST", "/upstreams", {"name": "a"})
    assert status == 409
    assert body == {
        "code": 5,
        "name": "unique constraint violation",
        "message": "UNIQUE violation detected on '{name=\"a\"}'",
        "fields": {"name": "a"},
    }


async def test_post_with_an_existing_id_is_a_primary_key_violation(admin: Client) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    status, body = await call(admin, "POST", "/upstreams", {"name": "b", "id": upstream["id"]})
    assert status == 400
    assert body["code"] == 3 and body["name"] == "primary key violation"


async def test_upstream_is_addressable_by_id_and_by_name(admin: Client) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    for key in (upstream["id"], "a"):
        status, body = await call(admin, "GET", f"/upstreams/{key}")
        assert (status, body) == (200, upstream)


async def test_patch_is_partial_merges_records_and_revalidates(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a", "healthchecks": {"active": {"timeout": 3}}})
    status, body = await call(
        admin, "PATCH", "/upstreams/a", {"healthchecks": {"active": {"healthy": {"interval": 5}}}}
    )
    assert status == 200
    assert body["healthchecks"]["active"]["timeout"] == 3
    assert body["healthchecks"]["active"]["healthy"]["interval"] == 5
    assert body["healthchecks"]["active"]["healthy"]["http_statuses"] == [200, 302]
    status, body = await call(admin, "PATCH", "/upstreams/a", {"slots": 70000})
    assert status == 400
    assert body["fields"] == {"slots": "value should be between 10 and 65536"}


async def test_patch_of_a_missing_entity_is_404(admin: Client) -> None:
    status, body = await call(admin, "PATCH", "/upstreams/nope", {"slots": 20})
    assert (status, body) == (404, {"message": "Not found"})


async def test_put_by_name_creates_then_replaces_keeping_id(admin: Client) -> None:
    status, created = await call(admin, "PUT", "/upstreams/a", {"slots": 20})
    assert status == 200 and created["name"] == "a" and created["slots"] == 20
    status, replaced = await call(admin, "PUT", "/upstreams/a", {"algorithm": "latency"})
    assert status == 200
    assert replaced["id"] == created["id"]
    assert replaced["slots"] == 10000  # PUT replaces: omitted fields take their defaults
    assert replaced["algorithm"] == "latency"


async def test_put_by_id_creates_with_that_id(admin: Client) -> None:
    new_id = str(uuid.uuid4())
    status, created = await call(admin, "PUT", f"/upstreams/{new_id}", {"name": "a"})
    assert status == 200 and created["id"] == new_id


async def test_get_missing_entity_is_404(admin: Client) -> None:
    for path in ("/upstreams/nope", f"/upstreams/{uuid.uuid4()}", "/services/nope", "/routes/nope"):
        status, body = await call(admin, "GET", path)
        assert (status, body) == (404, {"message": "Not found"})


async def test_delete_is_204_and_deleting_again_is_still_204(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, _ = await call(admin, "DELETE", "/upstreams/a")
    assert status == 204
    status, _ = await call(admin, "GET", "/upstreams/a")
    assert status == 404
    status, _ = await call(admin, "DELETE", "/upstreams/a")
    assert status == 204


# -------------------------------------------------------------------- targets


async def test_target_without_port_gets_8000_and_default_weight(admin: Client) -> None:
    upstream = await make(admin, "/upstreams", {"name": "a"})
    target = await make(admin, "/upstreams/a/targets", {"target": "10.0.0.1"})
    assert target["target"] == "10.0.0.1:8000"
    assert target["weight"] == 100
    assert target["upstream"] == {"id": upstream["id"]}


async def test_ipv6_target_is_normalised(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    target = await make(admin, "/upstreams/a/targets", {"target": "[::1]:81"})
    assert target["target"] == "[0000:0000:0000:0000:0000:0000:0000:0001]:81"


async def test_invalid_target_is_a_schema_violation(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, body = await call(admin, "POST", "/upstreams/a/targets", {"target": "bad host:1"})
    assert status == 400
    assert body["fields"] == {"target": "Invalid target; not a valid hostname or ip address"}


async def test_target_weight_out_of_range_is_a_schema_violation(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, body = await call(admin, "POST", "/upstreams/a/targets", {"target": "h:1", "weight": 65536})
    assert status == 400
    assert body == violation(
        {"weight": "value should be between 0 and 65535"},
        "schema violation (weight: value should be between 0 and 65535)",
    )


async def test_duplicate_target_in_the_same_upstream_is_409(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    await make(admin, "/upstreams", {"name": "b"})
    await make(admin, "/upstreams/a/targets", {"target": "h:1"})
    status, body = await call(admin, "POST", "/upstreams/a/targets", {"target": "h:1"})
    assert status == 409
    assert body["code"] == 5 and body["fields"] == {"target": "h:1"}
    assert body["message"] == "UNIQUE violation detected on '{target=\"h:1\"}'"
    # The same target in another upstream is fine.
    await make(admin, "/upstreams/b/targets", {"target": "h:1"})


async def test_targets_of_a_missing_upstream_are_404(admin: Client) -> None:
    status, body = await call(admin, "POST", "/upstreams/nope/targets", {"target": "h:1"})
    assert (status, body) == (404, {"message": "Not found"})


async def test_put_target_upserts_by_host_port(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, created = await call(admin, "PUT", "/upstreams/a/targets/h:1", {"weight": 5})
    assert status == 200 and created["target"] == "h:1" and created["weight"] == 5
    status, replaced = await call(admin, "PUT", "/upstreams/a/targets/h:1", {"weight": 7})
    assert status == 200 and replaced["id"] == created["id"] and replaced["weight"] == 7


async def test_put_of_an_existing_target_is_an_update_as_kong_3(admin: Client) -> None:
    """Issue 13 theme 2: fields not given are kept; a ``target`` in the body renames."""
    await make(admin, "/upstreams", {"name": "a"})
    _, created = await call(admin, "POST", "/upstreams/a/targets", {"target": "api-2:80", "weight": 10})
    status, kept = await call(admin, "PUT", f"/upstreams/a/targets/{created['id']}", {"target": "api-2:80"})
    assert status == 200 and kept["weight"] == 10 and kept["id"] == created["id"]
    status, renamed = await call(admin, "PUT", "/upstreams/a/targets/api-2:80", {"target": "api-2:801"})
    assert status == 200 and renamed["target"] == "api-2:801" and renamed["weight"] == 10
    assert renamed["id"] == created["id"]
    status, _ = await call(admin, "GET", "/upstreams/a/targets/api-2:80")
    assert status == 404
    # A PUT that creates takes the body's target over the path's.
    status, body = await call(admin, "PUT", "/upstreams/a/targets/x:1", {"target": "y:2"})
    assert status == 200 and body["target"] == "y:2"


async def test_target_timestamps_have_millisecond_precision(admin: Client) -> None:
    """Issue 13 theme 9: Kong 3.x stamps targets in ms, so an update right after an
    insert moves ``updated_at``."""
    await make(admin, "/upstreams", {"name": "a"})
    _, created = await call(admin, "POST", "/upstreams/a/targets", {"target": "h:1"})
    assert created["created_at"] == created["updated_at"]
    assert round(created["created_at"], 3) == created["created_at"]
    _, updated = await call(admin, "PATCH", f"/upstreams/a/targets/{created['id']}", {"weight": 5})
    assert updated["updated_at"] > created["updated_at"]
    assert updated["created_at"] == created["created_at"]
    _, put = await call(admin, "PUT", f"/upstreams/a/targets/{created['id']}", {"weight": 6})
    assert put["updated_at"] > updated["updated_at"]


async def test_hash_on_without_algorithm_selects_consistent_hashing(admin: Client) -> None:
    """Issue 13 theme 1, on create and on PATCH; an explicit algorithm stays."""
    _, up = await call(admin, "POST", "/upstreams", {"name": "a", "hash_on": "ip"})
    assert up["algorithm"] == "consistent-hashing"
    _, up = await call(admin, "POST", "/upstreams", {"name": "b"})
    assert up["algorithm"] == "round-robin"
    _, up = await call(admin, "PATCH", "/upstreams/b", {"hash_on": "header", "hash_on_header": "x"})
    assert up["algorithm"] == "consistent-hashing"
    _, up = await call(admin, "PATCH", "/upstreams/b", {"algorithm": "least-connections"})
    assert up["algorithm"] == "least-connections" and up["hash_on"] == "header"
    _, up = await call(admin, "POST", "/upstreams", {"name": "c", "hash_on": "ip", "algorithm": "latency"})
    assert up["algorithm"] == "latency"


async def test_every_path_answers_with_a_trailing_slash(admin: Client) -> None:
    """Issue 13 theme 3: as Kong's router, no redirect; other methods 405."""
    status, _ = await call(admin, "POST", "/upstreams/", {"name": "a"})
    assert status == 201
    status, _ = await call(admin, "POST", "/upstreams/a/targets/", {"target": "h:1"})
    assert status == 201
    for path in ("/upstreams/", "/upstreams/a/", "/upstreams/a/targets/", "/upstreams/a/targets/all/",
                 "/upstreams/a/targets/h:1/", "/upstreams/a/health/"):
        status, _ = await call(admin, "GET", path)
        assert status == 200, path
    status, body = await call(admin, "DELETE", "/upstreams/a/health/")
    assert (status, body) == (405, {"message": "Method not allowed"})


async def test_put_upstream_named_by_an_ip_and_empty_tags_filter(admin: Client) -> None:
    """Issue 13 theme 8: Kong's bare messages."""
    status, body = await call(admin, "PUT", "/upstreams/1.2.3.4", {})
    assert (status, body) == (400, {"message": "Invalid name ('1.2.3.4'); no ip addresses allowed"})
    status, body = await call(admin, "GET", "/upstreams?tags=")
    assert status == 400 and body["message"] == "invalid option (tags: cannot be null)"


async def test_target_is_addressable_by_id_and_target_and_patchable(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    target = await make(admin, "/upstreams/a/targets", {"target": "h"})
    for key in (target["id"], "h:8000", "h"):
        status, body = await call(admin, "GET", f"/upstreams/a/targets/{key}")
        assert (status, body) == (200, target)
    status, body = await call(admin, "PATCH", "/upstreams/a/targets/h:8000", {"weight": 0})
    assert status == 200 and body["weight"] == 0


async def test_target_of_another_upstream_is_404(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    await make(admin, "/upstreams", {"name": "b"})
    target = await make(admin, "/upstreams/a/targets", {"target": "h:1"})
    status, _ = await call(admin, "GET", f"/upstreams/b/targets/{target['id']}")
    assert status == 404


async def test_targets_all_lists_weight_zero_targets_too(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    await make(admin, "/upstreams/a/targets", {"target": "h:1", "weight": 0})
    await make(admin, "/upstreams/a/targets", {"target": "h:2"})
    for path in ("/upstreams/a/targets", "/upstreams/a/targets/all"):
        status, body = await call(admin, "GET", path)
        assert status == 200
        assert sorted(t["target"] for t in body["data"]) == ["h:1", "h:2"]
        assert body["next"] is None


async def test_deleting_an_upstream_deletes_its_targets(admin: Client, store: EntityStore) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    await make(admin, "/upstreams", {"name": "b"})
    await make(admin, "/upstreams/a/targets", {"target": "h:1"})
    await make(admin, "/upstreams/a/targets", {"target": "h:2"})
    kept = await make(admin, "/upstreams/b/targets", {"target": "h:1"})
    status, _ = await call(admin, "DELETE", "/upstreams/a")
    assert status == 204
    _, entities = await store.load_all()
    assert entities["targets"] == [kept]
    # The composite unique key was released too: the target can be created again.
    await make(admin, "/upstreams", {"name": "a"})
    await make(admin, "/upstreams/a/targets", {"target": "h:1"})


async def test_delete_target(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    await make(admin, "/upstreams/a/targets", {"target": "h:1"})
    status, _ = await call(admin, "DELETE", "/upstreams/a/targets/h:1")
    assert status == 204
    status, _ = await call(admin, "GET", "/upstreams/a/targets/h:1")
    assert status == 404


# ------------------------------------------------------------------- services


async def test_service_defaults(admin: Client) -> None:
    service = await make(admin, "/services", {"name": "svc", "host": "a"})
    expected = {
        "name": "svc", "protocol": "http", "host": "a", "port": 80, "path": None, "retries": 5,
        "connect_timeout": 60000, "write_timeout": 60000, "read_timeout": 60000,
        "enabled": True, "tags": None,
    }
    assert {key: service[key] for key in expected} == expected


async def test_service_url_shorthand_sets_protocol_host_port_and_path(admin: Client) -> None:
    service = await make(admin, "/services", {"url": "https://api.example.com/v1"})
    assert (service["protocol"], service["host"], service["port"], service["path"]) == (
        "https", "api.example.com", 443, "/v1",
    )
    assert "url" not in service


async def test_service_without_host_is_required_field_missing(admin: Client) -> None:
    status, body = await call(admin, "POST", "/services", {"name": "svc"})
    assert status == 400
    assert body["fields"] == {"host": "required field missing"}


async def test_service_ranges_and_types(admin: Client) -> None:
    status, body = await call(admin, "POST", "/services", {
        "host": "a", "retries": 40000, "connect_timeout": 0, "port": "80", "protocol": "ftp",
    })
    assert status == 400
    assert body["fields"] == {
        "retries": "value should be between 0 and 32767",
        "connect_timeout": "value should be between 1 and 2147483646",
        "port": "expected an integer",
        "protocol": "expected one of: grpc, grpcs, http, https",
    }


async def test_service_path_must_start_with_slash(admin: Client) -> None:
    status, body = await call(admin, "POST", "/services", {"host": "a", "path": "v1"})
    assert status == 400
    assert body["fields"] == {"path": "should start with: /"}


async def test_service_host_must_not_have_a_port(admin: Client) -> None:
    status, body = await call(admin, "POST", "/services", {"host": "a:80"})
    assert status == 400
    assert body["fields"] == {"host": "must not have a port"}


async def test_service_name_is_unique(admin: Client) -> None:
    await make(admin, "/services", {"name": "svc", "host": "a"})
    status, body = await call(admin, "POST", "/services", {"name": "svc", "host": "b"})
    assert status == 409
    assert body["message"] == "UNIQUE violation detected on '{name=\"svc\"}'"


async def test_renaming_a_service_frees_the_old_name(admin: Client) -> None:
    await make(admin, "/services", {"name": "old", "host": "a"})
    status, _ = await call(admin, "PATCH", "/services/old", {"name": "new"})
    assert status == 200
    await make(admin, "/services", {"name": "old", "host": "b"})
    status, _ = await call(admin, "GET", "/services/new")
    assert status == 200


async def test_service_name_with_a_space_is_refused(admin: Client) -> None:
    status, body = await call(admin, "POST", "/services", {"name": "my svc", "host": "a"})
    assert status == 400
    assert body["fields"] == {
        "name": "invalid value 'my svc': the only accepted ascii characters are alphanumerics or ., -, _, and ~"
    }


async def test_deleting_a_service_that_routes_use_is_a_foreign_key_violation(admin: Client) -> None:
    await make(admin, "/services", {"name": "svc", "host": "a"})
    await make(admin, "/services/svc/routes", {"paths": ["/"]})
    status, body = await call(admin, "DELETE", "/services/svc")
    assert status == 400
    assert body == {
        "code": 4,
        "name": "foreign key violation",
        "message": "an existing 'routes' entity references this 'services' entity",
        "fields": {"@referenced_by": "routes"},
    }


# --------------------------------------------------------------------- routes


async def test_route_defaults(admin: Client) -> None:
    route = await make(admin, "/routes", {"paths": ["/a"]})
    expected = {
        "protocols": ["http", "https"], "methods": None, "hosts": None, "paths": ["/a"],
        "headers": None, "strip_path": True, "preserve_host": False, "regex_priority": 0,
        "https_redirect_status_code": 426, "path_handling": "v0", "request_buffering": True,
        "response_buffering": True, "service": None, "name": None, "tags": None,
    }
    assert {key: route[key] for key in expected} == expected


async def test_route_with_nothing_to_match_is_an_entity_violation(admin: Client) -> None:
    status, body = await call(admin, "POST", "/routes", {"protocols": ["http"]})
    assert status == 400
    assert body == violation(
        {"@entity": ["must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http'"]},
        "schema violation (must set one of 'methods', 'hosts', 'headers', 'paths' when 'protocols' is 'http')",
    )
    status, body = await call(admin, "POST", "/routes", {})
    assert body["fields"] == {
        "@entity": ["must set one of 'methods', 'hosts', 'headers', 'paths', 'snis' when 'protocols' is 'https'"]
    }


async def test_route_path_must_start_with_slash_or_tilde(admin: Client) -> None:
    status, body = await call(admin, "POST", "/routes", {"paths": ["/ok", "bad"]})
    assert status == 400
    assert body["fields"] == {"paths": [None, "should start with: / (fixed path) or ~/ (regex path)"]}
    assert body["message"] == "schema violation (paths.2: should start with: / (fixed path) or ~/ (regex path))"


async def test_route_regex_path_is_accepted_and_a_bad_regex_is_not(admin: Client) -> None:
    await make(admin, "/routes", {"paths": [r"~/users/\d+$"]})
    status, body = await call(admin, "POST", "/routes", {"paths": ["~/users/(oops"]})
    assert status == 400
    assert body["fields"]["paths"][0].startswith("invalid regex: '/users/(oops'")


async def test_route_methods_must_be_uppercase(admin: Client) -> None:
    status, body = await call(admin, "POST", "/routes", {"methods": ["get"]})
    assert status == 400
    assert body["fields"] == {"methods": ["invalid value: get"]}


async def test_route_referencing_a_missing_service_is_a_foreign_key_violation(admin: Client) -> None:
    missing = str(uuid.uuid4())
    status, body = await call(admin, "POST", "/routes", {"paths": ["/"], "service": {"id": missing}})
    assert status == 400
    assert body == {
        "code": 4,
        "name": "foreign key violation",
        "message": f"the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'services' entity.",
        "fields": {"service": {"id": missing}},
    }


async def test_route_service_may_be_given_by_name(admin: Client) -> None:
    service = await make(admin, "/services", {"name": "svc", "host": "a"})
    route = await make(admin, "/routes", {"paths": ["/"], "service": {"name": "svc"}})
    assert route["service"] == {"id": service["id"]}
    status, body = await call(admin, "POST", "/routes", {"paths": ["/"], "service": {"name": "nope"}})
    assert status == 400
    assert body["code"] == 13 and body["fields"] == {
        "service": {"name": "the foreign key cannot be resolved with '{name=\"nope\"}' for an existing 'services' entity"}
    }


async def test_service_routes_lists_and_creates_routes_of_that_service(admin: Client) -> None:
    service = await make(admin, "/services", {"name": "svc", "host": "a"})
    await make(admin, "/services", {"name": "other", "host": "b"})
    route = await make(admin, "/services/svc/routes", {"name": "r1", "paths": ["/"]})
    await make(admin, "/services/other/routes", {"paths": ["/x"]})
    assert route["service"] == {"id": service["id"]}
    status, body = await call(admin, "GET", "/services/svc/routes")
    assert status == 200 and body == {"data": [route], "next": None}
    status, _ = await call(admin, "GET", "/services/nope/routes")
    assert status == 404


async def test_route_name_is_unique_and_addressable(admin: Client) -> None:
    route = await make(admin, "/routes", {"name": "r", "paths": ["/"]})
    status, body = await call(admin, "GET", "/routes/r")
    assert (status, body) == (200, route)
    status, body = await call(admin, "POST", "/routes", {"name": "r", "paths": ["/"]})
    assert status == 409


# ------------------------------------------------------------ bodies, methods


async def test_unparsable_json_is_400_cannot_parse_json_body(admin: Client) -> None:
    status, body = await call(
        admin, "POST", "/upstreams", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert (status, body) == (400, {"message": "Cannot parse JSON body"})


async def test_form_encoded_body_is_accepted_and_typed(admin: Client) -> None:
    status, body = await call(
        admin, "POST", "/upstreams",
        data={"name": "a", "slots": "20", "healthchecks.active.healthy.interval": "5", "tags[]": "x"},
    )
    assert status == 201, body
    assert body["slots"] == 20
    assert body["healthchecks"]["active"]["healthy"]["interval"] == 5
    assert body["tags"] == ["x"]


async def test_form_encoded_repeated_keys_make_an_array(admin: Client) -> None:
    status, body = await call(
        admin, "POST", "/routes", data=[("paths", "/a"), ("paths", "/b"), ("strip_path", "false")]
    )
    assert status == 201, body
    assert body["paths"] == ["/a", "/b"] and body["strip_path"] is False


async def test_form_encoded_service_url_and_nested_route_paths(admin: Client) -> None:
    status, service = await call(
        admin, "POST", "/services", data={"name": "orders", "url": "http://orders.internal:8080/v1"}
    )
    assert status == 201, service
    assert (service["host"], service["port"], service["path"]) == ("orders.internal", 8080, "/v1")
    status, route = await call(admin, "POST", "/services/orders/routes", data={"paths[]": "/orders"})
    assert status == 201 and route["paths"] == ["/orders"]
    status, replaced = await call(admin, "PUT", "/services/orders", data={"host": "b", "retries": "2"})
    assert status == 200 and replaced["retries"] == 2 and replaced["path"] is None


async def test_method_not_allowed_is_405(admin: Client) -> None:
    for method, path in (("DELETE", "/upstreams"), ("POST", "/upstreams/a"), ("PUT", "/status")):
        status, body = await call(admin, method, path)
        assert (status, body) == (405, {"message": "Method not allowed"})


async def test_unknown_path_is_404_json(admin: Client) -> None:
    status, body = await call(admin, "GET", "/nothing-here")
    assert (status, body) == (404, {"message": "Not found"})


# ------------------------------------------------------------- paging and tags


async def test_paging_walks_every_entity_once(admin: Client) -> None:
    names = {f"u{i}" for i in range(7)}
    for name in names:
        await make(admin, "/upstreams", {"name": name})
    seen: list[str] = []
    path: str | None = "/upstreams?size=3"
    pages = 0
    while path:
        status, body = await call(admin, "GET", path)
        assert status == 200
        assert len(body["data"]) <= 3
        seen += [u["name"] for u in body["data"]]
        path = body["next"]
        if path:
            assert body["offset"] and path.startswith("/upstreams?offset=")
            path += "&size=3"
        pages += 1
    assert pages == 3
    assert sorted(seen) == sorted(names)


async def test_default_page_is_100_and_next_is_null_at_the_end(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, body = await call(admin, "GET", "/upstreams")
    assert status == 200 and len(body["data"]) == 1 and body["next"] is None
    assert "offset" not in body


async def test_size_out_of_range_or_not_a_number_is_400(admin: Client) -> None:
    status, body = await call(admin, "GET", "/upstreams?size=1001")
    assert status == 400
    assert body == {"code": 9, "name": "invalid size", "message": "size must be an integer between 1 and 1000"}
    status, body = await call(admin, "GET", "/upstreams?size=abc")
    assert status == 400 and body["message"] == "size must be a number"


async def test_bad_offset_is_400(admin: Client) -> None:
    status, body = await call(admin, "GET", "/upstreams?offset=%25%25%25")
    assert status == 400 and body["code"] == 7


async def test_tags_filter_with_comma_is_and_with_slash_is_or(admin: Client) -> None:
    await make(admin, "/services", {"name": "ab", "host": "h", "tags": ["a", "b"]})
    await make(admin, "/services", {"name": "a", "host": "h", "tags": ["a"]})
    await make(admin, "/services", {"name": "c", "host": "h", "tags": ["c"]})
    await make(admin, "/services", {"name": "none", "host": "h"})

    async def names(query: str) -> list[str]:
        status, body = await call(admin, "GET", f"/services?tags={query}")
        assert status == 200
        return sorted(s["name"] for s in body["data"])

    assert await names("a,b") == ["ab"]
    assert await names("a") == ["a", "ab"]
    assert await names("b/c") == ["ab", "c"]


async def test_tags_next_link_keeps_the_filter(admin: Client) -> None:
    for i in range(3):
        await make(admin, "/services", {"name": f"s{i}", "host": "h", "tags": ["t"]})
    status, body = await call(admin, "GET", "/services?tags=t&size=2")
    assert status == 200 and body["next"].endswith("&tags=t")


async def test_tags_must_be_valid(admin: Client) -> None:
    status, body = await call(admin, "POST", "/services", {"host": "h", "tags": ["a,b"]})
    assert status == 400
    assert body["fields"] == {"tags": ["invalid tag 'a,b': expected printable ascii (except `,` and `/`) or valid utf-8 sequences"]}
    status, body = await call(admin, "POST", "/services", {"host": "h", "tags": "a"})
    assert body["fields"] == {"tags": "expected a set"}


# ---------------------------------------------------------- node information


async def test_root_reports_node_and_version(admin: Client) -> None:
    status, body = await call(admin, "GET", "/")
    assert status == 200
    assert body["version"] == "0.1.0" and body["node_id"] == "node-1"
    assert body["hostname"] and body["tagline"]
    assert body["configuration"]["role"] == "control_plane"


async def test_status_reports_database_and_configuration_version(admin: Client) -> None:
    await make(admin, "/upstreams", {"name": "a"})
    status, body = await call(admin, "GET", "/status")
    assert status == 200
    assert body["database"] == {"reachable": True}
    assert body["configuration_version"] == 1
    assert body["server"]["total_requests"] >= 2


async def test_clustering_data_planes_lists_the_registry(admin: Client) -> None:
    status, body = await call(admin, "GET", "/clustering/data-planes")
    assert (status, body) == (200, {"data": DATA_PLANES, "next": None})


async def test_openapi_document_covers_every_route_and_entity(admin: Client) -> None:
    status, doc = await call(admin, "GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    expected_paths = {
        "/", "/status", "/openapi.json", "/clustering/data-planes", "/services",
        "/services/{service}", "/services/{service}/routes", "/routes", "/routes/{route}",
        "/upstreams", "/upstreams/{upstream}", "/upstreams/{upstream}/targets",
        "/upstreams/{upstream}/targets/all", "/upstreams/{upstream}/targets/{target}",
    }
    assert expected_paths <= set(doc["paths"])
    assert set(doc["paths"]["/services/{service}"]) == {"get", "head", "patch", "put", "delete"}
    schemas = doc["components"]["schemas"]
    for name in ("Service", "Route", "Upstream", "Target", "Healthchecks"):
        assert name in schemas
    assert schemas["Upstream"]["properties"]["slots"]["minimum"] == 10
    assert schemas["Upstream"]["properties"]["slots"]["maximum"] == 65536
    upstream = schemas["Upstream"]["properties"]
    assert "sticky-sessions" in str(upstream["algorithm"])
    assert {"sticky_sessions_cookie", "sticky_sessions_cookie_path"} <= set(upstream)
    assert upstream["hash_balance_factor"]["default"] == 0
    assert upstream["hash_balance_factor"]["minimum"] == 0


async def test_store_unreachable_is_503(unused_port: Any) -> None:
    # Ferry's client: bounded retries, so each call fails in well under a second.
    dead = create_redis_client(f"redis://127.0.0.1:{unused_port()}/0")
    async with serve_admin(EntityStore(dead)) as client:
        status, body = await call(client, "POST", "/upstreams", {"name": "a"})
        assert status == 503 and body["message"]
        status, body = await call(client, "GET", "/status")
        assert status == 200 and body["database"] == {"reachable": False}
    await dead.aclose()
