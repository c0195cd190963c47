"""Kong's ``spec/02-integration/04-admin_api/08-targets_routes_spec.lua``, case by case.

Against a real ``ferry control-plane``; the ``/health`` and ``(un)healthy`` cases also
run a real ``ferry data-plane`` (health is what data planes report), whose target names
resolve through this module's DNS server (``custom_localhost`` and ``localhost`` →
127.0.0.1, every other name NXDOMAIN, as Kong's DNS mock). Kong's
``it_content_types(title, ...)`` cases are one test per title, parametrised by the
content type.

The spec version read is Kong 2.x's, written when targets kept a history (a second
POST of a target appended an entry; ``DELETE`` appended one of weight 0; listings
showed the last entry of each target, weight 0 hidden). Kong 3.x has no history: a
target is one entity, a second POST is 409, PUT updates it and DELETE deletes it.
Cases that build a history write it the Kong 3.x way (POST, then PUT for each later
weight) and assert Kong 3.x's answer, said in the case; ``cleans up old target
entries`` tests the history itself and is skipped. Kong 3.x's weight range is
0..65535 (2.x: 0..1000).
"""

from __future__ import annotations

import json as jsonlib
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
import yarl

from tests.support.kong import DnsZone, KongCluster, unique
from tests.support.polling import wait_for

SPEC = "spec/02-integration/04-admin_api/08-targets_routes_spec.lua"
WEIGHT_DEFAULT, WEIGHT_MIN, WEIGHT_MAX = 100, 0, 65535
DEFAULT_PORT = 8000

FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data"
JSON = "application/json"
CONTENT_TYPES = pytest.mark.parametrize("content_type", [FORM, MULTIPART, JSON])


async def send(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    body: dict[str, Any] | None = None,
    content_type: str = JSON,
) -> tuple[int, Any]:
    """One request, ``body`` encoded as ``content_type``; ``(status, JSON body or None)``."""
    kwargs: dict[str, Any] = {}
    if body is not None and content_type == JSON:
        kwargs["json"] = body
    elif body is not None and content_type == FORM:
        kwargs["data"] = {key: str(value) for key, value in body.items()}
    elif body is not None:
        writer = aiohttp.MultipartWriter("form-data")
        for key, value in body.items():
            part = writer.append(str(value))
            part.set_content_disposition("form-data", name=key)
        kwargs["data"] = writer
    async with http.request(method, yarl.URL(url, encoded=True), **kwargs) as response:
        text = await response.text()
        return response.status, jsonlib.loads(text) if text else None


async def new_upstream(kong: KongCluster, http: aiohttp.ClientSession, **fields: Any) -> dict[str, Any]:
    """Kong's ``bp.upstreams:insert``: an upstream with a fresh name."""
    status, body = await send(http, "POST", f"{kong.admin}/upstreams", {"name": unique("upstream"), **fields})
    assert status == 201, body
    return dict(body)


async def write_target(
    kong: KongCluster, http: aiohttp.ClientSession, upstream: str, target: str, weight: int
) -> dict[str, Any]:
    """Kong 2.x's ``bp.targets:insert`` the Kong 3.x way: POST a new target, PUT (an
    update) an existing one."""
    status, body = await send(http, "GET", f"{kong.admin}/upstreams/{upstream}/targets/{target}")
    if status == 404:
        status, body = await send(
            http, "POST", f"{kong.admin}/upstreams/{upstream}/targets", {"target": target, "weight": weight}
        )
        assert status == 201, body
    else:
        status, body = await send(http, "PUT", f"{kong.admin}/upstreams/{upstream}/targets/{target}", {"weight": weight})
        assert status == 200, body
    return dict(body)


# ---------------------------------------------------------------------- /targets


async def test_targets_returns_a_404(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/targets") it("returns a 404")."""
    status, json = await send(http, "GET", f"{kong.admin}/targets")
    assert status == 404
    assert json["message"] == "Not found"


# ------------------------------------------------- POST /upstreams/{upstream}/targets/


@CONTENT_TYPES
async def test_creates_a_target_with_defaults(kong: KongCluster, http: aiohttp.ClientSession, content_type: str) -> None:
    """Kong (08-targets_routes_spec.lua): it_content_types("creates a target with defaults"),
    posted to the path with a trailing slash, as Kong's case does."""
    upstream = await new_upstream(kong, http, slots=10)
    status, json = await send(
        http, "POST", f"{kong.admin}/upstreams/{upstream['name']}/targets/", {"target": "mashape.com"}, content_type
    )
    assert status == 201, json
    assert json["target"] == f"mashape.com:{DEFAULT_PORT}"
    assert isinstance(json["created_at"], int | float)
    assert isinstance(json["id"], str)
    assert json["weight"] == WEIGHT_DEFAULT


@CONTENT_TYPES
async def test_creates_a_target_without_defaults(
    kong: KongCluster, http: aiohttp.ClientSession, content_type: str
) -> None:
    """Kong (08-targets_routes_spec.lua): it_content_types("creates a target without defaults")."""
    upstream = await new_upstream(kong, http, slots=10)
    status, json = await send(
        http, "POST", f"{kong.admin}/upstreams/{upstream['name']}/targets/",
        {"target": "mashape.com:123", "weight": 99}, content_type,
    )
    assert status == 201, json
    assert json["target"] == "mashape.com:123"
    assert isinstance(json["created_at"], int | float)
    assert isinstance(json["id"], str)
    assert json["weight"] == 99


@pytest.mark.skip(
    reason="Kong case 'cleans up old target entries': Kong <= 2.x kept a history of target "
    "entries (a POST per weight change) and cleaned it up; Kong 3.x and Ferry keep one entity "
    "per target (a second POST is 409, PUT updates), so there is no history to clean"
)
async def test_cleans_up_old_target_entries() -> None:
    """Kong (08-targets_routes_spec.lua): it("cleans up old target entries")."""


async def test_handles_malformed_json_body(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong (08-targets_routes_spec.lua): describe("errors") it("handles malformed JSON body")."""
    upstream = await new_upstream(kong, http, slots=10)
    async with http.post(
        f"{kong.admin}/upstreams/{upstream['name']}/targets/", data='{"hello": "world"', headers={"Content-Type": JSON}
    ) as response:
        assert response.status == 400
        assert await response.json() == {"message": "Cannot parse JSON body"}


@CONTENT_TYPES
async def test_handles_invalid_input(kong: KongCluster, http: aiohttp.ClientSession, content_type: str) -> None:
    """Kong (08-targets_routes_spec.lua): describe("errors") it_content_types("handles invalid
    input"). Kong 3.x's weight range is 0..65535."""
    upstream = await new_upstream(kong, http, slots=10)
    url = f"{kong.admin}/upstreams/{upstream['name']}/targets/"
    # Missing parameter
    status, json = await send(http, "POST", url, {"weight": WEIGHT_MIN}, content_type)
    assert status == 400, json
    assert json["name"] == "schema violation"
    assert json["fields"] == {"target": "required field missing"}
    # Invalid target parameter
    status, json = await send(http, "POST", url, {"target": "some invalid host name"}, content_type)
    assert status == 400, json
    assert json["name"] == "schema violation"
    assert json["fields"] == {"target": "Invalid target; not a valid hostname or ip address"}
    # Invalid weight parameter
    status, json = await send(http, "POST", url, {"target": "mashape.com", "weight": WEIGHT_MAX + 1}, content_type)
    assert status == 400, json
    assert json["name"] == "schema violation"
    assert json["fields"] == {"weight": f"value should be between 0 and {WEIGHT_MAX}"}


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
@CONTENT_TYPES
async def test_returns_405_on_method(
    kong: KongCluster, http: aiohttp.ClientSession, method: str, content_type: str
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("errors") it_content_types("returns 405 on "
    .. method) for PUT, PATCH and DELETE, on the collection path with a trailing slash."""
    upstream = await new_upstream(kong, http, slots=10)
    status, json = await send(
        http, method, f"{kong.admin}/upstreams/{upstream['name']}/targets/", {"target": "mashape.com"}, content_type
    )
    assert status == 405, json


# -------------------------------------------------- GET /upstreams/{upstream}/targets/

#: Kong's weight histories, one list per target ``api-<i>:80``.
WEIGHTS = [[10, 0], [10, 0, 10], [10], [10, 10], [10, 50, 0], [10, 0, 20, 0]]


async def test_only_shows_active_targets(kong: KongCluster, http: aiohttp.ClientSession) -> None:
    """Kong (08-targets_routes_spec.lua): describe("GET") it("only shows active targets"), with
    and without a trailing slash. Kong 3.x: each weight change is an update of the one target,
    every target is listed (weight 0 included), newest first by creation; the targets of
    weight > 0 are api-2, api-3 and api-4, with their last weights."""
    upstream = await new_upstream(kong, http)
    apis: dict[int, dict[str, Any]] = {}
    for i, weights in enumerate(WEIGHTS, start=1):
        for weight in weights:
            apis[i] = await write_target(kong, http, upstream["name"], f"api-{i}:80", weight)
    listings = []
    for append in ("", "/"):
        status, json = await send(http, "GET", f"{kong.admin}/upstreams/{upstream['name']}/targets{append}")
        assert status == 200, json
        listings.append(json)
        active = {item["target"]: item["weight"] for item in json["data"] if item["weight"] > 0}
        assert active == {"api-2:80": 10, "api-3:80": 10, "api-4:80": 10}
        assert len(json["data"]) == len(WEIGHTS)
        assert {item["id"] for item in json["data"]} == {api["id"] for api in apis.values()}
    assert listings[0] == listings[1]


async def test_get_empty_results_data_property_is_an_empty_array(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("GET") describe("empty results") it("data
    property is an empty array")."""
    empty = await new_upstream(kong, http)
    async with http.get(f"{kong.admin}/upstreams/{empty['name']}/targets") as response:
        assert response.status == 200
        assert '"data":[]' in await response.text()


# ------------------------------------------------------ /upstreams/{upstream}/health/


@pytest.fixture(scope="module")
def names(dns_zone: DnsZone) -> Iterator[DnsZone]:
    """Kong's DNS mock: ``custom_localhost`` and ``localhost`` are 127.0.0.1."""
    dns_zone.records.update({"custom_localhost": {"A": ["127.0.0.1"]}, "localhost": {"A": ["127.0.0.1"]}})
    yield dns_zone


#: Kong's ``add_targets`` weights: target 1 ends at weight 0.
HEALTH_WEIGHTS = [[10, 0], [10], [10], [10, 10]]


async def add_targets(kong: KongCluster, http: aiohttp.ClientSession, upstream: str, fmt: str) -> list[dict[str, Any]]:
    """Kong's ``add_targets``: targets ``fmt % i`` for i = 1..4, each through its weights."""
    targets = []
    for i, weights in enumerate(HEALTH_WEIGHTS, start=1):
        target: dict[str, Any] = {}
        for weight in weights:
            target = await write_target(kong, http, upstream, fmt % i, weight)
        targets.append(target)
    return targets


async def check_health_endpoint(
    kong: KongCluster, http: aiohttp.ClientSession, upstream: dict[str, Any], targets: list[dict[str, Any]],
    n: int, health: str, node_id: str,
) -> None:
    """Kong's ``check_health_endpoint``, with and without a trailing slash, polled until the
    data plane's reports show ``health`` (Kong checks once: its node is the balancer).
    Kong 3.x lists weight-0 targets too (``HEALTHCHECKS_OFF``): ``n`` counts them, and
    only the targets of weight > 0 must show ``health``."""
    last: Any = None

    async def reached() -> bool:
        nonlocal last
        for append in ("", "/"):
            status, res = await send(http, "GET", f"{kong.admin}/upstreams/{upstream['name']}/health{append}")
            last = res
            if status != 200 or res["node_id"] != node_id or len(res["data"]) != n:
                return False
            data = res["data"]
            # newest first: the last target added, then the earlier ones backwards
            if data[0]["id"] != targets[3]["id"] or data[1]["target"] != targets[2]["target"]:
                return False
            if data[2]["target"] != targets[1]["target"]:
                return False
            for item in data:
                if item["weight"] == 0:
                    continue
                addresses = (item.get("data") or {}).get("addresses") or []
                if item["health"] != health or any(a["health"] != health for a in addresses):
                    return False
        return True

    try:
        await wait_for(reached, timeout=20, interval=0.1, message=f"/health to show {health}")
    except AssertionError:
        raise AssertionError(f"last /health: {last}") from None


@pytest.fixture
async def health_upstream(kong: KongCluster, names: DnsZone, http: aiohttp.ClientSession) -> tuple[dict[str, Any], str]:
    """Kong's setup: the node id (``GET /``) and a fresh upstream created through the API."""
    await kong.data_plane("--dns-resolver", names.address)
    status, root = await send(http, "GET", f"{kong.admin}/")
    assert status == 200
    upstream = await new_upstream(kong, http)
    return upstream, root["node_id"]


async def _passive_checks_on(kong: KongCluster, http: aiohttp.ClientSession, upstream: dict[str, Any]) -> None:
    body = {"healthchecks": {"passive": {"healthy": {"successes": 1},
                                        "unhealthy": {"tcp_failures": 1, "http_failures": 1, "timeouts": 1}}}}
    status, json = await send(http, "PATCH", f"{kong.admin}/upstreams/{upstream['name']}", body)
    assert status == 200, json


async def test_healthchecks_off_returns_healthchecks_off_for_targets_that_resolve(
    kong: KongCluster, http: aiohttp.ClientSession, health_upstream: tuple[dict[str, Any], str]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("with healthchecks off") it("returns
    HEALTHCHECKS_OFF for targets that resolve"). Kong 2.x: 6 targets listed; Kong 3.x
    also lists the two of weight 0: 8."""
    upstream, node_id = health_upstream
    await add_targets(kong, http, upstream["name"], "127.0.0.1:8%d")
    targets = await add_targets(kong, http, upstream["name"], "custom_localhost:8%d")
    await kong.synced()
    await check_health_endpoint(kong, http, upstream, targets, 8, "HEALTHCHECKS_OFF", node_id)


async def test_healthchecks_off_returns_dns_error_if_dns_cannot_be_resolved(
    kong: KongCluster, http: aiohttp.ClientSession, health_upstream: tuple[dict[str, Any], str]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("with healthchecks off") it("returns
    DNS_ERROR if DNS cannot be resolved"). Kong 3.x lists the weight-0 target too: 4."""
    upstream, node_id = health_upstream
    targets = await add_targets(kong, http, upstream["name"], "bad-health-target-%d:80")
    await kong.synced()
    await check_health_endpoint(kong, http, upstream, targets, 4, "DNS_ERROR", node_id)


async def test_healthchecks_on_returns_dns_error_if_dns_cannot_be_resolved(
    kong: KongCluster, http: aiohttp.ClientSession, health_upstream: tuple[dict[str, Any], str]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("with healthchecks on") it("returns
    DNS_ERROR if DNS cannot be resolved")."""
    upstream, node_id = health_upstream
    await _passive_checks_on(kong, http, upstream)
    targets = await add_targets(kong, http, upstream["name"], "bad-target-%d:80")
    await kong.synced()
    await check_health_endpoint(kong, http, upstream, targets, 4, "DNS_ERROR", node_id)


async def test_healthchecks_on_returns_healthy_if_failure_not_detected(
    kong: KongCluster, http: aiohttp.ClientSession, health_upstream: tuple[dict[str, Any], str]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("with healthchecks on") it("returns
    HEALTHY if failure not detected")."""
    upstream, node_id = health_upstream
    await _passive_checks_on(kong, http, upstream)
    targets = await add_targets(kong, http, upstream["name"], "custom_localhost:222%d")
    await kong.synced()
    await check_health_endpoint(kong, http, upstream, targets, 4, "HEALTHY", node_id)


async def test_healthchecks_on_returns_unhealthy_if_failure_detected(
    kong: KongCluster, http: aiohttp.ClientSession, health_upstream: tuple[dict[str, Any], str]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("with healthchecks on") it("returns
    UNHEALTHY if failure detected"): active TCP probes of ports nothing listens on."""
    upstream, node_id = health_upstream
    await _passive_checks_on(kong, http, upstream)
    targets = await add_targets(kong, http, upstream["name"], "custom_localhost:222%d")
    body = {"healthchecks": {"active": {"healthy": {"interval": 0.1},
                                       "unhealthy": {"interval": 0.1, "tcp_failures": 1}}}}
    status, json = await send(http, "PATCH", f"{kong.admin}/upstreams/{upstream['name']}", body)
    assert status == 200, json
    await kong.synced()
    await check_health_endpoint(kong, http, upstream, targets, 4, "UNHEALTHY", node_id)


# ------------------------------------------------- /upstreams/{upstream}/targets/all/


@pytest.fixture
async def ten_targets(kong: KongCluster, http: aiohttp.ClientSession) -> dict[str, Any]:
    upstream = await new_upstream(kong, http)
    for i in range(1, 11):
        await write_target(kong, http, upstream["name"], f"api-{i}:80", 100)
    return upstream


async def test_all_retrieves_the_first_page(
    kong: KongCluster, http: aiohttp.ClientSession, ten_targets: dict[str, Any]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/upstreams/{upstream}/targets/all/") it("retrieves the first page")."""
    status, json = await send(http, "GET", f"{kong.admin}/upstreams/{ten_targets['name']}/targets/all")
    assert status == 200
    assert len(json["data"]) == 10


async def test_all_offset_is_a_string(
    kong: KongCluster, http: aiohttp.ClientSession, ten_targets: dict[str, Any]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/upstreams/{upstream}/targets/all/") it("offset is a string")."""
    status, json = await send(http, "GET", f"{kong.admin}/upstreams/{ten_targets['name']}/targets?size=3")
    assert status == 200
    assert isinstance(json["offset"], str)


async def test_all_paginates_a_set(kong: KongCluster, http: aiohttp.ClientSession, ten_targets: dict[str, Any]) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/upstreams/{upstream}/targets/all/") it("paginates a set")."""
    pages: list[Any] = []
    offset = None
    for i in range(1, 5):
        query = "size=3" + (f"&offset={offset}" if offset else "")
        status, json = await send(http, "GET", f"{kong.admin}/upstreams/{ten_targets['name']}/targets/all?{query}")
        assert status == 200
        assert len(json["data"]) == (3 if i < 4 else 1)
        if i > 1:
            assert pages[-1] != json
        offset = json.get("offset")
        pages.append(json)


async def test_all_ingores_filters(kong: KongCluster, http: aiohttp.ClientSession, ten_targets: dict[str, Any]) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/upstreams/{upstream}/targets/all/") it("ingores filters")."""
    status, _ = await send(http, "GET", f"{kong.admin}/upstreams/{ten_targets['name']}/targets/all?foo=bar")
    assert status == 200


async def test_all_ignores_an_invalid_body(
    kong: KongCluster, http: aiohttp.ClientSession, ten_targets: dict[str, Any]
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/upstreams/{upstream}/targets/all/") it("ignores an invalid body")."""
    async with http.get(
        f"{kong.admin}/upstreams/{ten_targets['name']}/targets/all",
        data="this fails if decoded as json",
        headers={"Content-Type": JSON},
    ) as response:
        assert response.status == 200


async def test_all_empty_results_data_property_is_an_empty_array(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("/upstreams/{upstream}/targets/all/")
    describe("empty results") it("data property is an empty array")."""
    empty = await new_upstream(kong, http)
    async with http.get(f"{kong.admin}/upstreams/{empty['name']}/targets/all") as response:
        assert response.status == 200
        body = await response.text()
    assert jsonlib.loads(body) == {"data": [], "next": None}
    assert '"data":[]' in body


# -------------------------------------- /upstreams/{upstream}/targets/{target}/(un)healthy

LOCALHOSTS = {
    "ipv4": "127.0.0.1",
    "ipv6": "[0000:0000:0000:0000:0000:0000:0000:0001]",
    "hostname": "localhost",
}
MODES = pytest.mark.parametrize("mode", list(LOCALHOSTS))


async def _health_setup(
    kong: KongCluster, http: aiohttp.ClientSession, names: DnsZone, mode: str
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Kong's setup: a target of another upstream (``wrong_target``), an upstream with
    passive checks and the target ``<localhost>:8192`` of weight 10."""
    await kong.data_plane("--dns-resolver", names.address)
    my_target_name = f"{LOCALHOSTS[mode]}:8192"
    other = await new_upstream(kong, http)
    wrong_target = await write_target(kong, http, other["name"], my_target_name, 10)
    upstream = await new_upstream(kong, http)
    await _passive_checks_on(kong, http, upstream)
    status, target = await send(
        http, "POST", f"{kong.admin}/upstreams/{upstream['id']}/targets",
        {"target": my_target_name, "weight": 10, "upstream": {"id": upstream["id"]}},
    )
    assert status == 201, target
    assert target["target"] == my_target_name
    await kong.synced()
    return upstream, target, wrong_target


async def _first_health(kong: KongCluster, http: aiohttp.ClientSession, upstream: dict[str, Any], target: str, health: str) -> None:
    async def reached() -> bool:
        status, json = await send(http, "GET", f"{kong.admin}/upstreams/{upstream['id']}/health")
        return status == 200 and json["data"][0]["target"] == target and json["data"][0]["health"] == health

    await wait_for(reached, timeout=15, interval=0.05, message=f"{target} to show {health}")


@MODES
async def test_checks_every_combination_of_valid_and_invalid_upstream_and_target(
    kong: KongCluster, http: aiohttp.ClientSession, names: DnsZone, mode: str
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("POST #" .. mode) it("checks every
    combination of valid and invalid upstream and target"), for ipv4, ipv6 and hostname."""
    upstream, target, wrong_target = await _health_setup(kong, http, names, mode)
    for i, u in enumerate([str(uuid.uuid4()), "invalid", upstream["name"], upstream["id"]], start=1):
        for j, t in enumerate(
            [str(uuid.uuid4()), "invalid:1234", wrong_target["id"], target["target"], target["id"]], start=1
        ):
            for e in ("healthy", "unhealthy"):
                expected = 204 if i >= 3 and j >= 4 else 404
                path = f"/upstreams/{u}/targets/{t}/{e}"
                status, _ = await send(http, "POST", f"{kong.admin}{path}")
                assert status == expected, f"bad status for path {path}"


@MODES
async def test_flips_the_target_status_from_unhealthy_to_healthy(
    kong: KongCluster, http: aiohttp.ClientSession, names: DnsZone, mode: str
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("POST #" .. mode) it("flips the target
    status from UNHEALTHY to HEALTHY")."""
    upstream, target, _ = await _health_setup(kong, http, names, mode)
    target_path = f"{kong.admin}/upstreams/{upstream['id']}/targets/{target['target']}"
    status, body = await send(http, "POST", f"{target_path}/unhealthy")
    assert status == 204, body
    await _first_health(kong, http, upstream, target["target"], "UNHEALTHY")
    status, body = await send(http, "POST", f"{target_path}/healthy")
    assert status == 204, body
    await _first_health(kong, http, upstream, target["target"], "HEALTHY")


@MODES
async def test_flips_the_target_status_from_healthy_to_unhealthy(
    kong: KongCluster, http: aiohttp.ClientSession, names: DnsZone, mode: str
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("POST #" .. mode) it("flips the target
    status from HEALTHY to UNHEALTHY")."""
    upstream, target, _ = await _health_setup(kong, http, names, mode)
    target_path = f"{kong.admin}/upstreams/{upstream['id']}/targets/{target['target']}"
    status, body = await send(http, "POST", f"{target_path}/healthy")
    assert status == 204, body
    await _first_health(kong, http, upstream, target["target"], "HEALTHY")
    status, body = await send(http, "POST", f"{target_path}/unhealthy")
    assert status == 204, body
    await _first_health(kong, http, upstream, target["target"], "UNHEALTHY")


# --------------------------------------------- DELETE /upstreams/{upstream}/targets/{target}


async def _delete_setup(kong: KongCluster, http: aiohttp.ClientSession) -> tuple[dict[str, Any], dict[str, Any]]:
    upstream = await new_upstream(kong, http)
    await write_target(kong, http, upstream["name"], "api-1:80", 10)
    target = await write_target(kong, http, upstream["name"], "api-2:80", 10)
    return upstream, target


async def _after_delete(kong: KongCluster, http: aiohttp.ClientSession, upstream: dict[str, Any]) -> None:
    """Kong 3.x: the target is gone; Kong 2.x listed 3 entries under ``/all`` (history)."""
    for suffix in ("/all", ""):
        status, json = await send(http, "GET", f"{kong.admin}/upstreams/{upstream['name']}/targets{suffix}")
        assert status == 200
        assert [item["target"] for item in json["data"]] == ["api-1:80"]


async def test_delete_acts_as_a_sugar_method_to_post_a_target_with_0_weight_by_target(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("DELETE") it("acts as a sugar method to
    POST a target with 0 weight (by target)"). Kong 3.x deletes the target."""
    upstream, target = await _delete_setup(kong, http)
    status, _ = await send(http, "DELETE", f"{kong.admin}/upstreams/{upstream['name']}/targets/{target['target']}")
    assert status == 204
    await _after_delete(kong, http, upstream)


async def test_delete_acts_as_a_sugar_method_to_post_a_target_with_0_weight_by_id(
    kong: KongCluster, http: aiohttp.ClientSession
) -> None:
    """Kong (08-targets_routes_spec.lua): describe("DELETE") it("acts as a sugar method to
    POST a target with 0 weight (by id)"). Kong 3.x deletes the target."""
    upstream, target = await _delete_setup(kong, http)
    status, _ = await send(http, "DELETE", f"{kong.admin}/upstreams/{upstream['name']}/targets/{target['id']}")
    assert status == 204
    await _after_delete(kong, http, upstream)
