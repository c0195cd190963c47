"""HealthChecker: Kong's counters and thresholds, the threshold flag, carried state,
manual overrides, and the half-open breaker (driven by real event-loop timers).
Checkers carried across configs: tests/unit/data_plane/test_config_installer.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from data_plane.balancers import Address, BalancerHandle, create_balancer
from data_plane.health.checker import HealthChecker, HealthTransition, ProbeOutcome
from data_plane.health.settings import HealthSettings, compile_health_settings
from tests.support.picks import picked_keys
from tests.support.polling import wait_for

A = Address("10.0.0.1", 80)
B = Address("10.0.0.2", 80)


def settings(**passive_unhealthy: Any) -> HealthSettings:
    return compile_health_settings(
        {
            "passive": {
                "healthy": {"successes": passive_unhealthy.pop("successes", 0)},
                "unhealthy": passive_unhealthy,
                "base_ejection_time": passive_unhealthy.pop("base", 0),
            }
        }
    )


def checker(config: HealthSettings, addresses: list[Address] | None = None) -> tuple[HealthChecker, list[HealthTransition]]:
    balancer = create_balancer("round-robin", addresses or [A, B])
    c = HealthChecker("u1", config, balancer, target_ids={A.key: "t-a", B.key: "t-b"})
    seen: list[HealthTransition] = []
    c.on_transition = seen.append
    return c, seen



def test_tcp_failures_reach_the_threshold_only_when_consecutive_enough() -> None:
    c, seen = checker(settings(tcp_failures=3))
    c.report_passive(A, True, False, 0)
    c.report_passive(A, True, False, 0)
    c.report_passive(A, False, False, 200)  # a success resets the failure counters
    c.report_passive(A, True, False, 0)
    c.report_passive(A, True, False, 0)
    assert not seen and picked_keys(c) == {A.key, B.key}
    c.report_passive(A, True, False, 0)
    assert [(t.address, t.state, t.target_id) for t in seen] == [(A.key, "UNHEALTHY", "t-a")]
    assert seen[0].reason == "passive: 3 tcp_failures"
    assert picked_keys(c) == {B.key}


def test_each_failure_kind_has_its_own_counter_and_zero_is_inert() -> None:
    c, seen = checker(settings(timeouts=2, http_failures=0))
    for _ in range(10):
        c.report_passive(A, False, False, 500)  # http_failures threshold 0: inert
    assert not seen
    c.report_passive(A, True, True, 0)
    c.report_passive(A, True, True, 0)
    assert [t.state for t in seen] == ["UNHEALTHY"] and "timeouts" in seen[0].reason


def test_http_statuses_are_classified_by_the_passive_lists() -> None:
    c, seen = checker(settings(http_failures=2))
    c.report_passive(A, False, False, 503)
    c.report_passive(A, False, False, 404)  # in neither list: ignored, counts stay
    c.report_passive(A, False, False, 500)
    assert [t.state for t in seen] == ["UNHEALTHY"]
    assert "last status 500" in seen[0].reason


def test_passive_successes_bring_a_target_back_only_when_configured() -> None:
    c, seen = checker(settings(tcp_failures=1, successes=2))
    c.report_passive(A, True, False, 0)
    assert c.state_of(A) == "UNHEALTHY"
    c.report_passive(A, False, False, 200)
    c.report_passive(A, False, False, 200)
    assert [t.state for t in seen] == ["UNHEALTHY", "HEALTHY"]
    assert picked_keys(c) == {A.key, B.key}


def test_threshold_flags_the_balancer_when_too_little_weight_is_healthy() -> None:
    config = compile_health_settings(
        {"threshold": 60, "passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}}
    )
    c, _ = checker(config)
    assert not c.below_threshold
    c.report_passive(A, True, False, 0)  # 50% healthy < 60%
    assert c.below_threshold
    c.set_health([A.key], True)
    assert not c.below_threshold


def test_manual_override_sets_state_and_resets_counters() -> None:
    c, seen = checker(settings(tcp_failures=2))
    c.report_passive(A, True, False, 0)
    c.set_health([A.key], False)
    assert c.state_of(A) == "UNHEALTHY" and seen[-1].reason == "manual"
    c.set_health([A.key], True)
    c.report_passive(A, True, False, 0)  # the counter was reset: one failure is not enough
    assert c.state_of(A) == "HEALTHY"


def test_with_checks_off_targets_show_healthchecks_off_and_weight_zero_too() -> None:
    c, _ = checker(HealthSettings(), [A, Address("10.0.0.3", 80, weight=0)])
    assert [v.state for v in c.view()] == ["HEALTHCHECKS_OFF", "HEALTHCHECKS_OFF"]
    c.set_health([A.key], False)
    assert c.view()[0].state == "UNHEALTHY"


class NeverProbe:
    async def probe(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        raise AssertionError("no active checks configured")


async def test_half_open_lets_one_request_through_and_doubles_the_ejection_on_failure() -> None:
    config = compile_health_settings(
        {"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0.05,
                     "max_ejection_time": 0.15}}
    )
    c, seen = checker(config)
    c.start(NeverProbe())
    try:
        c.report_passive(A, True, False, 0)
        assert picked_keys(c) == {B.key}
        # After the ejection time A may be picked again, but only once.
        await wait_for(lambda: bool(c.trial_waiting), message="half-open")
        chosen = []
        for _ in range(6):
            address = c.balancer.pick(BalancerHandle())
            assert address is not None
            if c.trial_waiting:
                c.on_pick(address)
            chosen.append(address.key)
        assert chosen.count(A.key) == 1
        c.report_passive(A, True, False, 0)  # the trial failed: ejected again (2 x 0.05 s)
        assert c.state_of(A) == "UNHEALTHY" and not c.trial_waiting
        await wait_for(lambda: bool(c.trial_waiting), message="second half-open")
        address = A
        c.on_pick(address)
        c.report_passive(A, False, False, 200)  # success closes the breaker
        assert c.state_of(A) == "HEALTHY"
        assert [t.state for t in seen] == ["UNHEALTHY", "HEALTHY"]
        assert seen[-1].reason == "passive: half-open request succeeded"
        assert picked_keys(c) == {A.key, B.key}
    finally:
        await c.stop()


async def test_a_trial_whose_client_went_away_is_let_through_again() -> None:
    config = compile_health_settings(
        {"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0.01}}
    )
    c, _ = checker(config)
    c.start(NeverProbe())
    try:
        c.report_passive(A, True, False, 0)
        await wait_for(lambda: bool(c.trial_waiting), message="half-open")
        c.on_pick(A)
        assert not c.trial_waiting
        c.report_aborted(A)
        assert c.trial_waiting == {A.key} and c.state_of(A) == "UNHEALTHY"
    finally:
        await c.stop()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"active": {"type": "udp"}}, "type"),
        ({"passive": {"unhealthy": {"tcp_failures": 300}}}, "tcp_failures"),
        ({"threshold": 101}, "threshold"),
        ({"active": {"http_path": "health"}}, "http_path"),
        ({"active": {"healthy": {"http_statuses": ["200"]}}}, "http_statuses"),
    ],
)
def test_settings_the_data_plane_cannot_use_are_refused(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compile_health_settings(raw)


def test_kongs_defaults_are_all_off() -> None:
    assert not compile_health_settings({}).enabled
    assert not compile_health_settings(None).enabled
    on = compile_health_settings({"active": {"healthy": {"interval": 5}}})
    assert on.enabled and on.active.enabled and not on.passive.enabled


async def test_stop_is_idempotent_and_cancels_timers() -> None:
    config = compile_health_settings(
        {"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 30}}
    )
    c, _ = checker(config)
    c.start(NeverProbe())
    c.report_passive(A, True, False, 0)
    await c.stop()
    await c.stop()
    await asyncio.sleep(0)
    assert c.state_of(A) == "UNHEALTHY"
