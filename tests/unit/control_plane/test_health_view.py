"""The cluster-wide health rules, as pure functions over entities and DP reports."""

from __future__ import annotations

from typing import Any

import pytest

from control_plane.health import AddressReport, DataPlaneReport
from control_plane.health_view import (
    balancer_health,
    checks_enabled,
    combine_address,
    split_address,
    target_rule,
    targets_with_health,
)

UPSTREAM_ID = "11111111-1111-4111-8111-111111111111"


def upstream(*, active: int = 0, passive_timeouts: int = 0, threshold: int = 0) -> dict[str, Any]:
    return {
        "id": UPSTREAM_ID,
        "name": "shop",
        "healthchecks": {
            "threshold": threshold,
            "active": {"healthy": {"interval": active}, "unhealthy": {"interval": 0}},
            "passive": {"unhealthy": {"tcp_failures": 0, "timeouts": passive_timeouts, "http_failures": 0}},
        },
    }


def target(name: str, weight: int = 100) -> dict[str, Any]:
    return {"id": f"t-{name}", "target": name, "weight": weight, "upstream": {"id": UPSTREAM_ID}}


def dp(node: str, *entries: tuple[str, str, str]) -> DataPlaneReport:
    """A DP report from ``(target, address, state)`` triples."""
    return DataPlaneReport(
        node,
        f"host-{node}",
        tuple(
            AddressReport(UPSTREAM_ID, f"t-{t}", t, a, s, s.lower(), 1000.0 + i, 100)
            for i, (t, a, s) in enumerate(entries)
        ),
    )


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["HEALTHY", "HEALTHY"], "HEALTHY"),
        (["UNHEALTHY", "UNHEALTHY"], "UNHEALTHY"),
        (["HEALTHY", "UNHEALTHY"], "MIXED"),
        (["HEALTHCHECKS_OFF"], "HEALTHCHECKS_OFF"),
        # A DP that does not check the address still sends it traffic.
        (["HEALTHY", "HEALTHCHECKS_OFF"], "HEALTHY"),
        (["UNHEALTHY", "HEALTHCHECKS_OFF"], "MIXED"),
        (["DNS_ERROR"], "DNS_ERROR"),
    ],
)
def test_an_address_is_judged_by_the_data_planes_that_report_it(states: list[str], expected: str) -> None:
    assert combine_address(states) == expected


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        ([], "DNS_ERROR"),
        (["UNHEALTHY", "HEALTHY"], "HEALTHY"),
        (["UNHEALTHY", "MIXED"], "MIXED"),
        (["UNHEALTHY", "HEALTHCHECKS_OFF"], "UNHEALTHY"),
        (["HEALTHCHECKS_OFF"], "HEALTHCHECKS_OFF"),
    ],
)
def test_a_target_follows_kongs_rule_with_mixed_between(addresses: list[str], expected: str) -> None:
    assert target_rule(addresses) == expected


def test_checks_are_on_with_an_active_interval_or_a_passive_unhealthy_counter() -> None:
    assert not checks_enabled(upstream())
    assert checks_enabled(upstream(active=5))
    assert checks_enabled(upstream(passive_timeouts=3))


def test_addresses_split_into_ip_and_port() -> None:
    assert split_address("10.0.0.1:80") == ("10.0.0.1", 80)
    assert split_address("[::1]:8080") == ("::1", 8080)


def test_unreported_targets_fall_back_to_the_upstreams_checks() -> None:
    targets = [target("10.0.0.1:80"), target("api.internal:8080")]
    on = {i["target"]: i for i in targets_with_health(upstream(active=5), targets, [])}
    assert on["10.0.0.1:80"]["health"] == "HEALTHY"
    assert on["10.0.0.1:80"]["data"]["addresses"] == [
        {"ip": "10.0.0.1", "port": 80, "weight": 100, "health": "HEALTHY"}
    ]
    # A name no DP reported: no address known, but nothing seen failing either.
    assert on["api.internal:8080"]["health"] == "HEALTHY"
    assert on["api.internal:8080"]["data"]["addresses"] == []
    assert on["api.internal:8080"]["data"]["weight"] == {"total": 100, "available": 100, "unavailable": 0}
    assert on["api.internal:8080"]["data_planes"] == []


def test_a_weight_zero_target_is_healthchecks_off_whatever_is_reported() -> None:
    reports = [dp("a", ("10.0.0.1:80", "10.0.0.1:80", "UNHEALTHY"))]
    [item] = targets_with_health(upstream(active=5), [target("10.0.0.1:80", weight=0)], reports)
    assert item["health"] == "HEALTHCHECKS_OFF"
    assert item["data"]["addresses"] == [{"ip": "10.0.0.1", "port": 80, "weight": 0, "health": "HEALTHCHECKS_OFF"}]
    assert item["data"]["weight"] == {"total": 0, "available": 0, "unavailable": 0}
    assert item["data_planes"][0]["health"] == "UNHEALTHY", "each DP's own view is still shown"


def test_reports_win_over_checks_being_off() -> None:
    # A DP may still hold an address down (a manual override, checks just turned off).
    reports = [dp("a", ("10.0.0.1:80", "10.0.0.1:80", "UNHEALTHY"))]
    [item] = targets_with_health(upstream(), [target("10.0.0.1:80")], reports)
    assert item["health"] == "UNHEALTHY"


def test_reports_of_other_upstreams_and_targets_are_ignored() -> None:
    stray = DataPlaneReport(
        "a", "host-a",
        (AddressReport("other", "t", "10.0.0.1:80", "10.0.0.1:80", "UNHEALTHY", "", 1.0, 100),),
    )
    [item] = targets_with_health(upstream(active=5), [target("10.0.0.1:80")], [stray])
    assert item["health"] == "HEALTHY" and item["data_planes"] == []


def test_per_data_plane_balancer_health_counts_unreported_targets_as_usable() -> None:
    targets = [target("10.0.0.1:80"), target("10.0.0.2:80")]
    reports = [
        dp("a", ("10.0.0.1:80", "10.0.0.1:80", "UNHEALTHY")),  # says nothing of .2
        dp("b", ("10.0.0.1:80", "10.0.0.1:80", "UNHEALTHY"), ("10.0.0.2:80", "10.0.0.2:80", "UNHEALTHY")),
    ]
    data = balancer_health(upstream(active=5, threshold=40), targets, reports)
    # Cluster-wide both are UNHEALTHY (each judged by the DPs that report it).
    assert (data["balancer_health"], data["details"]["healthy_weight"]) == ("UNHEALTHY", 0)
    per_dp = data["details"]["data_planes"]
    assert per_dp["a"] == {"hostname": "host-a", "balancer_health": "HEALTHY", "healthy_weight": 100, "total_weight": 200}
    assert per_dp["b"] == {"hostname": "host-b", "balancer_health": "UNHEALTHY", "healthy_weight": 0, "total_weight": 200}


def test_a_balancer_without_weight_is_unhealthy() -> None:
    data = balancer_health(upstream(active=5), [target("10.0.0.1:80", weight=0)], [])
    assert (data["health"], data["balancer_health"]) == ("UNHEALTHY", "UNHEALTHY")
    assert data["details"]["total_weight"] == 0


# -- issue 13, theme 5 (Kong's order, DNS errors, details.hosts)


def test_targets_are_listed_newest_first() -> None:
    old, new = target("10.0.0.1:80"), target("10.0.0.2:80")
    old["created_at"], new["created_at"] = 1000.001, 1000.002
    items = targets_with_health(upstream(), [old, new], [])
    assert [i["target"] for i in items] == ["10.0.0.2:80", "10.0.0.1:80"]


def test_a_name_no_data_plane_resolves_is_dns_error() -> None:
    report = DataPlaneReport(
        "n1", "host-n1",
        (AddressReport(UPSTREAM_ID, "t-nx.test:80", "nx.test:80", "", "DNS_ERROR", "dns server error: 3 name error", 1.0, 100),),
    )
    [item] = targets_with_health(upstream(active=5), [target("nx.test:80")], [report])
    assert item["health"] == "DNS_ERROR"
    assert item["data"]["addresses"] == []
    details = balancer_health(upstream(active=5), [target("nx.test:80")], [report])["details"]
    assert details["hosts"][0]["dns"] == "dns server error: 3 name error"


def test_addresses_of_a_target_without_checks_are_listed_checks_off() -> None:
    report = dp("n1", ("many.test:80", "127.0.0.1:80", "HEALTHCHECKS_OFF"), ("many.test:80", "127.0.0.2:80", "HEALTHCHECKS_OFF"))
    [item] = targets_with_health(upstream(), [target("many.test:80")], [report])
    assert item["health"] == "HEALTHCHECKS_OFF"
    assert [(a["ip"], a["health"]) for a in item["data"]["addresses"]] == [
        ("127.0.0.1", "HEALTHCHECKS_OFF"),
        ("127.0.0.2", "HEALTHCHECKS_OFF"),
    ]


def test_balancer_health_details_carry_kongs_hosts() -> None:
    report = dp("n1", ("10.0.0.1:80", "10.0.0.1:80", "HEALTHY"), ("10.0.0.2:81", "10.0.0.2:81", "UNHEALTHY"))
    body = balancer_health(upstream(active=5), [target("10.0.0.1:80"), target("10.0.0.2:81", 50)], [report])
    hosts = body["details"]["hosts"]
    assert [(h["host"], h["port"], h["dns"], h["nodeWeight"]) for h in hosts] == [
        ("10.0.0.1", 80, "IPv4", 100),
        ("10.0.0.2", 81, "IPv4", 50),
    ]
    assert hosts[0]["addresses"] == [{"ip": "10.0.0.1", "port": 80, "weight": 100, "healthy": True}]
    assert hosts[1]["addresses"][0]["healthy"] is False
    assert hosts[1]["weight"] == {"total": 100, "available": 0, "unavailable": 100}
