"""compile_config: what it builds and what it refuses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from data_plane.balancers import BalancerHandle
from data_plane.runtime import ConfigError, ConfigHolder, compile_config


def base() -> dict[str, list[dict[str, Any]]]:
    return {
        "upstreams": [{"id": "u1", "name": "backends", "algorithm": "round-robin", "host_header": None}],
        "targets": [
            {"id": "t1", "target": "10.0.0.1:8001", "weight": 100, "upstream": {"id": "u1"}},
            {"id": "t2", "target": "[::1]:8002", "weight": 50, "upstream": {"id": "u1"}},
        ],
        "services": [
            {"id": "s1", "name": "balanced", "protocol": "http", "host": "backends", "port": 80,
             "path": "/base", "retries": 3, "connect_timeout": 1500, "write_timeout": 2000,
             "read_timeout": 250, "enabled": True},
            {"id": "s2", "name": "direct", "protocol": "https", "host": "example.com", "port": 8443, "path": None},
        ],
        "routes": [
            {"id": "r1", "name": "a", "service": {"id": "s1"}, "paths": ["/a"], "strip_path": True},
            {"id": "r2", "name": "b", "service": {"id": "s2"}, "hosts": ["b.test"]},
        ],
    }


def test_compile_builds_services() -> None:
    cfg = compile_config(7, "h", base())
    assert (cfg.version, cfg.hash) == (7, "h")
    s1 = cfg.services["s1"]
    assert s1.balancer is not None and s1.address is None
    assert (s1.connect_timeout, s1.write_timeout, s1.read_timeout, s1.retries) == (1.5, 2.0, 0.25, 3)
    assert [a.key for a in s1.balancer.addresses] == ["10.0.0.1:8001", "[::1]:8002"]
    s2 = cfg.services["s2"]
    assert s2.balancer is None and s2.address is not None and s2.address.key == "example.com:8443"
    assert s2.tls and s2.read_timeout == 60.0 and s2.retries == 5
    m = cfg.match(b"GET", None, b"/a/x?y")
    assert m is not None and m.service is s1 and m.upstream_path == b"/base/x?y"
    assert cfg.match(b"GET", b"b.test", b"/")  is not None
    assert cfg.match(b"GET", None, b"/zzz") is None


def test_immutable_and_holder() -> None:
    cfg = compile_config(1, "h", base())
    with pytest.raises(AttributeError):
        cfg.version = 2  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.services["x"] = cfg.services["s1"]  # type: ignore[index]
    holder = ConfigHolder()
    assert holder.current is None
    holder.current = cfg
    assert holder.current is cfg


def test_balancer_state_carried_over_when_targets_unchanged() -> None:
    first = compile_config(1, "h", base())
    same = compile_config(2, "h2", copy.deepcopy(base()), previous=first)
    assert same.upstreams["u1"].balancer is first.upstreams["u1"].balancer
    changed = base()
    changed["targets"][1]["weight"] = 10
    other = compile_config(3, "h3", changed, previous=same)
    assert other.upstreams["u1"].balancer is not same.upstreams["u1"].balancer
    assert other.upstreams["u1"].balancer.pick(BalancerHandle()) is not None


def test_disabled_service_routes_left_out_and_serviceless_route() -> None:
    cfg_in = base()
    cfg_in["services"][0]["enabled"] = False
    cfg_in["routes"].append({"id": "r3", "paths": ["/none"], "service": None})
    cfg = compile_config(1, "h", cfg_in)
    assert cfg.match(b"GET", None, b"/a") is None
    m = cfg.match(b"GET", None, b"/none")
    assert m is not None and m.service is None


def mutate(path: str, value: Any) -> dict[str, list[dict[str, Any]]]:
    cfg = base()
    kind, index, key = path.split(".")
    if value is _DELETE:
        del cfg[kind][int(index)][key]
    else:
        cfg[kind][int(index)][key] = value
    return cfg


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("routes.0.service", {"id": "missing"}, "service missing does not exist"),
        ("targets.0.upstream", {"id": "nope"}, "upstream nope does not exist"),
        ("targets.0.target", "bad:port", "invalid hostname: bad:port"),
        ("targets.0.weight", 70000, "weight"),
        ("targets.1.target", "10.0.0.1:8001", "duplicate target"),
        ("upstreams.0.algorithm", "random", "unknown balancer algorithm"),
        ("services.0.protocol", "ws", "not supported"),
        ("services.0.port", -1, "'port'"),
        ("routes.0.headers", {"x-a": ["~*("]}, "invalid regex in header"),
        ("services.0.retries", -1, "'retries'"),
        ("services.0.read_timeout", 0, "'read_timeout'"),
        ("services.0.path", "nopath", "'path'"),
        ("services.0.host", _DELETE, "'host' is required"),
        ("routes.0.paths", ["~/("], "invalid regex"),
        ("routes.0.paths", ["nope"], "must start with"),
        ("routes.0.paths", None, "at least one of"),
        ("routes.0.strip_path", "yes", "boolean"),
        ("routes.0.headers", {"host": ["x"]}, "hosts"),
    ],
)
def test_config_errors(path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        compile_config(1, "h", mutate(path, value))


def test_duplicate_ids_and_upstream_names() -> None:
    cfg = base()
    cfg["routes"].append(dict(cfg["routes"][0]))
    with pytest.raises(ConfigError, match="duplicate id"):
        compile_config(1, "h", cfg)
    cfg = base()
    cfg["upstreams"].append({"id": "u2", "name": "backends"})
    with pytest.raises(ConfigError, match="duplicate upstream name"):
        compile_config(1, "h", cfg)


def test_upstream_names_match_hosts_ignoring_case_unless_only_case_tells_them_apart() -> None:
    cfg = base()
    cfg["services"][0]["host"] = "BackEnds"
    assert compile_config(1, "h", cfg).services["s1"].upstream_id == "u1"
    # The Admin API keeps "backends" and "BACKENDS" apart (Kong's names are
    # case-sensitive): each is found by its exact name, and the config still applies.
    cfg["upstreams"].append({"id": "u2", "name": "BACKENDS"})
    cfg["services"][0]["host"] = "BACKENDS"
    config = compile_config(1, "h", cfg)
    assert config.services["s1"].upstream_id == "u2"
    cfg["services"][0]["host"] = "Backends"  # ambiguous: a plain host, not an upstream
    assert compile_config(1, "h", cfg).services["s1"].upstream_id is None


def test_values_the_admin_api_accepts_are_applied() -> None:
    cfg = base()
    cfg["services"][1]["port"] = 0  # Kong allows port 0
    cfg["routes"][0]["regex_priority"] = 2**40
    cfg["routes"].append(
        {"id": "r3", "service": {"id": "s1"}, "snis": ["tls.test"], "protocols": ["https"]}
    )
    config = compile_config(1, "h", cfg)
    assert config.services["s2"].port == 0
    assert {r.route.id for r in [config.match(b"GET", b"b.test", b"/")] if r} == {"r2"}


def test_equally_specific_routes_tie_break_by_creation_time() -> None:
    cfg = base()
    cfg["routes"] = [
        {"id": "r-b", "service": {"id": "s1"}, "paths": ["/x"], "created_at": 200},
        {"id": "r-a", "service": {"id": "s1"}, "paths": ["/x"], "created_at": 100},
    ]
    match = compile_config(1, "h", cfg).match(b"GET", None, b"/x")
    assert match is not None and match.route.id == "r-a"


def test_config_error_is_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


def test_grpc_routes_are_in_the_router_marked_grpc_and_grpcs_only() -> None:
    cfg_in = base()
    cfg_in["services"].append({"id": "s3", "protocol": "grpc", "host": "backends", "port": 80})
    cfg_in["routes"] += [
        {"id": "r3", "protocols": ["grpc", "grpcs"], "paths": ["/pkg.Svc/"], "service": {"id": "s3"}},
        {"id": "r4", "protocols": ["grpcs"], "hosts": ["secure.test"], "service": {"id": "s3"}},
        {"id": "r5", "protocols": ["tcp"], "snis": ["tcp.test"], "service": {"id": "s3"}},
    ]
    cfg = compile_config(1, "h", cfg_in)
    assert cfg.router.has_grpc
    both = cfg.match(b"POST", None, b"/pkg.Svc/Call")
    assert both is not None and both.route.grpc and not both.route.grpcs_only
    assert not both.route.https_only  # a gRPC route's plaintext refusal is gRPC's own
    secure = cfg.match(b"POST", b"secure.test", b"/x")
    assert secure is not None and secure.route.grpc and secure.route.grpcs_only
    assert not compile_config(1, "h", base()).router.has_grpc
    assert len(cfg.router) == len(compile_config(1, "h", base()).router) + 2  # tcp left out


def test_sticky_sessions_upstream_gets_its_cookie_salted_by_the_upstream_id() -> None:
    cfg_in = base()
    cfg_in["upstreams"][0].update(
        algorithm="sticky-sessions", sticky_sessions_cookie="srv", sticky_sessions_cookie_path="/a"
    )
    upstream = compile_config(1, "h", cfg_in).upstreams["u1"]
    assert upstream.sticky is not None
    assert (upstream.sticky.name, upstream.sticky.path) == ("srv", "/a")
    assert upstream.options.sticky_salt == "u1"
    assert upstream.hash_spec is not None
    assert compile_config(1, "h", base()).upstreams["u1"].sticky is None


def test_hash_balance_factor_reaches_the_balancer_and_a_change_rebuilds_it() -> None:
    cfg_in = base()
    cfg_in["upstreams"][0].update(algorithm="consistent-hashing", hash_balance_factor=150)
    first = compile_config(1, "h", cfg_in)
    balancer = first.upstreams["u1"].balancer
    assert balancer.options.hash_balance_factor == 150 and balancer.tracks_requests
    cfg_in["upstreams"][0]["hash_balance_factor"] = 0
    second = compile_config(2, "h", cfg_in, previous=first)
    assert second.upstreams["u1"].balancer is not balancer
    assert not second.upstreams["u1"].balancer.tracks_requests


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"algorithm": "consistent-hashing", "hash_balance_factor": 99}, "hash_balance_factor"),
        ({"algorithm": "round-robin", "hash_balance_factor": 150}, "hash_balance_factor"),
        ({"algorithm": "consistent-hashing", "hash_balance_factor": True}, "hash_balance_factor"),
        ({"algorithm": "sticky-sessions"}, "sticky_sessions_cookie"),
        ({"algorithm": "sticky-sessions", "sticky_sessions_cookie": "s;"}, "sticky_sessions_cookie"),
    ],
)
def test_sticky_and_bounded_load_settings_a_data_plane_cannot_apply_are_refused(
    fields: dict[str, Any], message: str
) -> None:
    cfg_in = base()
    cfg_in["upstreams"][0].update(fields)
    with pytest.raises(ConfigError, match=message):
        compile_config(1, "h", cfg_in)
