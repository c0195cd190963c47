"""Kong's ``spec/02-integration/05-proxy/10-balancer/03-consistent-hashing_spec.lua``,
case by case.

Kong's upstreams here set ``hash_on`` without ``algorithm``: Kong's schema then makes
the algorithm ``consistent-hashing`` (issue 13 theme 1), as Ferry's does.

Kong reads the hash value from a ``post-function`` plugin's response header
(``x-balancer-hash-value``); Ferry has no plugins, so a case checks instead that every
request went to one target and that it is the target Ferry's ring assigns to the value
Kong expects (the ring is built from the same sorted addresses and ``slots`` as the data
plane's). Kong runs each case for ipv4, ipv6 and ``localhost`` targets; the spec servers
here listen on 127.0.0.1, so the ipv4 mode runs.
"""

from __future__ import annotations

import re
import urllib.parse

import aiohttp
import pytest
import yarl

from data_plane.balancers import Address, BalancerHandle, BalancerOptions, create_balancer
from tests.support.admin import admin_call
from tests.support.kong import KongCluster, add_target, add_upstream, client_requests, unique

SLOTS = 10
SPEC = "03-consistent-hashing_spec.lua"
#: Empty: the upstreams are created as Kong's spec creates them (no ``algorithm``).
_FORCE: dict[str, str] = {}
NONE = None  # Kong's "NONE": no value from either source (hashes "")


async def _api(kong: KongCluster, http: aiohttp.ClientSession, upstream_name: str) -> str:
    """Kong's ``bu.add_api`` here: a route on a fresh host whose paths give the
    ``namespace`` and ``id`` captures the uri_capture cases hash on."""
    host = f"{unique('host')}.test"
    _, svc = await admin_call(
        http, "POST", f"{kong.admin}/services", {"name": unique("svc"), "url": f"http://{upstream_name}:80"}, 201
    )
    route = {
        "service": {"id": svc["id"]},
        "hosts": [host],
        "paths": [r"~/(?<namespace>[^/]+)/(?<id>[0-9]+)", "/"],
    }
    await admin_call(http, "POST", f"{kong.admin}/routes", route, 201)
    return host


def _ring_port(ports: list[int], value: str | None) -> int:
    """The port Ferry's ring (two targets of weight 10, ``slots`` 10) gives ``value``."""
    addresses = sorted((Address("127.0.0.1", p, 10) for p in ports), key=lambda a: a.key)
    ring = create_balancer("consistent-hashing", addresses, BalancerOptions(slots=SLOTS))
    key = None if value is None else value.encode()
    picked = ring.pick(BalancerHandle(hash_key=key))
    assert picked is not None
    return picked.port


async def _two_targets(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, **upstream: object):  # type: ignore[no-untyped-def]
    s1, s2 = await spec_servers(), await spec_servers()
    name, uid = await add_upstream(kong, http, **_FORCE, **upstream)
    await add_target(kong, http, uid, f"127.0.0.1:{s1.port}")
    await add_target(kong, http, uid, f"127.0.0.1:{s2.port}")
    host = await _api(kong, http, name)
    return s1, s2, host


async def _test_with_uri(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, uri: str, expect: str | None, **upstream: object) -> None:  # type: ignore[no-untyped-def]
    """Kong's ``test_with_uri``: one request, then SLOTS * 2 more; all on one target,
    the one the expected hash value picks."""
    s1, s2, host = await _two_targets(kong, http, spec_servers, **upstream)
    dp = await kong.data_plane()
    async with http.get(yarl.URL(f"{dp.proxy}{uri}", encoded=True), headers={"Host": host}) as response:
        assert response.status == 200
        answered = (await response.json())["port"]
    requests = SLOTS * 2
    oks, _, _ = await client_requests(dp, requests, host, path=uri)
    assert oks == requests
    requests += 1
    assert sorted((s1.total, s2.total)) == [0, requests]
    assert answered == _ring_port([s1.port, s2.port], expect)


async def test_hashing_on_header(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("hashing on header") — 03-consistent-hashing_spec.lua: one target gets all."""
    s1, s2, host = await _two_targets(kong, http, spec_servers, hash_on="header", hash_on_header="hashme")
    dp = await kong.data_plane()
    requests = SLOTS * 2
    oks, _, _ = await client_requests(dp, requests, host, headers={"hashme": "just a value"})
    assert oks == requests
    assert sorted((s1.total, s2.total)) == [0, requests]
    # It is hashing, not round-robin (which splits 10/10).
    assert _ring_port([s1.port, s2.port], "just a value") == (s1.port if s1.total else s2.port)


async def test_hashing_on_missing_header(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("hashing on missing header") — 03-consistent-hashing_spec.lua."""
    s1, s2, host = await _two_targets(kong, http, spec_servers, hash_on="header", hash_on_header="hashme")
    dp = await kong.data_plane()
    requests = SLOTS * 2
    oks, _, _ = await client_requests(dp, requests, host, headers={"nothashme": "just a value"})
    assert oks == requests
    assert sorted((s1.total, s2.total)) == [0, requests]


async def test_does_not_reply_with_set_cookie_if_cookie_is_already_set(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("does not reply with Set-Cookie if cookie is already set") —
    03-consistent-hashing_spec.lua (hashing on cookie). Passes either way: no hashing
    sets no cookie either."""
    s = await spec_servers()
    name, uid = await add_upstream(kong, http, hash_on="cookie", hash_on_cookie="hashme")
    await add_target(kong, http, uid, f"127.0.0.1:{s.port}")
    host = await _api(kong, http, name)
    dp = await kong.data_plane()
    async with http.get(f"{dp.proxy}/", headers={"Host": host, "Cookie": "hashme=some-cookie-value"}) as r:
        assert r.status == 200
        assert "Set-Cookie" not in r.headers


async def test_replies_with_set_cookie_if_cookie_is_not_set(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("replies with Set-Cookie if cookie is not set") — 03-consistent-hashing_spec.lua."""
    s1, s2, host = await _two_targets(kong, http, spec_servers, hash_on="cookie", hash_on_cookie="hashme")
    dp = await kong.data_plane()
    async with http.get(f"{dp.proxy}/", headers={"Host": host, "Cookie": "some-other-cooke=some-other-value"}) as r:
        match = re.search(r"hashme=(.*?);", r.headers.get("Set-Cookie", ""))
    assert match is not None
    requests = SLOTS * 2
    oks, _, _ = await client_requests(dp, requests - 1, host, headers={"Cookie": f"hashme={match.group(1)}"})
    assert oks + 1 == requests
    assert sorted((s1.total, s2.total)) == [0, requests]


async def test_path_simple_case(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("simple case") — 03-consistent-hashing_spec.lua (hashing on #path)."""
    await _test_with_uri(kong, http, spec_servers, "/my-path", "/my-path", hash_on="path")


async def test_path_only_uses_the_path_component(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("only uses the path component") — 03-consistent-hashing_spec.lua (hashing on #path)."""
    await _test_with_uri(kong, http, spec_servers, "/my-path?a=1&b=2", "/my-path", hash_on="path")


async def test_path_uses_the_normalized_path(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("uses the normalized path") — 03-consistent-hashing_spec.lua (hashing on #path)."""
    await _test_with_uri(
        kong, http, spec_servers,
        "/root/../%2e/root///././%2F.subdir/../.subdir/./%28%29", "/root/.subdir/()", hash_on="path",
    )


async def test_path_as_a_fallback(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("as a fallback") — 03-consistent-hashing_spec.lua (hashing on #path)."""
    await _test_with_uri(
        kong, http, spec_servers, "/my-path?a=1&b=2", "/my-path",
        hash_on="header", hash_on_header="my-nonexistent-header", hash_fallback="path",
    )


async def test_uri_capture_simple_case(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("simple case") — 03-consistent-hashing_spec.lua (hashing on #uri_capture)."""
    await _test_with_uri(kong, http, spec_servers, "/foo/123", "foo", hash_on="uri_capture", hash_on_uri_capture="namespace")
    await _test_with_uri(kong, http, spec_servers, "/foo/123", "123", hash_on="uri_capture", hash_on_uri_capture="id")


async def test_uri_capture_missing(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("missing") — 03-consistent-hashing_spec.lua (hashing on #uri_capture)."""
    await _test_with_uri(kong, http, spec_servers, "/", NONE, hash_on="uri_capture", hash_on_uri_capture="namespace")


async def test_uri_capture_missing_w_fallback(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("missing w/ fallback") — 03-consistent-hashing_spec.lua (hashing on #uri_capture)."""
    await _test_with_uri(
        kong, http, spec_servers, "/?test=1", "1",
        hash_on="uri_capture", hash_on_uri_capture="namespace", hash_fallback="query_arg", hash_fallback_query_arg="test",
    )


async def test_uri_capture_as_a_fallback(kong: KongCluster, http: aiohttp.ClientSession, spec_servers) -> None:  # type: ignore[no-untyped-def]
    """Kong: it("as a fallback") — 03-consistent-hashing_spec.lua (hashing on #uri_capture)."""
    await _test_with_uri(
        kong, http, spec_servers, "/my-namespace/123?a=1&b=2", "my-namespace",
        hash_on="query_arg", hash_on_query_arg="hashme", hash_fallback="uri_capture", hash_fallback_uri_capture="namespace",
    )


QUERY_CASES = [
    ("when the arg is present in the request", "/?hashme=123", "123", {"hash_on_query_arg": "hashme"}),
    ("when the arg is not present in request", "/", NONE, {"hash_on_query_arg": "hashme"}),
    ("when the arg has no value (boolean)", "/?hashme", "true", {"hash_on_query_arg": "hashme"}),
    # Kong's "NONE" is its plugin's rendering of an empty value too; "" hashes as "".
    ("when the arg has an empty value", "/?foo=", "", {"hash_on_query_arg": "foo"}),
    ("as a fallback", "/?fallback=123", "123",
     {"hash_on_query_arg": "absent", "hash_fallback": "query_arg", "hash_fallback_query_arg": "fallback"}),
    ("multiple args are sorted and concatenated", "/?foo=b&foo=a&foo=c", "a,b,c", {"hash_on_query_arg": "foo"}),
    ("multiple args of mixed type are handled", "/?foo=s&foo&foo=1&foo=", ",1,s,true", {"hash_on_query_arg": "foo"}),
    ("multiple boolean args are converted to strings", "/?foo&foo&", "true,true", {"hash_on_query_arg": "foo"}),
]


@pytest.mark.parametrize(("case", "uri", "expect", "fields"), QUERY_CASES, ids=[c[0] for c in QUERY_CASES])
async def test_hashing_on_a_query_string_arg(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, case: str, uri: str, expect: str | None, fields: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """Kong: the it(...) cases of describe("hashing on a #query string arg") —
    03-consistent-hashing_spec.lua, one parameter per case, named after it."""
    await _test_with_uri(kong, http, spec_servers, uri, expect, hash_on="query_arg", **fields)


ESCAPED = ["{}", "\r\n", ".", "-----", "-1", "()", "&", "=", "//", "[]", "$", "@", "++", ";", "'", '"',
           "*", ",", "#", " ", "%", "???"]


@pytest.mark.parametrize("arg", ESCAPED, ids=[repr(a) for a in ESCAPED])
async def test_escaped_arg_names(kong: KongCluster, http: aiohttp.ClientSession, spec_servers, arg: str) -> None:  # type: ignore[no-untyped-def]
    """Kong: it(string.format("(%q)", arg)) — 03-consistent-hashing_spec.lua
    (describe "escaped arg names"): ``/?<escaped name>=<i>`` hashes ``<i>``."""
    value = str(ESCAPED.index(arg) + 1)
    uri = f"/?{urllib.parse.quote(arg, safe='')}={value}"
    await _test_with_uri(kong, http, spec_servers, uri, value, hash_on="query_arg", hash_on_query_arg=arg)
