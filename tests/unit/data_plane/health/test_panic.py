"""Panic mode (``healthchecks.panic_threshold``, Envoy's): the health checker decides it
from the healthy share of the serving tier's weight and tells the balancer; the
supervisor reports it; Kong's ``threshold`` (503) is checked first."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import Address, BalancerHandle, create_balancer
from data_plane.health.checker import HealthChecker
from data_plane.health.settings import compile_health_settings
from data_plane.health.supervisor import HealthSupervisor
from data_plane.runtime import compile_config
from tests.support.picks import picked_keys
from tests.support.polling import wait_for

FIVE = [Address(f"10.1.0.{i}", 80) for i in range(1, 6)]


def panic_checker(
    panic_threshold: float, addresses: list[Address], **checks: Any
) -> tuple[HealthChecker, list[bool]]:
    config = compile_health_settings({"panic_threshold": panic_threshold, **checks})
    balancer = create_balancer("round-robin", addresses)
    c = HealthChecker("u1", config, balancer, target_ids={})
    flips: list[bool] = []
    c.on_panic = flips.append
    return c, flips



def test_panic_at_40_percent_healthy_with_a_threshold_of_50_balances_over_all_five() -> None:
    c, flips = panic_checker(50, FIVE)
    c.set_health([FIVE[0].key, FIVE[1].key], False)  # 60% healthy: no panic
    assert not c.panic and picked_keys(c, 50) == {a.key for a in FIVE[2:]}
    c.set_health([FIVE[2].key], False)  # 40% healthy < 50%
    assert c.panic and c.balancer.in_panic and flips == [True]
    assert picked_keys(c, 50) == {a.key for a in FIVE}
    c.set_health([FIVE[0].key], True)  # 60% again
    assert not c.panic and not c.balancer.in_panic and flips == [True, False]
    assert picked_keys(c, 50) == {FIVE[0].key, FIVE[3].key, FIVE[4].key}


@given(
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=6),
    down=st.sets(st.integers(0, 5)),
    threshold=st.integers(1, 100),
)
@settings(max_examples=80, deadline=None)
def test_panic_iff_the_healthy_share_of_weight_is_below_the_threshold(
    weights: list[int], down: set[int], threshold: int
) -> None:
    addresses = [Address(f"10.1.1.{i + 1}", 80, w) for i, w in enumerate(weights)]
    c, _ = panic_checker(threshold, addresses)
    c.set_health([addresses[i].key for i in down if i < len(addresses)], False)
    total = sum(weights)
    healthy = sum(w for i, w in enumerate(weights) if i not in down)
    assert c.panic == (total > 0 and healthy * 100 < threshold * total)
    assert c.balancer.in_panic == c.panic


def test_panic_threshold_0_is_off_whatever_the_health() -> None:
    c, flips = panic_checker(0, FIVE)
    c.set_health([a.key for a in FIVE], False)
    assert not c.panic and flips == [] and picked_keys(c, 50) == set()


def test_everything_down_panics_over_every_target() -> None:
    c, _ = panic_checker(1, FIVE)
    c.set_health([a.key for a in FIVE], False)
    assert c.panic and picked_keys(c, 50) == {a.key for a in FIVE}


def test_the_share_is_over_the_serving_tier_so_a_healthy_failover_tier_is_no_panic() -> None:
    primaries = FIVE[:3]
    backups = [Address("10.1.2.1", 80, failover=True), Address("10.1.2.2", 80, failover=True)]
    c, _ = panic_checker(50, [*primaries, *backups])
    c.set_health([primaries[0].key, primaries[1].key], False)  # 1 of 3 primaries: 33%
    assert c.panic and picked_keys(c, 50) == {a.key for a in primaries}  # the failover tier stays idle
    c.set_health([primaries[2].key], False)  # no primary usable: the failover tier serves
    assert not c.panic and picked_keys(c, 50) == {a.key for a in backups}
    c.set_health([backups[0].key], False)  # 1 of 2 failover targets: 50%, not below
    assert not c.panic and picked_keys(c, 50) == {backups[1].key}
    c.set_health([backups[1].key], False)  # nothing usable: panic over the primaries
    assert c.panic and picked_keys(c, 50) == {a.key for a in primaries}


def test_kongs_threshold_is_checked_first_so_below_it_the_upstream_answers_503() -> None:
    data = {
        "upstreams": [{"id": "u1", "name": "shop",
                       "healthchecks": {"threshold": 30, "panic_threshold": 50}}],
        "targets": [
            {"id": f"t{i}", "target": a.key, "weight": 100, "upstream": {"id": "u1"}}
            for i, a in enumerate(FIVE)
        ],
        "services": [],
        "routes": [],
    }
    upstream = compile_config(1, "h1", data).upstreams["u1"]
    c = HealthChecker("u1", upstream.health_settings, upstream.balancer, target_ids={})
    upstream.attach_health(c)
    c.set_health([a.key for a in FIVE[:3]], False)  # 40%: panic, above Kong's 30
    assert c.panic and not c.below_threshold
    assert upstream.begin_try(BalancerHandle()) is not None
    c.set_health([FIVE[3].key], False)  # 20%: below Kong's threshold
    assert c.panic and c.below_threshold
    assert upstream.begin_try(BalancerHandle()) is None  # 503, panic or not


class NeverProbe:
    async def probe(self, address: Address, host: str) -> tuple[str, int]:
        raise AssertionError("no active checks configured")


async def test_a_half_open_trial_address_counts_as_healthy_as_for_the_threshold() -> None:
    two = FIVE[:2]
    c, flips = panic_checker(
        60, two, passive={"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0.01}
    )
    c.start(NeverProbe())  # type: ignore[arg-type]
    try:
        c.report_passive(two[0], True, False, 0)  # ejected: 50% < 60%
        assert c.panic
        await wait_for(lambda: bool(c.trial_waiting), message="half-open")
        assert not c.panic  # the trial address counts as healthy
        c.on_pick(two[0])  # its one request is on its way: still counts
        assert not c.panic
        c.report_passive(two[0], True, False, 0)  # the trial failed: ejected again
        assert c.panic and flips == [True, False, True]
    finally:
        await c.stop()


@pytest.mark.parametrize("threshold", [-1, 101, "50"])
def test_a_panic_threshold_out_of_range_is_refused(threshold: object) -> None:
    with pytest.raises(ValueError, match="panic_threshold"):
        compile_health_settings({"panic_threshold": threshold})


def _entities(panic_threshold: float) -> dict[str, list[dict[str, Any]]]:
    return {
        "upstreams": [{"id": "u1", "name": "shop", "healthchecks": {"panic_threshold": panic_threshold}}],
        "targets": [
            {"id": f"t{i}", "target": a.key, "weight": 100, "upstream": {"id": "u1"}}
            for i, a in enumerate(FIVE[:2])
        ],
        "services": [],
        "routes": [],
    }


async def test_the_supervisor_reports_a_panic_flip_and_lists_the_upstreams_in_panic() -> None:
    supervisor = HealthSupervisor()
    try:
        first = compile_config(1, "h1", _entities(60))
        supervisor.apply(first)
        while not supervisor.reports.empty():
            supervisor.reports.get_nowait()
        assert supervisor.panic_upstreams() == []
        supervisor.override("u1", FIVE[0].key, "", False)  # 50% < 60%
        assert supervisor.panic_upstreams() == ["u1"]
        batches = []
        while not supervisor.reports.empty():
            batches.append(supervisor.reports.get_nowait())
        assert (False, []) in batches  # the flip itself queued a report
        # A config that turns panic mode off takes the upstream out of panic (and says so).
        supervisor.apply(compile_config(2, "h2", _entities(0), first))
        assert supervisor.panic_upstreams() == []
        assert not supervisor.reports.empty()
    finally:
        await supervisor.stop()


async def test_a_replaced_checker_no_longer_decides_panic_for_the_balancer_it_shares() -> None:
    balancer = create_balancer("round-robin", FIVE[:2])
    passive = {"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}}
    old = HealthChecker(
        "u1", compile_health_settings({"panic_threshold": 60, **passive}), balancer, target_ids={}
    )
    old.start(NeverProbe())  # type: ignore[arg-type]
    # A new config turns panic off and keeps the balancer; the old checker is stopped.
    new = HealthChecker(
        "u1", compile_health_settings(passive), balancer, target_ids={}, previous=old
    )
    await old.stop()
    old.report_passive(FIVE[0], True, False, 0)  # a late try of the old config fails
    assert not balancer.in_panic and not new.panic
    assert picked_keys(new) == {FIVE[1].key}
