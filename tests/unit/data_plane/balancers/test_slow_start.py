"""Slow start (Envoy's): new or recovered addresses ramp from 10% to 100% of weight."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from data_plane.balancers import Address, Balancer, BalancerHandle, BalancerOptions, create_balancer
from data_plane.runtime import compile_config


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def addrs(n: int, weight: int = 100) -> list[Address]:
    return [Address(f"10.0.0.{i + 1}", 80, weight) for i in range(n)]


def share(b: Balancer, host: str, n: int = 3000, concurrent: bool = False) -> float:
    counts: Counter[str] = Counter()
    in_flight: list[Address] = []
    for _ in range(n):
        a = b.pick(BalancerHandle())
        assert a is not None
        b.on_request_start(a)
        in_flight.append(a)
        # Least-connections needs concurrency for weights to show: keep 60 in flight.
        if not concurrent or len(in_flight) > 60:
            b.on_request_end(in_flight.pop(0), 0.01, False)
        counts[a.host] += 1
    for a in in_flight:
        b.on_request_end(a, 0.01, False)
    return counts[host] / n


@pytest.mark.parametrize("algorithm", ["round-robin", "least-connections"])
def test_new_address_ramps_linearly_from_ten_percent(algorithm: str) -> None:
    clock = Clock()
    b = create_balancer(algorithm, addrs(2), BalancerOptions(slow_start=100, clock=clock))
    b.after_targets_changed(addrs(3))
    concurrent = algorithm == "least-connections"
    assert b.ramp_factor("10.0.0.3:80") == pytest.approx(0.1)
    # Weight 10 next to two of 100: 10 / 210.
    assert share(b, "10.0.0.3", concurrent=concurrent) == pytest.approx(10 / 210, abs=0.02)
    clock.now += 50
    assert b.ramp_factor("10.0.0.3:80") == pytest.approx(0.5)
    assert share(b, "10.0.0.3", concurrent=concurrent) == pytest.approx(50 / 250, abs=0.02)
    clock.now += 50
    assert b.ramp_factor("10.0.0.3:80") == 1.0
    assert share(b, "10.0.0.3", concurrent=concurrent) == pytest.approx(1 / 3, abs=0.02)


def test_latency_uses_the_ramped_weight() -> None:
    clock = Clock()
    b = create_balancer("latency", addrs(2), BalancerOptions(slow_start=100, clock=clock))
    handle_a = BalancerHandle()
    a = b.pick(handle_a)
    assert a is not None
    b.on_request_end(a, 0.010, False)
    b.after_targets_changed(addrs(3))  # the new one is seeded at 0.010 (the average)
    # Same average, but 10% of the weight: the ramping address scores 10x worse.
    assert b.pick(BalancerHandle()).host != "10.0.0.3"  # type: ignore[union-attr]
    clock.now += 100
    assert b.ramp_factor("10.0.0.3:80") == 1.0


def test_first_address_set_does_not_ramp_and_off_by_default() -> None:
    clock = Clock()
    b = create_balancer("round-robin", addrs(3), BalancerOptions(slow_start=100, clock=clock))
    assert all(b.ramp_factor(a.key) == 1.0 for a in addrs(3))
    off = create_balancer("round-robin", addrs(2), BalancerOptions(clock=clock))
    off.after_targets_changed(addrs(3))
    assert off.ramp_factor("10.0.0.3:80") == 1.0


def test_recovered_address_ramps_again() -> None:
    clock = Clock()
    b = create_balancer("round-robin", addrs(2), BalancerOptions(slow_start=10, clock=clock))
    b.set_address_health("10.0.0.1:80", False)
    clock.now += 60
    b.set_address_health("10.0.0.1:80", True)
    assert b.ramp_factor("10.0.0.1:80") == pytest.approx(0.1)
    clock.now += 5
    assert b.ramp_factor("10.0.0.1:80") == pytest.approx(0.5)
    # Marking an already healthy address healthy does not restart its ramp.
    b.set_address_health("10.0.0.1:80", True)
    assert b.ramp_factor("10.0.0.1:80") == pytest.approx(0.5)


def test_consistent_hashing_ignores_it() -> None:
    clock = Clock()
    b = create_balancer("consistent-hashing", addrs(2), BalancerOptions(slow_start=100, clock=clock))
    b.after_targets_changed(addrs(3))
    assert b.ramp_factor("10.0.0.3:80") == 1.0


def test_rebuilt_balancer_ramps_only_new_targets_and_keeps_ramps() -> None:
    clock = Clock()
    opts = BalancerOptions(slow_start=100, clock=clock)
    old = create_balancer("round-robin", addrs(2), opts)
    old.after_targets_changed(addrs(3))  # 10.0.0.3 starts ramping
    clock.now += 50
    new = create_balancer("round-robin", addrs(4), opts, previous=old)
    assert new.ramp_factor("10.0.0.1:80") == 1.0
    assert new.ramp_factor("10.0.0.3:80") == pytest.approx(0.5)  # carried over
    assert new.ramp_factor("10.0.0.4:80") == pytest.approx(0.1)  # new
    assert old.ramp_factor("10.0.0.4:80") == 1.0 and len(old.addresses) == 3  # untouched


def test_dns_expansion_of_a_rebuilt_balancer_is_not_new() -> None:
    clock = Clock()
    opts = BalancerOptions(slow_start=100, clock=clock)
    expanded = [Address("10.1.0.1", 80), Address("10.1.0.2", 80)]
    old = create_balancer("round-robin", [Address("svc.internal", 80)], opts)
    old.after_targets_changed(expanded)  # the resolver's expansion
    # A new config adds an IP target: built with the hostname again, then expanded.
    new = create_balancer("round-robin", [Address("svc.internal", 80), Address("10.2.0.1", 80)], opts, previous=old)
    new.after_targets_changed([*expanded, Address("10.2.0.1", 80)])
    assert new.ramp_factor("10.1.0.1:80") == 1.0
    assert new.ramp_factor("10.2.0.1:80") == pytest.approx(0.1)
    # A later DNS change that adds an address ramps it.
    new.after_targets_changed([*expanded, Address("10.1.0.3", 80), Address("10.2.0.1", 80)])
    assert new.ramp_factor("10.1.0.3:80") == pytest.approx(0.1)


def test_compile_config_ramps_an_added_target() -> None:
    clock = Clock()

    def entities(n: int) -> dict[str, list[dict[str, Any]]]:
        return {
            "upstreams": [{"id": "u", "name": "up", "algorithm": "round-robin", "slow_start": 30}],
            "targets": [
                {"id": f"t{i}", "target": f"10.0.0.{i + 1}:80", "weight": 100, "upstream": {"id": "u"}}
                for i in range(n)
            ],
        }

    first = compile_config(1, "a", entities(2), clock=clock)
    assert first.upstreams["u"].slow_start == 30.0
    second = compile_config(2, "b", entities(3), previous=first, clock=clock)
    b = second.upstreams["u"].balancer
    assert b is not first.upstreams["u"].balancer
    assert b.ramp_factor("10.0.0.3:80") == pytest.approx(0.1)
    assert b.ramp_factor("10.0.0.1:80") == 1.0
