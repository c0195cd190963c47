"""Route matching: prefixes, regexes, hosts, methods, headers, ordering, path joins."""

from __future__ import annotations

import pytest

from data_plane.router import Router, RouteSpec


def spec(rid: str, **kw: object) -> RouteSpec[str]:
    kw.setdefault("service", f"svc-{rid}")
    return RouteSpec(id=rid, name=rid, **kw)  # type: ignore[arg-type]


def route_id(router: Router[str], method: bytes = b"GET", host: bytes | None = None, path: bytes = b"/", headers: dict[bytes, bytes] | None = None) -> str | None:
    m = router.match(method, host, path, headers)
    return None if m is None else m.route.id


def test_longest_prefix_wins_regardless_of_order() -> None:
    r = Router([spec("short", paths=("/a",)), spec("long", paths=("/a/b",))])
    assert route_id(r, path=b"/a/b/c") == "long"
    assert route_id(r, path=b"/a/x") == "short"
    assert route_id(r, path=b"/abc") == "short"  # plain prefix, as Kong
    assert route_id(r, path=b"/b") is None


def test_more_fields_are_more_specific() -> None:
    r = Router(
        [
            spec("paths", paths=("/api/long/prefix",)),
            spec("host+path", paths=("/api",), hosts=("example.com",)),
            spec("host+method+path", paths=("/api",), hosts=("example.com",), methods=("POST",)),
        ]
    )
    assert route_id(r, b"POST", b"example.com", b"/api/long/prefix") == "host+method+path"
    assert route_id(r, b"GET", b"example.com", b"/api/long/prefix") == "host+path"
    assert route_id(r, b"GET", b"other.com", b"/api/long/prefix") == "paths"


def test_regex_paths_anchored_and_before_prefixes() -> None:
    r = Router([spec("prefix", paths=("/users/aaaaaaaa",)), spec("re", paths=(r"~/users/\d+$",))])
    assert route_id(r, path=b"/users/42") == "re"
    assert route_id(r, path=b"/x/users/42") is None  # anchored at the start
    assert route_id(r, path=b"/users/aaaaaaaa") == "prefix"
    prio = Router(
        [spec("low", paths=(r"~/v\d",), regex_priority=1), spec("high", paths=(r"~/v1",), regex_priority=5)]
    )
    assert route_id(prio, path=b"/v1") == "high"


def test_hosts_exact_wildcard_and_port() -> None:
    r = Router(
        [
            spec("exact", hosts=("api.example.com",)),
            spec("wild", hosts=("*.example.com",)),
            spec("suffixwild", hosts=("example.*",)),
            spec("port", hosts=("ported.test:8080",)),
        ]
    )
    assert route_id(r, host=b"API.Example.com:8000") == "exact"
    assert route_id(r, host=b"x.y.example.com") == "wild"
    assert route_id(r, host=b"example.com") == "suffixwild"
    assert route_id(r, host=b"www.example.net") is None
    assert route_id(r, host=b"example.org") == "suffixwild"
    assert route_id(r, host=b"ported.test:8080") == "port"
    assert route_id(r, host=b"ported.test:9090") is None
    assert route_id(r, host=None) is None
    assert route_id(Router([spec("v6", hosts=("::1",))]), host=b"[::1]:80") is None


def test_wildcard_hosts_with_a_port_match_only_that_port() -> None:
    r = Router([spec("wildport", hosts=("*.example.com:8000",))])
    assert route_id(r, host=b"a.example.com:8000") == "wildport"
    assert route_id(r, host=b"a.example.com:9000") is None
    assert route_id(r, host=b"a.example.com") is None


def test_plain_hosts_before_wildcards() -> None:
    r = Router([spec("wild", hosts=("*.example.com",)), spec("plain", hosts=("a.example.com",))])
    assert route_id(r, host=b"a.example.com") == "plain"


def test_methods_and_headers() -> None:
    r = Router(
        [
            spec("get", paths=("/",), methods=("GET", "HEAD")),
            spec("v2", paths=("/",), headers=(("X-Version", ("v2", "~*^beta")),)),
        ]
    )
    assert r.uses_headers
    assert route_id(r, b"POST", path=b"/", headers={b"x-version": b"V2"}) == "v2"
    assert route_id(r, b"POST", path=b"/", headers={b"x-version": b"Beta-7"}) == "v2"
    assert route_id(r, b"POST", path=b"/", headers={b"x-version": b"v3"}) is None
    assert route_id(r, b"HEAD", path=b"/") == "get"


def test_a_repeated_header_matches_when_any_occurrence_does() -> None:
    r = Router([spec("v2", paths=("/",), headers=(("X-Version", ("v2",)),))])
    many: dict[bytes, bytes | list[bytes]] = {b"x-version": [b"v1", b"V2"]}
    assert r.match(b"GET", None, b"/", many) is not None
    assert r.match(b"GET", None, b"/", {b"x-version": [b"v1", b"v3"]}) is None


@pytest.mark.parametrize(
    ("service_path", "route_path", "strip", "req", "upstream"),
    [
        (None, "/api", True, b"/api/rest?x=1", b"/rest?x=1"),
        (None, "/api", True, b"/api", b"/"),
        (None, "/api", False, b"/api/rest", b"/api/rest"),
        ("/svc", "/api", True, b"/api/rest", b"/svc/rest"),
        ("/svc", "/api", True, b"/apirest", b"/svc/rest"),
        ("/svc", "/api", True, b"/api", b"/svc"),
        ("/svc", "/api", True, b"/api/", b"/svc/"),
        ("/svc/", "/api", True, b"/api/rest", b"/svc/rest"),
        ("/svc/", "/api", True, b"/api", b"/svc"),
        ("/svc/", "/api", True, b"/apirest", b"/svc/rest"),
        ("/svc", "/api", False, b"/api/rest", b"/svc/api/rest"),
        ("/svc/", "/api", False, b"/api/rest", b"/svc/api/rest"),
        ("/svc", r"~/u/\d+", True, b"/u/12/p?q", b"/svc/p?q"),
        (None, "/", True, b"/a/b", b"/a/b"),
    ],
)
def test_upstream_path(service_path: str | None, route_path: str, strip: bool, req: bytes, upstream: bytes) -> None:
    r = Router([spec("r", paths=(route_path,), service_path=service_path, strip_path=strip)])
    m = r.match(b"GET", None, req)
    assert m is not None and m.upstream_path == upstream


def test_query_not_used_for_matching() -> None:
    r = Router([spec("r", paths=("/a",))])
    assert route_id(r, path=b"/b?x=/a") is None


def test_bad_regex_rejected() -> None:
    with pytest.raises(ValueError, match="invalid regex"):
        Router([spec("bad", paths=("~/(",))])
