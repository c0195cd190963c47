"""RequestMetrics: what the proxy counts per request, its snapshots, and their rendering."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from data_plane.cluster_client import ClusterLinkState
from data_plane.config_installer import attach_checkers
from data_plane.metrics_export import DataPlaneCollector, metrics_registry
from data_plane.request_metrics import (
    KONG_LATENCY_BUCKETS_MS,
    UPSTREAM_LATENCY_BUCKETS_MS,
    RequestMetrics,
    RouteSeries,
    merge_snapshots,
)
from data_plane.router import RouteSpec
from data_plane.runtime import CompiledService, ConfigHolder, RuntimeConfig, compile_config

HASH = "0123456789abcdef" * 4


def entities() -> dict[str, list[dict[str, Any]]]:
    """Shaped like tests/unit/data_plane/test_runtime.py's: a balanced and a direct service."""
    return {
        "upstreams": [{"id": "u1", "name": "backends", "algorithm": "round-robin"}],
        "targets": [
            {"id": "t1", "target": "10.0.0.1:8001", "weight": 100, "upstream": {"id": "u1"}},
            {"id": "t2", "target": "10.0.0.2:8002", "weight": 100, "upstream": {"id": "u1"}},
        ],
        "services": [
            {"id": "s1", "name": "balanced", "protocol": "http", "host": "backends", "port": 80},
            {"id": "s2", "name": "direct", "protocol": "http", "host": "example.com", "port": 8080},
            {"id": "s3", "protocol": "http", "host": "nameless.example", "port": 80},
        ],
        "routes": [
            {"id": "r1", "name": "a", "service": {"id": "s1"}, "paths": ["/a"]},
            {"id": "r2", "name": "b", "service": {"id": "s2"}, "paths": ["/b"]},
            {"id": "r3", "service": {"id": "s3"}, "paths": ["/c"]},
            {"id": "r4", "name": "orphan", "service": None, "paths": ["/none"]},
        ],
    }


def compiled(spec: dict[str, list[dict[str, Any]]], version: int = 1,
             previous: RuntimeConfig | None = None) -> RuntimeConfig:
    config = compile_config(version, HASH, spec, previous)
    attach_checkers(config, previous)  # as the config installer does before it serves
    return config


def route(config: RuntimeConfig, path: bytes) -> RouteSpec[CompiledService]:
    match = config.match(b"GET", None, path)
    assert match is not None, path
    return match.route


def cumulative(counts: list[int]) -> list[int]:
    out, running = [], 0
    for n in counts:
        running += n
        out.append(running)
    return out


# ------------------------------------------------------------------------ histograms


@pytest.mark.parametrize("index", range(len(KONG_LATENCY_BUCKETS_MS)))
def test_kong_latency_equal_to_a_bound_lands_in_that_bucket_and_one_more_in_the_next(index: int) -> None:
    bound = KONG_LATENCY_BUCKETS_MS[index]
    series = RouteSeries("s", "r")
    series.observe_proxied(200, bound, 0, 0)
    expected = [0] * (len(KONG_LATENCY_BUCKETS_MS) + 1)
    expected[index] = 1
    assert series.kong == expected
    series.observe_proxied(200, bound + 1, 0, 0)
    expected[index + 1] += 1  # the next bound, or +Inf after the last one
    assert series.kong == expected
    assert series.kong_sum == 2 * bound + 1


@pytest.mark.parametrize("index", range(len(UPSTREAM_LATENCY_BUCKETS_MS)))
def test_upstream_and_request_latency_equal_to_a_bound_lands_in_that_bucket(index: int) -> None:
    bound = UPSTREAM_LATENCY_BUCKETS_MS[index]
    series = RouteSeries("s", "r")
    series.observe_proxied(200, 0, bound, bound)
    expected = [0] * (len(UPSTREAM_LATENCY_BUCKETS_MS) + 1)
    expected[index] = 1
    assert series.upstream == expected
    assert series.request == expected
    series.observe_proxied(200, 0, bound + 1, bound - 1)
    above = list(expected)
    above[index + 1] += 1
    assert series.upstream == above
    below = list(expected)
    below[index] += 1  # bound - 1 is still within le=bound (the previous bound is lower)
    assert series.request == below
    assert (series.upstream_sum, series.request_sum) == (2 * bound + 1, 2 * bound - 1)


def test_zero_goes_to_the_first_bucket_and_huge_latencies_to_inf() -> None:
    series = RouteSeries("s", "r")
    series.observe_proxied(200, 0, 0, 0)
    series.observe_proxied(200, 10**6, 10**7, 10**8)
    assert series.kong[0] == 1 and series.kong[-1] == 1 and sum(series.kong) == 2
    assert series.upstream[0] == 1 and series.upstream[-1] == 1 and sum(series.upstream) == 2
    assert series.request[0] == 1 and series.request[-1] == 1 and sum(series.request) == 2
    assert len(series.kong) == len(KONG_LATENCY_BUCKETS_MS) + 1
    assert len(series.upstream) == len(series.request) == len(UPSTREAM_LATENCY_BUCKETS_MS) + 1
    local = RouteSeries("s", "r")
    local.observe_local(502, UPSTREAM_LATENCY_BUCKETS_MS[-1])
    local.observe_local(502, UPSTREAM_LATENCY_BUCKETS_MS[-1] + 1)
    assert local.request[-2:] == [1, 1]


def test_target_answers_count_in_codes_and_the_proxys_own_in_local_codes() -> None:
    series = RouteSeries("svc", "rt")
    series.observe_proxied(200, 1, 30, 31)
    series.observe_proxied(200, 1, 30, 31)
    series.observe_proxied(503, 2, 40, 42)  # a 503 from the target is still source=service
    series.observe_local(502, 60)
    series.observe_local(404, 3)
    series.observe_local(502, 61)
    assert series.codes == {200: 2, 503: 1}
    assert series.local_codes == {502: 2, 404: 1}
    # A local answer has no gateway/upstream latency: only the request histogram grows.
    assert sum(series.kong) == 3 and series.kong_sum == 4
    assert sum(series.upstream) == 3 and series.upstream_sum == 100
    assert sum(series.request) == 6 and series.request_sum == 31 + 31 + 42 + 60 + 3 + 61


# --------------------------------------------------------------------------- routes


def test_for_route_is_stable_for_one_route_object_and_labelled_by_names() -> None:
    config = compiled(entities())
    metrics = RequestMetrics()
    a = route(config, b"/a")
    series = metrics.for_route(a)
    assert metrics.for_route(a) is series
    assert (series.service, series.route) == ("balanced", "a")
    b = metrics.for_route(route(config, b"/b"))
    assert b is not series and (b.service, b.route) == ("direct", "b")
    # No service name: the host; no route name: the id.
    c = metrics.for_route(route(config, b"/c"))
    assert (c.service, c.route) == ("nameless.example", "r3")
    # A route without a service: empty service label, but not the unmatched series.
    orphan = metrics.for_route(route(config, b"/none"))
    assert (orphan.service, orphan.route) == ("", "orphan")
    assert orphan is not metrics.unmatched
    assert (metrics.unmatched.service, metrics.unmatched.route) == ("", "")


def test_an_unchanged_route_in_a_new_config_keeps_its_series() -> None:
    metrics = RequestMetrics()
    first = compiled(entities())
    second = compiled(copy.deepcopy(entities()), version=2, previous=first)
    old, new = route(first, b"/a"), route(second, b"/a")
    assert old is not new
    assert metrics.for_route(old) is metrics.for_route(new)


def test_a_renamed_route_gets_a_new_series_and_the_old_one_keeps_its_counts() -> None:
    metrics = RequestMetrics()
    first = compiled(entities())
    old = metrics.for_route(route(first, b"/a"))
    old.observe_proxied(200, 1, 1, 2)

    renamed = entities()
    renamed["routes"][0]["name"] = "a2"
    second = compiled(renamed, version=2, previous=first)
    new = metrics.for_route(route(second, b"/a"))
    assert new is not old
    assert (new.service, new.route) == ("balanced", "a2")
    new.observe_proxied(200, 1, 1, 2)
    assert old.codes == {200: 1} and new.codes == {200: 1}
    labels = {(s["service"], s["route"]): s["codes"] for s in metrics.snapshot(0)["series"]}
    assert labels == {("balanced", "a"): {"200": 1}, ("balanced", "a2"): {"200": 1}}


def test_a_route_moved_to_another_service_is_relabelled() -> None:
    metrics = RequestMetrics()
    first = compiled(entities())
    before = metrics.for_route(route(first, b"/a"))
    assert before.service == "balanced"

    moved = entities()
    moved["routes"][0]["service"] = {"id": "s2"}
    second = compiled(moved, version=2, previous=first)
    after = metrics.for_route(route(second, b"/a"))
    assert after is not before
    assert (after.service, after.route) == ("direct", "a")
    # Route "b" already sends to "direct": a different route, a different series.
    assert metrics.for_route(route(second, b"/b")) is not after

    renamed_service = entities()
    renamed_service["services"][0]["name"] = "shop"
    third = compiled(renamed_service, version=3, previous=second)
    assert (metrics.for_route(route(third, b"/a")).service) == "shop"


def test_moving_back_finds_the_original_series_again() -> None:
    metrics = RequestMetrics()
    first = compiled(entities())
    original = metrics.for_route(route(first, b"/a"))
    moved = entities()
    moved["routes"][0]["service"] = {"id": "s2"}
    second = compiled(moved, version=2, previous=first)
    assert metrics.for_route(route(second, b"/a")) is not original
    third = compiled(entities(), version=3, previous=second)
    assert metrics.for_route(route(third, b"/a")) is original


# ------------------------------------------------------------------------ snapshots


def record(metrics: RequestMetrics, config: RuntimeConfig, offset: int) -> None:
    """A mix of proxied and local answers over several routes."""
    a = metrics.for_route(route(config, b"/a"))
    b = metrics.for_route(route(config, b"/b"))
    for i in range(5 + offset):
        a.observe_proxied(200, i, 20 * i, 25 * i + offset)
    a.observe_proxied(500, 3, 700, 701)
    a.observe_proxied(200, 2000 + offset, 61000, 70000 + offset)  # +Inf everywhere
    a.observe_local(502, 1200 + offset)
    b.observe_proxied(201, 7 + offset, 49, 60)
    metrics.unmatched.observe_local(404, offset)
    metrics.connections_accepted += 3 + offset


def series_by_labels(snapshot: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {(s["service"], s["route"]): s for s in snapshot["series"]}
    assert len(out) == len(snapshot["series"]), "one entry per label pair"
    return out


def test_snapshot_lists_only_used_series_and_is_a_copy() -> None:
    config = compiled(entities())
    metrics = RequestMetrics()
    metrics.for_route(route(config, b"/c"))  # looked up but never answered
    assert metrics.snapshot(0)["series"] == []
    a = metrics.for_route(route(config, b"/a"))
    a.observe_proxied(200, 1, 26, 27)
    snap = metrics.snapshot(4)
    assert snap["connections_active"] == 4
    assert json.loads(json.dumps(snap)) == snap, "plain JSON data"
    frozen = json.dumps(snap, sort_keys=True)
    a.observe_proxied(200, 1, 26, 27)
    a.observe_local(504, 9)
    assert json.dumps(snap, sort_keys=True) == frozen, "later requests do not change a snapshot"
    (entry,) = snap["series"]
    assert entry["codes"] == {"200": 1} and entry["local_codes"] == {}
    assert entry["kong"] == [[1] + [0] * len(KONG_LATENCY_BUCKETS_MS), 1]
    assert entry["upstream"][0][1] == 1 and entry["upstream"][1] == 26


def test_merge_sums_two_processes_exactly() -> None:
    config = compiled(entities())
    one, two = RequestMetrics(), RequestMetrics()
    record(one, config, 0)
    record(two, config, 2)
    two.for_route(route(config, b"/c")).observe_proxied(200, 1, 1, 1)  # only in process two
    s1, s2 = one.snapshot(1), two.snapshot(5)
    before = json.dumps([s1, s2], sort_keys=True)
    # Worker files go through JSON: merge what a reader gets back.
    merged = merge_snapshots([json.loads(json.dumps(s1)), json.loads(json.dumps(s2))])
    assert json.dumps([s1, s2], sort_keys=True) == before, "the inputs are not modified"

    assert merged["connections_accepted"] == 3 + 5
    assert merged["connections_active"] == 1 + 5
    a1, a2 = series_by_labels(s1), series_by_labels(s2)
    got = series_by_labels(merged)
    assert set(got) == set(a1) | set(a2) == {
        ("balanced", "a"), ("direct", "b"), ("", ""), ("nameless.example", "r3")
    }
    for key, entry in got.items():
        parts = [s[key] for s in (a1, a2) if key in s]
        for field in ("codes", "local_codes"):
            codes: dict[str, int] = {}
            for part in parts:
                for code, n in part[field].items():
                    codes[code] = codes.get(code, 0) + n
            assert entry[field] == codes, (key, field)
        for field in ("kong", "upstream", "request"):
            width = len(parts[0][field][0])
            counts = [sum(p[field][0][i] for p in parts) for i in range(width)]
            assert entry[field] == [counts, sum(p[field][1] for p in parts)], (key, field)
    a = got[("balanced", "a")]
    assert a["codes"] == {"200": 6 + 8, "500": 2} and a["local_codes"] == {"502": 2}
    assert a["kong"][0][-1] == a["upstream"][0][-1] == a["request"][0][-1] == 2
    assert got[("", "")]["local_codes"] == {"404": 2}
    assert merge_snapshots([]) == {"series": [], "connections_accepted": 0, "connections_active": 0}
    assert merge_snapshots([s1]) == s1 | {"connections_active": 1}


def test_restore_continues_the_counts_of_a_predecessor() -> None:
    config = compiled(entities())
    before = RequestMetrics()
    record(before, config, 1)
    saved = json.loads(json.dumps(before.snapshot(7)))

    after = RequestMetrics()
    after.restore(saved)
    assert after.snapshot(0) == saved | {"connections_active": 0}, "nothing lost or doubled"
    # New requests add to the restored counts, on the same series as the route's.
    later = RequestMetrics()
    record(after, config, 4)
    record(later, config, 4)
    expected = merge_snapshots([saved, later.snapshot(0)])
    got = after.snapshot(0)
    assert got["connections_accepted"] == expected["connections_accepted"] == 4 + 7
    assert series_by_labels(got) == series_by_labels(expected)
    a = series_by_labels(got)[("balanced", "a")]
    assert a["codes"]["200"] == 7 + 10
    assert a["kong"][0][-1] == a["upstream"][0][-1] == a["request"][0][-1] == 2


def test_restore_of_nothing_is_harmless() -> None:
    metrics = RequestMetrics()
    metrics.restore({})
    metrics.restore({"series": [], "connections_accepted": 0})
    assert metrics.snapshot(0) == {"series": [], "connections_accepted": 0, "connections_active": 0}


# ---------------------------------------------------------------------- exposition


def samples(text: str) -> dict[str, list[Any]]:
    """Family name -> its samples, as Prometheus' text parser reads ``text``."""
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(found: dict[str, list[Any]], family: str, sample: str, **labels: str) -> float:
    matches = [s.value for s in found[family] if s.name == sample and s.labels == labels]
    assert len(matches) == 1, (sample, labels, [s for s in found[family] if s.name == sample])
    return float(matches[0])


def test_collector_renders_cumulative_histograms_counts_and_sums() -> None:
    config = compiled(entities(), version=42)
    holder = ConfigHolder(config)
    link = ClusterLinkState(connected=True, last_config_at=1_700_000_000.5)
    metrics = RequestMetrics()
    a = metrics.for_route(route(config, b"/a"))
    kong_ms = [0, 1, 2, 6, 1000, 1001]
    upstream_ms = [25, 26, 80, 60000, 60001, 3]
    request_ms = [25, 50, 51, 100, 70000, 5]
    for k, u, r in zip(kong_ms, upstream_ms, request_ms, strict=True):
        a.observe_proxied(200, k, u, r)
    a.observe_proxied(503, 5, 5, 10)
    a.observe_local(502, 250)
    metrics.unmatched.observe_local(404, 2)
    metrics.unmatched.observe_local(404, 3)
    metrics.connections_accepted = 11
    collector = DataPlaneCollector(holder, link, lambda: metrics.snapshot(2))
    text = generate_latest(metrics_registry(collector)).decode()
    found = samples(text)

    # Counters by status and source.
    fam = "kong_http_requests"
    assert value(found, fam, "kong_http_requests_total",
                 service="balanced", route="a", code="200", source="service") == 6
    assert value(found, fam, "kong_http_requests_total",
                 service="balanced", route="a", code="503", source="service") == 1
    assert value(found, fam, "kong_http_requests_total",
                 service="balanced", route="a", code="502", source="kong") == 1
    assert value(found, fam, "kong_http_requests_total",
                 service="", route="", code="404", source="kong") == 2
    assert len(found[fam]) == 4

    def check(name: str, bounds: tuple[int, ...], observed: list[int], labels: dict[str, str]) -> None:
        family = f"kong_{name}_latency_ms"
        buckets = {
            s.labels["le"]: s.value
            for s in found[family]
            if s.name == f"{family}_bucket" and {k: v for k, v in s.labels.items() if k != "le"} == labels
        }
        expected = {str(b): sum(1 for o in observed if o <= b) for b in bounds}
        expected["+Inf"] = len(observed)
        assert buckets == expected, name
        ordered = [buckets[str(b)] for b in bounds] + [buckets["+Inf"]]
        assert ordered == sorted(ordered), "cumulative"
        assert value(found, family, f"{family}_count", **labels) == len(observed)
        assert value(found, family, f"{family}_sum", **labels) == sum(observed)

    route_a = {"service": "balanced", "route": "a"}
    check("kong", KONG_LATENCY_BUCKETS_MS, [*kong_ms, 5], route_a)
    check("upstream", UPSTREAM_LATENCY_BUCKETS_MS, [*upstream_ms, 5], route_a)
    check("request", UPSTREAM_LATENCY_BUCKETS_MS, [*request_ms, 10, 250], route_a)
    unmatched = {"service": "", "route": ""}
    check("request", UPSTREAM_LATENCY_BUCKETS_MS, [2, 3], unmatched)
    # Only local answers: no gateway or upstream latency series for them.
    for family in ("kong_kong_latency_ms", "kong_upstream_latency_ms"):
        assert {(s.labels["service"], s.labels["route"]) for s in found[family]} == {("balanced", "a")}

    assert value(found, "kong_nginx_requests_total", "kong_nginx_requests_total") == 6 + 1 + 1 + 2
    conns = "kong_nginx_connections_total"
    assert value(found, conns, conns, state="accepted") == 11
    assert value(found, conns, conns, state="active") == 2
    assert value(found, "kong_control_plane_connected", "kong_control_plane_connected") == 1
    assert value(found, "ferry_config_version", "ferry_config_version") == 42
    assert value(found, "ferry_config_hash", "ferry_config_hash") == int(HASH[:13], 16)
    assert value(found, "ferry_config_last_sync_timestamp_seconds",
                 "ferry_config_last_sync_timestamp_seconds") == 1_700_000_000.5
    # One series per state for each address; 1 only for the state it is in.
    health = found["kong_upstream_target_health"]
    assert len(health) == 2 * 4
    for target in ("10.0.0.1:8001", "10.0.0.2:8002"):
        states = {
            s.labels["state"]: s.value for s in health
            if s.labels == {"upstream": "backends", "target": target, "address": target,
                            "state": s.labels["state"], "subsystem": "http"}
        }
        # No healthchecks configured: Kong's HEALTHCHECKS_OFF.
        assert states == {"healthy": 0, "unhealthy": 0, "healthchecks_off": 1, "dns_error": 0}
    assert "process_cpu_seconds_total" in text or "python_info" in text


def test_collector_without_config_or_requests() -> None:
    collector = DataPlaneCollector(ConfigHolder(), ClusterLinkState(), lambda: None)
    found = samples(generate_latest(metrics_registry(collector)).decode())
    assert found["kong_http_requests"] == []
    assert found["kong_upstream_target_health"] == []
    assert value(found, "kong_nginx_requests_total", "kong_nginx_requests_total") == 0
    assert value(found, "kong_control_plane_connected", "kong_control_plane_connected") == 0
    assert value(found, "ferry_config_version", "ferry_config_version") == 0
    assert value(found, "ferry_config_hash", "ferry_config_hash") == 0
    assert value(found, "ferry_config_last_sync_timestamp_seconds",
                 "ferry_config_last_sync_timestamp_seconds") == 0


def test_collector_shows_a_name_that_does_not_resolve_as_dns_error() -> None:
    spec = entities()
    spec["targets"].append(
        {"id": "t3", "target": "nowhere.invalid:80", "weight": 100, "upstream": {"id": "u1"}}
    )
    config = compiled(spec)
    # What the resolver does once the name fails: the target contributes no address.
    balancer = config.upstreams["u1"].balancer
    balancer.after_targets_changed([a for a in balancer.addresses if a.host != "nowhere.invalid"])
    collector = DataPlaneCollector(
        ConfigHolder(config), ClusterLinkState(), lambda: None,
        dns_errors=lambda: {"nowhere.invalid:80": "NXDOMAIN"},
    )
    found = samples(generate_latest(metrics_registry(collector)).decode())
    states = {
        s.labels["state"]: s.value for s in found["kong_upstream_target_health"]
        if s.labels["target"] == "nowhere.invalid:80"
    }
    assert states == {"healthy": 0, "unhealthy": 0, "healthchecks_off": 0, "dns_error": 1}
    assert {s.labels["address"] for s in found["kong_upstream_target_health"]
            if s.labels["target"] == "nowhere.invalid:80"} == {""}
    assert {s.labels["target"] for s in found["kong_upstream_target_health"]} == {
        "10.0.0.1:8001", "10.0.0.2:8002", "nowhere.invalid:80"
    }
