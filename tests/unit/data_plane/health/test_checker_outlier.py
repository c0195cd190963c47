"""HealthChecker with outlier detection and ``max_ejection_percent``: the window fed by
passive reports, the interval timer (a real event-loop task), ejection through the
half-open breaker, and the cap on passive/outlier ejections.

Some tests run one evaluation by hand (``_evaluate_outliers``, what the timer calls)
so that what lands in which interval is exact; one runs the real timer."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from data_plane.balancers import Address, BalancerHandle, create_balancer
from data_plane.health.checker import HealthChecker, HealthTransition, ProbeOutcome
from data_plane.health.settings import compile_health_settings
from tests.support.picks import picked_keys
from tests.support.polling import wait_for

ADDRESSES = [Address(f"10.0.0.{i}", 80) for i in range(1, 11)]


def checker(checks: dict[str, Any], n: int = 5) -> tuple[HealthChecker, list[HealthTransition]]:
    addresses = ADDRESSES[:n]
    balancer = create_balancer("round-robin", addresses)
    c = HealthChecker(
        "u1", compile_health_settings(checks), balancer, target_ids={a.key: f"t{i}" for i, a in enumerate(addresses)}
    )
    seen: list[HealthTransition] = []
    c.on_transition = seen.append
    return c, seen


def outlier_checks(interval: float = 60, base_ejection_time: float = 60, **extra: Any) -> dict[str, Any]:
    return {
        "passive": {
            "base_ejection_time": base_ejection_time,
            "outlier_detection": {
                "interval": interval,
                "success_rate": {"minimum_hosts": 3, "request_volume": 10, "stdev_factor": 1000},
                "failure_percentage": None,
            },
        },
        **extra,
    }


def traffic(c: HealthChecker, address: Address, requests: int, failures: int) -> None:
    for i in range(requests):
        c.report_passive(address, False, False, 500 if i < failures else 200)



class NeverProbe:
    async def probe(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        raise AssertionError("no active checks configured")


def test_outlier_detection_turns_passive_reporting_on_with_every_counter_at_zero() -> None:
    c, _ = checker(outlier_checks())
    assert c.passive_on
    assert [v.state for v in c.view()] == ["HEALTHY"] * 5


def test_a_target_failing_30_percent_is_ejected_with_its_rate_and_the_rest_stay() -> None:
    c, seen = checker(outlier_checks())
    for address in ADDRESSES[:4]:
        traffic(c, address, 20, 0)
    traffic(c, ADDRESSES[4], 20, 6)
    assert not seen  # passive counters are 0: nothing happens per request
    c._evaluate_outliers()
    assert [(t.address, t.state) for t in seen] == [(ADDRESSES[4].key, "UNHEALTHY")]
    # mean 94, stdev 12: the limit is 94 - 1 * 12 = 82.
    assert seen[0].reason == "outlier: success rate 70% < 82%"
    assert picked_keys(c, 40) == {a.key for a in ADDRESSES[:4]}


def test_statuses_in_neither_passive_list_count_as_successes_and_the_window_starts_over() -> None:
    c, seen = checker(outlier_checks())
    for address in ADDRESSES[:4]:
        traffic(c, address, 10, 0)
    for _ in range(10):
        c.report_passive(ADDRESSES[4], False, False, 404)  # in neither list
    c._evaluate_outliers()
    assert not seen
    # Nine requests each in the next interval: below the request volume of 10, the
    # previous interval's counts are gone, so nobody qualifies however badly it fails.
    for address in ADDRESSES[:4]:
        traffic(c, address, 9, 0)
    for _ in range(9):
        c.report_passive(ADDRESSES[4], True, False, 0)  # TCP failures
    c._evaluate_outliers()
    assert not seen


def test_tcp_failures_and_timeouts_count_as_failures() -> None:
    c, seen = checker(outlier_checks())
    for address in ADDRESSES[:3]:
        traffic(c, address, 10, 0)
    for i in range(10):
        c.report_passive(ADDRESSES[3], True, False, 0)
        c.report_passive(ADDRESSES[4], i % 2 == 0, True, 200)  # half timeouts
    c._evaluate_outliers()
    assert [t.address for t in seen] == [ADDRESSES[3].key]
    assert seen[0].reason == "outlier: success rate 0% < 30%"


async def test_the_timer_ejects_and_the_half_open_breaker_brings_the_target_back() -> None:
    c, seen = checker(outlier_checks(interval=0.05, base_ejection_time=0.05))
    c.start(NeverProbe())
    try:
        bad = ADDRESSES[4]

        def ejected() -> bool:
            if not seen:  # keep traffic coming until an interval holds all of it
                for address in ADDRESSES[:4]:
                    traffic(c, address, 10, 0)
                traffic(c, bad, 10, 5)
            return bool(seen)

        await wait_for(ejected, message="the outlier ejected")
        assert [(t.address, t.state) for t in seen] == [(bad.key, "UNHEALTHY")]
        assert seen[0].reason.startswith("outlier: success rate 50% < ")
        await wait_for(lambda: bool(c.trial_waiting), message="half-open")
        address = c.balancer.pick(BalancerHandle())
        while address is not None and address.key != bad.key:
            address = c.balancer.pick(BalancerHandle())
        assert address is not None
        c.on_pick(address)
        c.report_passive(address, False, False, 200)
        assert seen[-1].state == "HEALTHY" and seen[-1].reason == "passive: half-open request succeeded"
    finally:
        await c.stop()
    assert not c._tasks


def test_a_cap_of_50_lets_passive_checks_eject_five_of_ten_and_logs_each_refusal_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    checks = {"max_ejection_percent": 50, "passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0}}
    c, seen = checker(checks, n=10)
    with caplog.at_level(logging.WARNING, logger="ferry.data_plane.health"):
        for _ in range(3):
            for address in ADDRESSES[:8]:
                c.report_passive(address, False, False, 500)
    assert [t.address for t in seen] == [a.key for a in ADDRESSES[:5]]
    assert picked_keys(c, 40) == {a.key for a in ADDRESSES[5:]}
    assert c.ejections_refused == 9  # three kept-in targets, three failures each
    refused = [r for r in caplog.records if "stays in" in r.getMessage()]
    assert len(refused) == 3
    view = {v.address.key: v for v in c.view()}
    assert view[ADDRESSES[5].key].state == "HEALTHY"
    assert view[ADDRESSES[5].key].reason == (
        "passive: 3 http_failures (last status 500); not ejected: max_ejection_percent 50 reached"
    )
    # One comes back: there is room for the next failure of a kept-in target.
    c.set_health([ADDRESSES[0].key], True)
    c.report_passive(ADDRESSES[5], False, False, 500)
    assert c.state_of(ADDRESSES[5]) == "UNHEALTHY"


def test_active_and_manual_ejections_are_not_capped_and_do_not_count_toward_the_cap() -> None:
    checks = {"max_ejection_percent": 20, "passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0}}
    c, _ = checker(checks, n=10)
    c.set_health([a.key for a in ADDRESSES[:3]], False)  # an operator
    c.set_health([a.key for a in ADDRESSES[3:6]], False, "active: 2 http_failures (last status 500)")
    assert all(c.state_of(a) == "UNHEALTHY" for a in ADDRESSES[:6])
    for address in ADDRESSES[6:]:
        c.report_passive(address, False, False, 500)
    # 20% of 10 equal weights: two passive ejections, whatever else is out.
    assert [c.state_of(a) for a in ADDRESSES[6:]] == ["UNHEALTHY", "UNHEALTHY", "HEALTHY", "HEALTHY"]


def test_outlier_ejections_are_capped_worst_first() -> None:
    c, seen = checker(outlier_checks(max_ejection_percent=20), n=10)
    for address in ADDRESSES[:7]:
        traffic(c, address, 10, 0)
    traffic(c, ADDRESSES[7], 10, 6)
    traffic(c, ADDRESSES[8], 10, 9)
    traffic(c, ADDRESSES[9], 10, 8)
    c._evaluate_outliers()
    # Three outliers, room for two (20% of ten): the worst two go.
    assert [t.address for t in seen] == [ADDRESSES[8].key, ADDRESSES[9].key]
    assert c.ejections_refused == 1
    assert c.state_of(ADDRESSES[7]) == "HEALTHY"


def test_the_cap_weighs_targets_by_weight() -> None:
    heavy, light = Address("10.0.1.1", 80, weight=300), Address("10.0.1.2", 80, weight=100)
    others = [Address(f"10.0.1.{i}", 80, weight=100) for i in range(3, 6)]
    balancer = create_balancer("round-robin", [heavy, light, *others])
    checks = {"max_ejection_percent": 40, "passive": {"unhealthy": {"http_failures": 1}, "base_ejection_time": 0}}
    c = HealthChecker("u1", compile_health_settings(checks), balancer, target_ids={})
    c.report_passive(heavy, False, False, 500)  # 300 of 700 = 43% > 40%: refused
    assert c.state_of(heavy) == "HEALTHY"
    c.report_passive(light, False, False, 500)
    c.report_passive(others[0], False, False, 500)  # 200 of 700 = 28.6%
    c.report_passive(others[1], False, False, 500)  # 300 of 700 = 42.9%: refused
    assert [c.state_of(a) for a in (light, *others)] == ["UNHEALTHY", "UNHEALTHY", "HEALTHY", "HEALTHY"]
