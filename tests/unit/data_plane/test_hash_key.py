"""hash_on / hash_fallback: every source, fallbacks, cookie generation, compile checks."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from data_plane.balancers import BalancerHandle
from data_plane.hash_key import HashInputs, HashSpec, compile_hash_spec, normalise_path
from data_plane.router import Router, RouteSpec
from data_plane.runtime import ConfigError, compile_config


def spec(**fields: Any) -> HashSpec:
    compiled = compile_hash_spec({"algorithm": "consistent-hashing", **fields})
    assert compiled is not None
    return compiled


def inputs(**fields: Any) -> HashInputs:
    return HashInputs(**fields)


def test_none_and_other_algorithms_compile_to_nothing() -> None:
    assert compile_hash_spec({"algorithm": "consistent-hashing"}) is None
    assert compile_hash_spec({"algorithm": "consistent-hashing", "hash_on": "none"}) is None
    assert compile_hash_spec({"algorithm": "round-robin", "hash_on": "ip"}) is None


def test_ip() -> None:
    assert spec(hash_on="ip").key_for(inputs(client_ip="192.0.2.7")) == (b"192.0.2.7", None)


def test_header_and_repeated_header() -> None:
    s = spec(hash_on="header", hash_on_header="X-Tenant")
    assert s.key_for(inputs(headers={b"x-tenant": b"acme"})) == (b"acme", None)
    assert s.key_for(inputs(headers={b"x-tenant": b"a, b"})) == (b"a, b", None)
    # Present but empty is a value (Kong: an empty string is truthy).
    assert s.key_for(inputs(headers={b"x-tenant": b""})) == (b"", None)
    assert s.needs == frozenset({"headers"})


def test_path_without_query() -> None:
    s = spec(hash_on="path")
    assert s.key_for(inputs(path=b"/a/b")) == (b"/a/b", None)
    assert s.key_for(inputs(path=b"/a/b?x=1")) == (b"/a/b", None)


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        # Kong's spec 03-consistent-hashing_spec.lua, "uses the normalized path".
        (b"/root/../%2e/root///././%2F.subdir/../.subdir/./%28%29", b"/root/.subdir/()"),
        (b"/my-path", b"/my-path"),
        (b"/a%20b", b"/a b"),
        (b"//a///b", b"/a/b"),
        (b"/a/", b"/a/"),
        (b"/a/.", b"/a/"),
        (b"/a/./", b"/a/"),
        (b"/a/b/..", b"/a/"),
        (b"/a/..", b"/"),
        (b"/../../x", b"/x"),  # never above the root
        (b"/%2e%2E/x", b"/x"),
        (b"/a/.b/..c", b"/a/.b/..c"),  # dots inside names are names
        (b"/a%zz", b"/a%zz"),  # a malformed escape stays
        (b"/a%252e", b"/a%2e"),  # decoded once
    ],
)
def test_path_is_normalised_as_nginx_uri(raw: bytes, normalised: bytes) -> None:
    assert normalise_path(raw) == normalised
    assert spec(hash_on="path").key_for(inputs(path=raw + b"?q=1")) == (normalised, None)


def test_query_arg_decoding_and_multiple_values_sorted() -> None:
    s = spec(hash_on="query_arg", hash_on_query_arg="user id")
    assert s.key_for(inputs(query=b"user+id=b%20c")) == (b"b c", None)
    assert s.key_for(inputs(query=b"?user%20id=zed&x=1&user+id=alf&user+id=mo")) == (b"alf,mo,zed", None)
    assert s.key_for(inputs(query=b"user+id")) == (b"true", None)  # Kong's boolean arg
    assert s.key_for(inputs(query=b"other=1")) == (b"", None)  # no fallback: hash of ""


def test_uri_capture() -> None:
    s = spec(hash_on="uri_capture", hash_on_uri_capture="tenant")
    assert s.key_for(inputs(captures={"tenant": "acme"})) == (b"acme", None)
    assert s.key_for(inputs(captures=None)) == (b"", None)


def test_consumer_has_no_value_so_fallback_is_used() -> None:
    s = spec(hash_on="consumer", hash_fallback="ip")
    assert s.key_for(inputs(client_ip="10.1.1.1")) == (b"10.1.1.1", None)


@pytest.mark.parametrize(
    ("fields", "both", "primary_missing", "fallback_value"),
    [
        ({"hash_on": "header", "hash_on_header": "a", "hash_fallback": "header", "hash_fallback_header": "b"},
         {"headers": {b"a": b"1", b"b": b"2"}}, {"headers": {b"b": b"2"}}, b"2"),
        ({"hash_on": "query_arg", "hash_on_query_arg": "q", "hash_fallback": "path"},
         {"query": b"q=1", "path": b"/p"}, {"query": b"r=1", "path": b"/p"}, b"/p"),
        ({"hash_on": "uri_capture", "hash_on_uri_capture": "c", "hash_fallback": "query_arg",
          "hash_fallback_query_arg": "r"}, {"captures": {"c": "1"}, "query": b"r=2"}, {"query": b"r=2"}, b"2"),
        ({"hash_on": "ip", "hash_fallback": "uri_capture", "hash_fallback_uri_capture": "c"},
         {"client_ip": "1", "captures": {"c": "2"}}, {"captures": {"c": "2"}}, b"2"),
    ],
)
def test_fallback_used_only_when_primary_has_no_value(
    fields: dict[str, Any],
    both: dict[str, Any],
    primary_missing: dict[str, Any],
    fallback_value: bytes,
) -> None:
    s = spec(**fields)
    assert s.key_for(inputs(**both)) == (b"1", None)
    assert s.key_for(inputs(**primary_missing)) == (fallback_value, None)
    if fields["hash_fallback"] != "path":  # a request always has a path
        assert s.key_for(inputs()) == (b"", None)  # neither: hash of ""


def test_cookie_present() -> None:
    s = spec(hash_on="cookie", hash_on_cookie="Sticky")
    assert s.key_for(inputs(cookie_header=b"a=1; sticky=abc; Sticky=zzz")) == (b"abc", None)
    assert s.key_for(inputs(headers={b"cookie": b"Sticky=v"})) == (b"v", None)


def test_cookie_missing_is_generated_with_path_and_httponly() -> None:
    s = spec(hash_on="cookie", hash_on_cookie="Sticky", hash_on_cookie_path="/shop")
    key, set_cookie = s.key_for(inputs(cookie_header=b"other=1"))
    assert set_cookie is not None
    uuid.UUID(key.decode())  # a UUID
    assert set_cookie == b"Sticky=" + key + b"; Path=/shop; HttpOnly"
    key2, _ = s.key_for(inputs())
    assert key2 != key
    default_path = spec(hash_on="cookie", hash_on_cookie="c").key_for(inputs())[1]
    assert default_path is not None and re.fullmatch(rb"c=[0-9a-f-]{36}; Path=/; HttpOnly", default_path)


def test_cookie_as_fallback_generated_only_when_primary_missing() -> None:
    s = spec(hash_on="header", hash_on_header="x", hash_fallback="cookie", hash_on_cookie="c")
    assert s.key_for(inputs(headers={b"x": b"1"})) == (b"1", None)
    assert s.key_for(inputs(cookie_header=b"c=2")) == (b"2", None)
    key, set_cookie = s.key_for(inputs())
    assert set_cookie is not None and set_cookie.startswith(b"c=" + key + b";")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hash_on": "header"}, "hash_on_header"),
        ({"hash_on": "cookie"}, "hash_on_cookie"),
        ({"hash_on": "query_arg"}, "hash_on_query_arg"),
        ({"hash_on": "uri_capture"}, "hash_on_uri_capture"),
        ({"hash_on": "ip", "hash_fallback": "header"}, "hash_fallback_header"),
        ({"hash_on": "none", "hash_fallback": "ip"}, "must be 'none'"),
        ({"hash_on": "cookie", "hash_on_cookie": "c", "hash_fallback": "ip"}, "must be 'none'"),
        ({"hash_on": "ip", "hash_fallback": "ip"}, "must differ"),
        ({"hash_on": "header", "hash_on_header": "a", "hash_fallback": "header", "hash_fallback_header": "a"},
         "must differ"),
        ({"hash_on": "weather"}, "must be one of"),
        ({"hash_on": "header", "hash_on_header": "bad header"}, "not a valid header"),
        ({"hash_on": "cookie", "hash_on_cookie": "c", "hash_on_cookie_path": "nope"}, "cookie_path"),
    ],
)
def test_invalid_settings(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_hash_spec({"algorithm": "consistent-hashing", **fields})


def test_router_exposes_named_captures_of_regex_routes() -> None:
    router: Router[str] = Router([
        RouteSpec(id="r1", name=None, service="svc", paths=(r"~/t/(?<tenant>[a-z]+)(/(?P<rest>x))?",)),
        RouteSpec(id="r2", name=None, service="svc", paths=("/plain",)),
        RouteSpec(id="r3", name=None, service="svc", paths=(r"~/anon/(\d+)",)),
    ])
    m = router.match(b"GET", None, b"/t/acme/y?z=1")
    assert m is not None and m.captures == {"tenant": "acme"}  # unmatched group left out
    m = router.match(b"GET", None, b"/t/acme/x")
    assert m is not None and m.captures == {"tenant": "acme", "rest": "x"}
    m = router.match(b"GET", None, b"/plain/x")
    assert m is not None and m.captures is None
    m = router.match(b"GET", None, b"/anon/12")
    assert m is not None and m.captures is None


def test_compile_config_wires_hash_spec_and_refuses_bad_settings() -> None:
    def entities(**upstream: Any) -> dict[str, list[dict[str, Any]]]:
        return {
            "upstreams": [{"id": "u", "name": "up", "algorithm": "consistent-hashing", **upstream}],
            "targets": [{"id": f"t{i}", "target": f"10.0.0.{i}:80", "upstream": {"id": "u"}} for i in (1, 2, 3)],
            "services": [{"id": "s", "host": "up"}],
            "routes": [{"id": "r", "service": {"id": "s"}, "paths": [r"~/t/(?<tenant>\w+)"]}],
        }

    cfg = compile_config(1, "h", entities(hash_on="uri_capture", hash_on_uri_capture="tenant", slots=1000))
    upstream = cfg.upstreams["u"]
    assert upstream.slots == 1000 and upstream.hash_spec is not None
    assert [t.key for t in upstream.targets] == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    m = cfg.match(b"GET", None, b"/t/acme")
    assert m is not None and m.service is not None and m.service.upstream is upstream
    key, _ = upstream.hash_spec.key_for(HashInputs(captures=m.captures))
    assert key == b"acme"
    balancer = m.service.balancer
    assert balancer is not None
    first = balancer.pick(BalancerHandle(key))
    assert all(balancer.pick(BalancerHandle(key)) == first for _ in range(5))
    with pytest.raises(ConfigError, match="hash_on_header"):
        compile_config(1, "h", entities(hash_on="header"))
    with pytest.raises(ConfigError, match="slots"):
        compile_config(1, "h", entities(slots=5))


def test_sticky_sessions_key_is_the_sticky_cookie_and_nothing_is_generated() -> None:
    s = compile_hash_spec({"algorithm": "sticky-sessions", "sticky_sessions_cookie": "Srv"})
    assert s is not None
    assert s.key_for(HashInputs(cookie_header=b"a=1; srv=abc")) == (b"abc", None)
    # No cookie: the empty key (the balancer then picks by least connections); the
    # proxy, not the spec, sets the cookie once the target is known.
    assert s.key_for(HashInputs(cookie_header=b"other=1")) == (b"", None)
    assert s.key_for(HashInputs()) == (b"", None)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "'sticky_sessions_cookie' is required"),
        ({"sticky_sessions_cookie": "a b"}, "not a valid cookie name"),
        ({"sticky_sessions_cookie": "s", "sticky_sessions_cookie_path": "/a;b"}, "sticky_sessions_cookie_path"),
        ({"sticky_sessions_cookie": "s", "hash_on": "ip"}, "'hash_on' must be 'none'"),
    ],
)
def test_invalid_sticky_settings(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_hash_spec({"algorithm": "sticky-sessions", **fields})
