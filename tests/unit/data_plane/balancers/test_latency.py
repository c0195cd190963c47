"""Latency (EWMA): prefers the fast target, seeds new ones at the average, recovers."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from data_plane.balancers import Address, BalancerHandle, BalancerOptions, create_balancer
from data_plane.balancers.latency import DECAY_SECONDS, FAILED_TRY_FLOOR, LatencyBalancer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def addrs(*weights: int) -> list[Address]:
    return [Address(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights)]


def make(*weights: int) -> tuple[LatencyBalancer, Clock]:
    clock = Clock()
    b = create_balancer("latency", addrs(*weights), BalancerOptions(clock=clock))
    assert isinstance(b, LatencyBalancer)
    b.random = random.Random(7)  # reproducible power-of-two draws
    return b, clock


def serve(b: LatencyBalancer, clock: Clock, latency: dict[str, float], n: int, step: float = 0.01) -> Counter[str]:
    """n sequential requests; each takes latency[host] seconds; clock advances step."""
    counts: Counter[str] = Counter()
    for _ in range(n):
        a = b.pick(BalancerHandle())
        assert a is not None
        b.on_request_start(a)
        clock.now += step
        b.on_request_end(a, latency[a.host], False)
        counts[a.host] += 1
    return counts


LATENCY = {"10.0.0.1": 0.001, "10.0.0.2": 0.100}


def test_prefers_the_fast_target() -> None:
    b, clock = make(100, 100)
    counts = serve(b, clock, LATENCY, 1000)
    assert counts["10.0.0.1"] >= 995  # the slow one is tried once, at the start
    assert b.ewma("10.0.0.1:80") == pytest.approx(0.001)


def test_weight_scales_the_score() -> None:
    b, clock = make(1, 1000)
    # 0.1 s at weight 1000 scores 0.0001, better than 0.001 s at weight 1.
    counts = serve(b, clock, LATENCY, 500)
    assert counts["10.0.0.2"] >= 495


def test_no_samples_yet_two_targets_take_turns() -> None:
    b, clock = make(100, 100)
    picked = [b.pick(BalancerHandle()).host for _ in range(4)]  # type: ignore[union-attr]
    assert picked == ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.2"]


def test_no_samples_yet_every_target_gets_requests() -> None:
    b, clock = make(100, 100, 100)
    b.random = random.Random(7)
    counts = Counter(b.pick(BalancerHandle()).host for _ in range(300))  # type: ignore[union-attr]
    assert set(counts) == {"10.0.0.1", "10.0.0.2", "10.0.0.3"}
    assert min(counts.values()) >= 50


def test_requests_in_flight_do_not_count_as_in_kong() -> None:
    """Kong's score is ewma / weight: a burst of concurrent requests all go to the
    fast target (Kong's spec 07-latency_spec.lua 'balances by latency' needs > 10x)."""
    b, clock = make(100, 100)
    serve(b, clock, {"10.0.0.1": 0.1, "10.0.0.2": 1.0}, 2)
    burst = []
    for _ in range(86):
        a = b.pick(BalancerHandle())
        assert a is not None
        b.on_request_start(a)
        burst.append(a.host)
    assert Counter(burst) == {"10.0.0.1": 86}


def test_power_of_two_choices_with_more_than_two_targets() -> None:
    """Kong's pick: two random candidates, the lower score wins; the slowest of three
    never wins a pair, the fastest wins two pairs out of three."""
    b, clock = make(100, 100, 100)
    b.random = random.Random(3)
    latency = {"10.0.0.1": 0.001, "10.0.0.2": 0.01, "10.0.0.3": 0.1}
    serve(b, clock, latency, 3)  # one sample each (ties in turn)
    counts = Counter(b.pick(BalancerHandle()).host for _ in range(3000))  # type: ignore[union-attr]
    assert counts["10.0.0.3"] == 0
    assert 1800 <= counts["10.0.0.1"] <= 2200
    assert 800 <= counts["10.0.0.2"] <= 1200


def test_new_target_starts_at_the_average() -> None:
    b, clock = make(100, 100)
    serve(b, clock, LATENCY, 2)  # one sample each
    avg = (b.ewma("10.0.0.1:80") + b.ewma("10.0.0.2:80")) / 2  # type: ignore[operator]
    b.after_targets_changed(addrs(100, 100, 100))
    assert b.ewma("10.0.0.3:80") == pytest.approx(avg)
    # It is neither flooded (score 0) nor starved: between the two (a retry that
    # tried the fast one moves on to it, not to the slow one).
    handle = BalancerHandle()
    handle.tried.add("10.0.0.1:80")
    assert b.pick(handle).host == "10.0.0.3"  # type: ignore[union-attr]


def test_recovers_a_once_slow_target() -> None:
    b, clock = make(100, 100)
    serve(b, clock, LATENCY, 10)
    # The slow one gets nothing for a while, then its decayed average falls below the
    # fast one's and it is tried again (about DECAY * ln(100) ~ 46 s later).
    counts = serve(b, clock, LATENCY, 200, step=1.0)
    assert counts["10.0.0.2"] >= 1
    first_retry = None
    b2, clock2 = make(100, 100)
    serve(b2, clock2, LATENCY, 10)
    for i in range(200):
        a = b2.pick(BalancerHandle())
        assert a is not None
        clock2.now += 1.0
        b2.on_request_end(a, LATENCY[a.host], False)
        if a.host == "10.0.0.2":
            first_retry = i
            break
    assert first_retry is not None and 30 <= first_retry <= 5 * DECAY_SECONDS + 30


def test_failed_try_counts_as_slow() -> None:
    b, clock = make(100, 100)
    serve(b, clock, {"10.0.0.1": 0.01, "10.0.0.2": 0.01}, 2)
    clock.now += 100  # long idle: the next sample replaces the average
    # A refused connection fails fast, but must not look fast.
    b.on_request_end(addrs(100, 100)[0], 0.0001, True)
    assert b.ewma("10.0.0.1:80") >= 0.99 * FAILED_TRY_FLOOR  # type: ignore[operator]
    assert b.pick(BalancerHandle()).host == "10.0.0.2"  # type: ignore[union-attr]


def test_retries_skip_tried_and_unhealthy_skipped() -> None:
    b, clock = make(100, 100, 100)
    # One sample each, in a fixed order (picks with no samples yet are random pairs,
    # which could leave one address unsampled: its score 0 would then win).
    for address, seconds in zip(addrs(100, 100, 100), (0.001, 0.01, 0.1), strict=True):
        b.on_request_start(address)
        clock.now += 0.01
        b.on_request_end(address, seconds, False)
    handle = BalancerHandle()
    order = [b.pick(handle).host for _ in range(3)]  # type: ignore[union-attr]
    assert sorted(order) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # each once
    assert order[0] != "10.0.0.3"  # the slowest never wins a pair
    b.set_address_health("10.0.0.1:80", False)
    assert {b.pick(BalancerHandle()).host for _ in range(20)} == {"10.0.0.2"}  # type: ignore[union-attr]


def test_statistics_carried_to_a_rebuilt_balancer() -> None:
    b, clock = make(100, 100)
    serve(b, clock, LATENCY, 20)
    rebuilt = create_balancer("latency", addrs(100, 100, 50), BalancerOptions(clock=clock), previous=b)
    assert isinstance(rebuilt, LatencyBalancer)
    assert rebuilt.ewma("10.0.0.1:80") == pytest.approx(b.ewma("10.0.0.1:80"))
    assert rebuilt.ewma("10.0.0.3:80") is not None  # seeded at the average
