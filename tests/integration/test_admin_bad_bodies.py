"""A real control plane (real Redis, real HTTP) answers hostile or broken requests with 4xx.

Each case was a 500 (or a 503 retry loop, or seconds of CPU) before: unreadable
form and multipart bodies, JSON nested past the recursion limit or holding NaN,
a YAML alias bomb, PUT by name with another entity's id, malformed query
options. Every answer is Kong's shape; nothing is logged as an unexpected error.
"""

from __future__ import annotations

import base64
import json
import logging
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.control_planes import start_control_plane

CANNOT_PARSE_JSON = {"message": "Cannot parse JSON body"}


@pytest.fixture
async def admin(redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[str]:
    """The Admin API base URL of a started control plane; no unexpected error may be logged."""
    caplog.set_level(logging.ERROR, logger="control_plane.admin_api")
    cp = await start_control_plane(redis_url, tmp_path / "cp")
    try:
        yield f"http://127.0.0.1:{cp.admin_port}"
    finally:
        await cp.stop(0.5)
    unexpected = [r.getMessage() for r in caplog.records if "unexpected error" in r.getMessage()]
    assert not unexpected, unexpected


async def send(
    base: str, method: str, path: str, data: bytes | str | None = None, *,
    content_type: str | None = None, json_body: Any = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """One request with exactly these body bytes; returns (status, JSON body or None, response)."""
    headers = {"Content-Type": content_type} if content_type else {}
    async with aiohttp.ClientSession() as http:
        async with http.request(
            method, base + path, data=data, json=json_body, headers=headers
        ) as response:
            text = await response.read()
            body = json.loads(text) if text else None
            return response.status, body, response


async def seed(base: str) -> dict[str, dict[str, Any]]:
    """An upstream with a target, a service with a route; returns them by kind."""
    entities = {}
    for kind, path, body in (
        ("upstreams", "/upstreams", {"name": "u1.internal"}),
        ("targets", "/upstreams/u1.internal/targets", {"target": "10.0.0.1:80"}),
        ("services", "/services", {"name": "s1", "host": "u1.internal"}),
        ("routes", "/services/s1/routes", {"name": "r1", "paths": ["/r1"]}),
    ):
        status, entity, _ = await send(base, "POST", path, json_body=body)
        assert status == 201, entity
        entities[kind] = entity
    return entities


# ------------------------------------------------------------- form bodies

#: Multipart bodies aiohttp's parser cannot read, each with the reason Ferry gives.
BROKEN_MULTIPART = [
    pytest.param("multipart/form-data", b"host=a", "no multipart boundary", id="no-boundary"),
    pytest.param(
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="host"\r\n\r\nexample.com',
        "malformed or truncated multipart body",
        id="truncated-part",
    ),
    pytest.param(
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="ho\x01st"\r\n\r\nexample.com\r\n--XX--\r\n',
        "invalid multipart part header",
        id="control-character-in-part-header",
    ),
    pytest.param(
        "multipart/form-data; boundary=XX",
        b'--XX\r\nContent-Disposition: form-data; name="host"\r\n\r\n\xff\xfe\r\n--XX--\r\n',
        "not valid UTF-8 text",
        id="invalid-utf8-in-part",
    ),
]

BROKEN_FORMS = [
    pytest.param(b"host=\xff\xfe", id="raw-invalid-utf8"),
    pytest.param(b"host=%ff%fe", id="percent-encoded-invalid-utf8"),
]

FORM = "application/x-www-form-urlencoded"


@pytest.mark.parametrize(("content_type", "body", "reason"), BROKEN_MULTIPART)
async def test_an_unreadable_multipart_body_is_a_400_on_every_write(
    admin: str, content_type: str, body: bytes, reason: str
) -> None:
    await seed(admin)
    expected = {"message": f"Cannot parse form body: {reason}"}
    for method, path in (
        ("POST", "/services"),
        ("PUT", "/services/s1"),
        ("PATCH", "/services/s1"),
        ("POST", "/services/s1/routes"),
        ("PUT", "/upstreams/u1.internal/targets/10.0.0.1:80"),
        ("POST", "/config"),
    ):
        status, answer, _ = await send(admin, method, path, body, content_type=content_type)
        assert (status, answer) == (400, expected), (method, path)
    # Nothing was changed by any of them.
    status, service, _ = await send(admin, "GET", "/services/s1")
    assert status == 200 and service["host"] == "u1.internal"


@pytest.mark.parametrize("body", BROKEN_FORMS)
async def test_a_form_body_that_is_not_utf8_is_a_400_not_a_500_nor_replacement_characters(
    admin: str, body: bytes
) -> None:
    await seed(admin)
    expected = {"message": "Cannot parse form body: not valid UTF-8 text"}
    for method, path in (("POST", "/services"), ("PATCH", "/services/s1"), ("POST", "/config")):
        status, answer, _ = await send(admin, method, path, body, content_type=FORM)
        assert (status, answer) == (400, expected), (method, path)


async def test_a_readable_form_still_works(admin: str) -> None:
    status, service, _ = await send(
        admin, "POST", "/services", "name=f%C3%A9&host=example.com&tags[]=a&tags[]=b", content_type=FORM
    )
    assert status == 201, service
    assert (service["name"], service["tags"]) == ("fé", ["a", "b"])
    form = aiohttp.FormData()
    form.add_field("name", "mp")
    form.add_field("host", "example.com")
    async with aiohttp.ClientSession() as http:
        async with http.post(admin + "/services", data=form(), ) as response:
            assert response.status == 201, await response.text()
    # An array index that is not an ASCII number (str.isdigit accepts "²") is no 500.
    status, route, _ = await send(
        admin, "POST", "/services/mp/routes", "paths[²]=/a&paths[1]=/b", content_type=FORM
    )
    assert status == 201, route
    assert sorted(route["paths"]) == ["/a", "/b"]


# -------------------------------------------------------------- JSON bodies

#: Every endpoint that reads an entity body, as (method, path) over ``seed``'s entities.
ENTITY_WRITES = [
    ("POST", "/services"),
    ("PUT", "/services/s1"),
    ("PUT", "/services/new-service"),
    ("PATCH", "/services/s1"),
    ("POST", "/routes"),
    ("POST", "/services/s1/routes"),
    ("PUT", "/routes/r1"),
    ("PATCH", "/routes/r1"),
    ("POST", "/upstreams"),
    ("PUT", "/upstreams/u1.internal"),
    ("PATCH", "/upstreams/u1.internal"),
    ("POST", "/upstreams/u1.internal/targets"),
    ("PUT", "/upstreams/u1.internal/targets/10.0.0.1:80"),
    ("PATCH", "/upstreams/u1.internal/targets/10.0.0.1:80"),
]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="nested-arrays"),
        pytest.param('{"a":' * 100_000 + "1" + "}" * 100_000, id="nested-objects"),
        pytest.param('{"host": "x", "tags": ' + "[" * 50_000 + "]" * 50_000 + "}", id="nested-field"),
        pytest.param('{"name": "x", "slots": NaN}', id="nan"),
        pytest.param('{"name": "x", "healthchecks": {"threshold": Infinity}}', id="infinity"),
        pytest.param('{"name": "x", "slots": ' + "9" * 5000 + "}", id="5000-digit-integer"),
    ],
)
async def test_an_unparsable_json_body_is_kongs_400_on_every_entity_endpoint(
    admin: str, body: str
) -> None:
    await seed(admin)
    for method, path in ENTITY_WRITES:
        status, answer, _ = await send(admin, method, path, body, content_type="application/json")
        assert (status, answer) == (400, CANNOT_PARSE_JSON), (method, path)


async def test_a_nan_from_a_form_is_out_of_range_not_stored(admin: str) -> None:
    status, answer, _ = await send(
        admin, "POST", "/upstreams", "name=u.internal&healthchecks.threshold=nan", content_type=FORM
    )
    assert status == 400, answer
    assert answer["fields"] == {"healthchecks": {"threshold": "value should be between 0 and 100"}}


async def test_a_url_shorthand_that_urlsplit_refuses_is_a_schema_violation(admin: str) -> None:
    status, answer, _ = await send(admin, "POST", "/services", json_body={"url": "]Y"})
    assert status == 400, answer
    assert answer["name"] == "schema violation"
    assert answer["fields"]["url"].startswith("could not parse url.")


# ------------------------------------------------------------ YAML aliases


def _laughs(levels: int, width: int) -> str:
    lines = ['_format_version: "3.0"', "x0: &x0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels + 1):
        refs = ", ".join([f"*x{level - 1}"] * width)
        lines.append(f"x{level}: &x{level} [{refs}]")
    return "\n".join(lines) + "\n"


async def test_a_yaml_alias_bomb_is_refused_before_any_object_is_built(
    admin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Billion laughs (10^9 values from 1 KiB): composed, measured, refused; never constructed."""
    from control_plane import declarative_parsing

    constructed: list[object] = []
    original = declarative_parsing._DocumentLoader.construct_document

    def spy(self: Any, node: Any) -> Any:
        constructed.append(node)
        return original(self, node)

    monkeypatch.setattr(declarative_parsing._DocumentLoader, "construct_document", spy)
    status, answer, _ = await send(
        admin, "POST", "/config", _laughs(9, 10), content_type="application/yaml"
    )
    assert status == 400
    assert answer["message"].startswith("failed parsing declarative configuration: more than")
    assert constructed == []


async def test_aliases_that_multiply_a_small_document_are_refused(admin: str) -> None:
    """10^6 values from a few hundred bytes: under the absolute cap, over the expansion bound."""
    status, answer, _ = await send(
        admin, "POST", "/config", _laughs(5, 10), content_type="application/yaml"
    )
    assert status == 400
    assert "YAML aliases expand" in answer["message"], answer
    status, answer, _ = await send(
        admin, "POST", "/config", "_format_version: '3.0'\nx: &x [*x]\n", content_type="application/yaml"
    )
    assert status == 400
    assert "a YAML alias refers to a node that contains it" in answer["message"]


async def test_shared_blocks_through_aliases_still_load(admin: str) -> None:
    document = (
        '_format_version: "3.0"\n'
        "upstreams:\n"
        "  - name: a.internal\n    healthchecks: &checks {threshold: 25}\n"
        "  - name: b.internal\n    healthchecks: *checks\n"
    )
    status, answer, _ = await send(admin, "POST", "/config", document, content_type="application/yaml")
    assert status == 201, answer
    assert [u["healthchecks"]["threshold"] for u in answer["upstreams"]] == [25, 25]


# -------------------------------------------------------- methods and HEAD


async def test_a_405_lists_the_allowed_methods(admin: str) -> None:
    for path, allowed in (
        ("/services", "GET, HEAD, POST"),
        ("/status", "GET, HEAD"),
        ("/upstreams/x/health", "GET, HEAD"),
        ("/config", "GET, HEAD, POST"),
    ):
        status, answer, response = await send(admin, "DELETE", path)
        assert (status, answer) == (405, {"message": "Method not allowed"}), path
        assert response.headers["Allow"] == allowed, path


async def test_head_answers_wherever_get_does_with_gets_status_and_no_body(admin: str) -> None:
    await seed(admin)
    _, document, _ = await send(admin, "GET", "/openapi.json")
    names = {"service": "s1", "route": "r1", "upstream": "u1.internal", "target": "10.0.0.1:80",
             "certificate": "cert.example", "sni": "cert.example", "ca_certificate": str(uuid.uuid4())}
    paths = [path for path, operations in document["paths"].items() if "get" in operations]
    assert len(paths) > 10
    async with aiohttp.ClientSession() as http:
        for template in paths:
            path = template.format(**names)
            async with http.get(admin + path) as got:
                await got.read()
            async with http.head(admin + path) as head:
                assert await head.read() == b""
            assert (head.status, template) == (got.status, template)
            assert head.headers["Content-Type"] == got.headers["Content-Type"], template
            assert "head" in document["paths"][template], template


# ------------------------------------------------- PUT with a taken id (#8)


async def test_put_by_name_with_another_entitys_id_is_a_primary_key_violation(admin: str) -> None:
    """Was a 503 "too many concurrent updates; retry" from a deterministic CAS loop."""
    entities = await seed(admin)
    cases = [
        ("PUT", "/services/two", {"id": entities["services"]["id"], "host": "example.com"}, "services"),
        ("PUT", "/routes/two", {"id": entities["routes"]["id"], "paths": ["/two"]}, "routes"),
        ("PUT", "/upstreams/two.internal", {"id": entities["upstreams"]["id"]}, "upstreams"),
        ("PUT", "/upstreams/u1.internal/targets/10.0.0.2:80", {"id": entities["targets"]["id"]}, "targets"),
    ]
    for method, path, body, kind in cases:
        taken = body["id"]
        status, answer, _ = await send(admin, method, path, json_body=body)
        assert status == 400, (path, answer)
        assert answer == {
            "code": 3,
            "name": "primary key violation",
            "message": f"primary key violation on key '{{id=\"{taken}\"}}'",
            "fields": {"id": taken},
        }, path
        # The entity holding the id is untouched.
        status, holder, _ = await send(admin, "GET", f"/{kind}/{taken}" if kind != "targets"
                                       else f"/upstreams/u1.internal/targets/{taken}")
        assert status == 200 and holder == entities[kind], path


async def test_put_of_a_target_by_the_id_of_another_upstreams_target_is_refused(admin: str) -> None:
    entities = await seed(admin)
    status, _, _ = await send(admin, "POST", "/upstreams", json_body={"name": "u2.internal"})
    assert status == 201
    taken = entities["targets"]["id"]
    status, answer, _ = await send(
        admin, "PUT", f"/upstreams/u2.internal/targets/{taken}", json_body={"target": "10.0.0.9:80"}
    )
    assert status == 400 and answer["code"] == 3, answer


async def test_put_by_name_with_its_own_or_a_fresh_id_still_upserts(admin: str) -> None:
    entities = await seed(admin)
    own = entities["services"]["id"]
    status, service, _ = await send(
        admin, "PUT", "/services/s1", json_body={"id": own, "host": "other.example"}
    )
    assert (status, service["id"], service["host"]) == (200, own, "other.example")
    fresh = str(uuid.uuid4())
    status, service, _ = await send(
        admin, "PUT", "/services/s2", json_body={"id": fresh, "host": "example.com"}
    )
    assert (status, service["id"], service["name"]) == (200, fresh, "s2")


# ------------------------------------------------------- query options


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/services?size=%C2%B2", None, {"code": 9, "message": "size must be a number"}),
        ("GET", "/services?size=1.5", None,
         {"code": 9, "message": "size must be an integer between 1 and 1000"}),
        ("GET", "/services?tags=a,b/c", None,
         {"code": 11, "message": "invalid option (tags: invalid filter syntax)"}),
        ("GET", "/services?tags=a%01", None,
         {"code": 11, "message": "invalid option (tags: invalid filter syntax)"}),
        ("GET", "/services?offset=" + base64.urlsafe_b64encode(b"[" * 5000).decode(), None,
         {"code": 7}),
        ("GET", "/upstreams/u1.internal/health?balancer_health=yes", None,
         {"code": 11, "message": "invalid option (balancer_health: expected one of: 1, true, 0, false)"}),
        ("POST", "/config?check_hash=maybe", '{"_format_version": "3.0"}',
         {"code": 11, "message": "invalid option (check_hash: expected one of: 1, true, 0, false)"}),
        ("POST", "/config?expected_version=%C2%B2", '{"_format_version": "3.0"}',
         {"code": 11, "message": "invalid option (expected_version: expected a non-negative integer)"}),
        ("POST", "/config?expected_version=" + "9" * 5000, '{"_format_version": "3.0"}',
         {"code": 11}),
    ],
)
async def test_a_malformed_query_option_is_a_400(
    admin: str, method: str, path: str, body: str | None, expected: dict[str, Any]
) -> None:
    await seed(admin)
    status, answer, _ = await send(admin, method, path, body, content_type="application/json")
    assert status == 400, answer
    assert {key: answer.get(key) for key in expected} == expected


async def test_tags_filters_accept_what_a_tag_may_hold(admin: str) -> None:
    for name, tags in (("a", ["blue sky", "é"]), ("b", ["blue sky"]), ("c", ["x"])):
        status, _, _ = await send(
            admin, "POST", "/services", json_body={"name": name, "host": "h.example", "tags": tags}
        )
        assert status == 201
    status, page, _ = await send(admin, "GET", "/services?tags=blue%20sky,%C3%A9")
    assert status == 200 and [s["name"] for s in page["data"]] == ["a"]
    status, page, _ = await send(admin, "GET", "/services?tags=%C3%A9/x")
    assert status == 200 and sorted(s["name"] for s in page["data"]) == ["a", "c"]


async def test_flags_take_true_and_false_spellings(admin: str) -> None:
    await seed(admin)
    for value, key in (("1", "balancer_health"), ("true", "balancer_health"), ("0", None), ("false", None)):
        status, body, _ = await send(admin, "GET", f"/upstreams/u1.internal/health?balancer_health={value}")
        assert status == 200, body
        if key:
            assert key in body["data"]
        else:
            assert isinstance(body["data"], list)


# ------------------------------------ lone surrogates, control characters

#: A JSON escape of half a UTF-16 pair: not Unicode text (no UTF-8 form), it was a 500
#: (pydantic could not render the message, or the store could not encode the value);
#: Kong's cjson refuses it while parsing.
LONE = "\\ud800"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/services/s1/routes", '{"paths": ["/' + LONE + '"]}', id="route-path"),
        pytest.param("/services", '{"name": "s' + LONE + '", "host": "example.com"}', id="service-name"),
        pytest.param("/upstreams", '{"name": "u2.internal", "host_header": "a' + LONE + '"}',
                     id="host-header"),
        pytest.param("/upstreams", '{"name": "u3.internal", "tags": ["' + LONE + '"]}', id="tag"),
        pytest.param("/routes", '{"paths": ["/x"], "headers": {"x-a": ["v\\udfff"]}}', id="header-value"),
        pytest.param("/routes", '{"paths": ["/x"], "headers": {"x-' + LONE + '": ["v"]}}', id="header-name"),
        pytest.param("/services", '{"host": "example.com", "' + LONE + '": 1}', id="key"),
        pytest.param("/services", '{"host": "example.com", "name": "a\\ude00\\ud83d"}', id="reversed-pair"),
    ],
)
async def test_a_lone_surrogate_in_a_json_body_is_cannot_parse_not_500(
    admin: str, path: str, body: str
) -> None:
    await seed(admin)
    status, answer, _ = await send(admin, "POST", path, body, content_type="application/json")
    assert (status, answer) == (400, CANNOT_PARSE_JSON)


async def test_a_lone_surrogate_is_refused_on_every_entity_endpoint_and_a_pair_is_text(
    admin: str,
) -> None:
    await seed(admin)
    for method, path in ENTITY_WRITES:
        body = '{"tags": ["ok", "' + LONE + '"]}'
        status, answer, _ = await send(admin, method, path, body, content_type="application/json")
        assert (status, answer) == (400, CANNOT_PARSE_JSON), (method, path)
    # A surrogate pair is one character (U+1F600), stored and served as such.
    status, service, _ = await send(
        admin, "POST", "/services", '{"name": "smile-\\ud83d\\ude00", "host": "example.com"}',
        content_type="application/json",
    )
    assert status == 201 and service["name"] == "smile-\U0001f600", service


async def test_a_lone_surrogate_in_a_declarative_document_is_a_400(admin: str) -> None:
    await seed(admin)
    status, before, _ = await send(admin, "GET", "/config")
    assert status == 200
    document = '{"_format_version": "3.0", "services": [{"name": "s' + LONE + '", "host": "example.com"}]}'
    status, answer, _ = await send(admin, "POST", "/config", document, content_type="application/json")
    assert status == 400, answer
    assert answer["message"].startswith("failed parsing declarative configuration: "), answer
    # YAML (libyaml) refuses the escape itself; a form's config field is parsed the same.
    status, answer, _ = await send(
        admin, "POST", "/config", '_format_version: "3.0"\nservices:\n- {name: "s' + LONE + '", host: h}\n',
        content_type="application/yaml",
    )
    assert status == 400 and answer["message"].startswith("failed parsing declarative configuration: ")
    assert (await send(admin, "GET", "/config"))[1] == before


async def test_a_lone_surrogate_from_a_utf7_form_is_a_schema_violation_naming_the_field(
    admin: str,
) -> None:
    # UTF-7 can spell half a pair ("+2AA-" is U+D800): the schema refuses it by field.
    status, answer, _ = await send(
        admin, "POST", "/services", "host=example.com&name=s%2B2AA-&tags=+2AA-",
        content_type=FORM + "; charset=utf-7",
    )
    assert status == 400, answer
    assert answer["name"] == "schema violation"
    assert answer["fields"] == {
        "name": "invalid unicode: a lone surrogate at position 1",
        "tags": ["invalid unicode: a lone surrogate at position 0"],
    }


@pytest.mark.parametrize(
    ("path", "body", "fields"),
    [
        pytest.param(
            "/upstreams",
            {"name": "h.internal", "algorithm": "consistent-hashing", "hash_on": "header",
             "hash_on_header": "x-a\n"},
            {"hash_on_header": "bad header name 'x-a\n', allowed characters are A-Z, a-z, 0-9, '_', and '-'"},
            id="hash-on-header-newline",
        ),
        pytest.param(
            "/upstreams",
            {"name": "c.internal", "algorithm": "consistent-hashing", "hash_on": "cookie",
             "hash_on_cookie": "c\n"},
            {"hash_on_cookie": "contains one or more invalid characters. ASCII control characters "
             "(0-31;127), space, tab and the characters ()<>@,;:\\\"/?={}[] are not allowed."},
            id="hash-on-cookie-newline",
        ),
        pytest.param(
            "/upstreams",
            {"name": "p.internal", "algorithm": "consistent-hashing", "hash_on": "cookie",
             "hash_on_cookie": "c", "hash_on_cookie_path": "/a;b"},
            {"hash_on_cookie_path": "invalid cookie path: '/a;b' (';' is not allowed)"},
            id="cookie-path-semicolon",
        ),
        pytest.param(
            "/services", {"host": "example.com", "path": "/a\n"},
            {"path": "invalid path: '/a\n' (characters outside of the reserved list of RFC 3986 found)"},
            id="service-path-newline",
        ),
        pytest.param(
            "/upstreams", {"name": "hh.internal", "host_header": "a.example:80\n"},
            {"host_header": "invalid hostname: a.example:80\n"},
            id="host-header-newline",
        ),
        pytest.param(
            "/routes", {"paths": ["/x"], "headers": {"x-a": ["v\r\nX-Injected: 1"]}},
            {"headers": "bad header value 'v\r\nX-Injected: 1': control characters are not allowed"},
            id="route-header-value-crlf",
        ),
    ],
)
async def test_a_value_every_data_plane_would_refuse_is_a_schema_violation(
    admin: str, path: str, body: dict[str, Any], fields: dict[str, Any]
) -> None:
    await seed(admin)
    status, answer, _ = await send(admin, "POST", path, json_body=body)
    assert status == 400, answer
    assert (answer["name"], answer["fields"]) == ("schema violation", fields)
