"""What the control plane accepts, every data plane of the same version applies.

Issue 12, case 9: a route regex the CP validated as text (``~/\\u0041bc``) was compiled
as bytes by every DP, which NACKed it and then every later config. Hypothesis generates
route entities with regex-ish paths and header values (backslash escapes, ``\\u``,
``\\x``, ``\\N{...}``, PCRE named groups, inline flags, unicode, deep nesting, huge
repeats), keeps those the CP's schema accepts, and applies them the way a DP applies a
snapshot from the wire (canonical JSON bodies, hash verified, compiled by
:func:`data_plane.runtime.compile_config` and its router). None may fail.

The same for the values a DP writes into requests and responses or compiles (an
upstream's ``host_header``, hash header and cookie names, ``hash_on_cookie_path``; a
target; a service's ``path``) with newlines, control characters, ``;`` and lone
surrogates among the pieces: what the CP accepts, a DP applies, and nothing it then
writes can be split.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from control_plane.errors import SchemaViolation
from control_plane.schemas import validate_entity
from data_plane.cluster_client import apply_snapshot
from data_plane.hash_key import HashInputs
from ferry_shared.route_regex import (
    MAX_GROUP_DEPTH,
    RouteRegexError,
    compile_header_regex,
    compile_path_regex,
)
from ferry_shared.snapshot_format import canonical_json, config_hash
from proto import cluster_pb2

# Pieces a route regex is made of, the troublesome ones included.
_TOKENS = [
    "\\u0041", "\\U0001F600", "\\x41", "\\xe9", "\\N{LATIN SMALL LETTER A}", "\\d", "\\w",
    "\\s", "\\b", "\\B", "\\A", "\\Z", "\\z", "\\G", "\\Q", "\\E", "\\p{L}", "\\k<id>",
    "\\1", "\\0", "\\8", "\\/", "\\.", "\\\\", "\\", "\\-", "\\]", "\\[",
    "(?<id>", "(?<rest>", "(?<=a)", "(?<!b)", "(?P<id>", "(?P=id)", "(?:", "(?=", "(?!",
    "(?i)", "(?u)", "(?L)", "(?a)", "(?x)", "(?s)", "(?#c)", "(", ")", "[", "]", "[^",
    "{2}", "{1,3}", "{99999999999}", "*", "+", "?", "*?", "+?", "|", "^", "$", ".", "-",
    "/", "a", "b", "0", "é", "ü", "ж", "😀", "%", "%2F", "~", "#", " ", "{", "}", ",",
    # Control characters and halves of a surrogate pair (a JSON body can escape one,
    # a UTF-7 form can spell one): the CP must refuse them or the DP apply them.
    "\n", "\r\n", "\t", "\x00", "\x7f", "\ud800", "\udfff",
]


def _regex_text_of(min_size: int) -> st.SearchStrategy[str]:
    return st.lists(
        st.one_of(
            st.sampled_from(_TOKENS),
            # Lone surrogates included: the schema refuses them by field.
            st.text(max_size=3),
        ),
        min_size=min_size,
        max_size=12,
    ).map("".join)


_regex_text = _regex_text_of(0)

_nested = st.integers(min_value=MAX_GROUP_DEPTH - 2, max_value=MAX_GROUP_DEPTH + 2).map(
    lambda n: "(" * n + "a" + ")" * n
)

_path = st.one_of(
    _regex_text.map(lambda text: "~/" + text),
    _nested.map(lambda text: "~/" + text),
    _regex_text.map(lambda text: "/" + text),
)
_header_value = st.one_of(
    _regex_text.map(lambda text: "~*" + text),
    _regex_text_of(1),
)
_header_name = st.sampled_from(["x-a", "X-Version", "accept", "x_b", "x-a\n", "x-\ud800"])


def _entity(kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "created_at": 1700000000, "updated_at": 1700000000, **fields}


SERVICE = validate_entity("services", _entity("services", name="s", host="example.com"))


def _apply_like_a_data_plane(*routes: dict[str, Any]) -> None:
    """Build the snapshot a CP would send and apply it as a DP does (raises ConfigError)."""
    resources = [("services", SERVICE["id"], canonical_json(SERVICE))]
    resources += [("routes", route["id"], canonical_json(route)) for route in routes]
    snapshot = cluster_pb2.Snapshot(
        version=1,
        hash=config_hash(resources),
        resources=[
            cluster_pb2.Resource(kind=kind, id=ident, body=body) for kind, ident, body in resources
        ],
    )
    config = apply_snapshot(snapshot, None)
    # Matching compiles nothing more, and must not fail on what was compiled.
    config.router.match(b"GET", b"example.com", b"/a/b?c", {b"x-a": b"Value"})


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    paths=st.lists(_path, min_size=0, max_size=3),
    headers=st.dictionaries(_header_name, st.lists(_header_value, min_size=1, max_size=2), max_size=2),
)
def test_every_route_the_control_plane_accepts_compiles_on_a_data_plane(
    paths: list[str], headers: dict[str, list[str]]
) -> None:
    candidate = _entity("routes", service={"id": SERVICE["id"]}, paths=paths or None,
                        headers=headers or None)
    try:
        route = validate_entity("routes", candidate)
    except SchemaViolation:
        event("refused by the CP")
        return
    event("accepted by the CP")
    _apply_like_a_data_plane(route)


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(_regex_text, _nested, st.text()))
def test_the_shared_compiler_either_compiles_or_raises_route_regex_error(text: str) -> None:
    """Never another exception (OverflowError, RecursionError, UnicodeEncodeError...)."""
    for compile_ in (compile_path_regex, compile_header_regex):
        try:
            pattern = compile_(text)
        except RouteRegexError as exc:
            assert str(exc)
        else:
            assert isinstance(pattern.pattern, bytes)


@pytest.mark.parametrize(
    "path",
    ["~/\\u0041bc", "~/\\U0001F600", "~/\\N{LATIN SMALL LETTER A}", "~/(?u)a", "~/a{99999999999}",
     "~/" + "(" * (MAX_GROUP_DEPTH + 1) + ")" * (MAX_GROUP_DEPTH + 1)],
)
def test_what_a_data_plane_cannot_compile_is_a_schema_violation(path: str) -> None:
    with pytest.raises(SchemaViolation) as raised:
        validate_entity("routes", _entity("routes", paths=[path]))
    (message,) = raised.value.fields["paths"]
    assert message.startswith(f"invalid regex: '{path[1:]}' (PCRE returned: ")


def test_a_header_regex_a_data_plane_cannot_compile_is_a_schema_violation() -> None:
    with pytest.raises(SchemaViolation) as raised:
        validate_entity("routes", _entity("routes", headers={"x-a": ["~*\\u0041"]}))
    assert raised.value.fields["headers"] == (
        "invalid regex: '\\u0041' (PCRE returned: bad escape \\u at position 0)"
    )


@pytest.mark.parametrize(
    "path", ["~/\\x41bc", "~/(?<id>\\d+)/(?<rest>.*)", "~/é+", "~/" + "(" * MAX_GROUP_DEPTH + ")" * MAX_GROUP_DEPTH]
)
def test_regexes_both_planes_accept(path: str) -> None:
    route = validate_entity("routes", _entity("routes", service={"id": SERVICE["id"]}, paths=[path]))
    _apply_like_a_data_plane(route)


# ------------------------------------------------ upstreams, targets, services

# Values written into requests and responses by a DP: ``host_header`` (Host of proxied
# requests and probes), ``hash_on_cookie_path`` (Set-Cookie), a service's ``path``
# (the request line), a target (connect address and Host); and names a DP compiles
# (hash headers and cookie). Pieces that broke them: a trailing newline (Python's "$"),
# CR/LF, ";", NUL, Unicode digits, lone surrogates.
_PIECES = [
    "a", "x-a", "example", ".", "-", "_", "/", ";", ":", "80", "\u0668\u0660", "[", "]", "::1",
    "10.0.0.1", "%3B", "%", "é", "\n", "\r\n", "\r", "\t", " ", "\x00", "\x7f", "\ud800", "\udfff",
]
_hazard_text = st.one_of(
    st.lists(st.sampled_from(_PIECES), min_size=1, max_size=5).map("".join),
    st.text(min_size=1, max_size=4),
)
_CONTROL = frozenset(range(0x20)) | {0x7F}


def _accepted(kind: str, candidate: dict[str, Any]) -> dict[str, Any] | None:
    try:
        return validate_entity(kind, candidate)
    except SchemaViolation:
        return None


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(
    header=_hazard_text.map(lambda text: "x-" + text),
    cookie=_hazard_text,
    cookie_path=_hazard_text.map(lambda text: "/" + text),
    host_header=_hazard_text,
    service_path=_hazard_text.map(lambda text: "/" + text),
    target=_hazard_text,
)
def test_every_upstream_target_and_service_the_control_plane_accepts_a_data_plane_applies(
    header: str, cookie: str, cookie_path: str, host_header: str, service_path: str, target: str
) -> None:
    hashing = {"algorithm": "consistent-hashing"}
    candidates = [
        _entity("upstreams", name="t.internal"),  # always valid: holds the target
        _entity("upstreams", name="h.internal", **hashing, hash_on="header", hash_on_header=header,
                hash_fallback="header", hash_fallback_header="x-fallback"),
        _entity("upstreams", name="hh.internal", host_header=host_header),
        _entity("upstreams", name="c.internal", **hashing, hash_on="cookie", hash_on_cookie=cookie),
        _entity("upstreams", name="cp.internal", **hashing, hash_on="cookie", hash_on_cookie="c",
                hash_on_cookie_path=cookie_path),
    ]
    upstreams = [u for u in (_accepted("upstreams", c) for c in candidates) if u is not None]
    event(f"{len(upstreams) - 1} of 4 upstream(s) accepted")
    resources: list[tuple[str, str, bytes]] = [("upstreams", u["id"], canonical_json(u)) for u in upstreams]
    accepted = _accepted("targets", _entity("targets", upstream={"id": upstreams[0]["id"]}, target=target))
    if accepted is not None:
        event("target accepted")
        resources.append(("targets", accepted["id"], canonical_json(accepted)))
    service = _accepted("services", _entity("services", name="p", host="example.com", path=service_path))
    if service is not None:
        resources.append(("services", service["id"], canonical_json(service)))
    snapshot = cluster_pb2.Snapshot(
        version=1,
        hash=config_hash(resources),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in resources],
    )
    config = apply_snapshot(snapshot, None)  # raises ConfigError: a NACK
    # And nothing the DP writes into a request or a response can be split by it.
    for compiled in config.upstreams.values():
        assert not _CONTROL & set(compiled.host_header or b""), compiled.host_header
        for address in compiled.targets:
            assert not _CONTROL & set(address.key_bytes) and b" " not in address.key_bytes
        spec = compiled.hash_spec
        if spec is not None and spec.hash_on == "cookie":
            _, set_cookie = spec.key_for(HashInputs())
            assert set_cookie is not None and set_cookie.count(b";") == 2, set_cookie
            assert not _CONTROL & set(set_cookie)
    for compiled_service in config.services.values():
        path = (compiled_service.path or "/").encode("utf-8")
        assert not _CONTROL & set(path) and b" " not in path
