"""Least-connections: idle target preferred, weights, ties, reports, retries."""

from __future__ import annotations

from collections import Counter

from data_plane.balancers import Address, BalancerHandle, create_balancer
from data_plane.balancers.least_connections import LeastConnectionsBalancer


def addrs(*weights: int) -> list[Address]:
    return [Address(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights)]


def start(b: LeastConnectionsBalancer, handle: BalancerHandle | None = None) -> Address:
    address = b.pick(handle or BalancerHandle())
    assert address is not None
    b.on_request_start(address)
    return address


def test_registered() -> None:
    assert isinstance(create_balancer("least-connections", addrs(1)), LeastConnectionsBalancer)


def test_prefers_the_idle_target() -> None:
    b = LeastConnectionsBalancer(addrs(100, 100, 100))
    busy = [start(b) for _ in range(3)]  # one each
    assert len({a.key for a in busy}) == 3
    # Two more on the first two; the third target is now the idle one.
    b.on_request_start(busy[0])
    b.on_request_start(busy[1])
    assert b.pick(BalancerHandle()) == busy[2]
    # Ending requests makes a target idle again.
    for _ in range(2):
        b.on_request_end(busy[0], 0.01, False)
    assert b.pick(BalancerHandle()) == busy[0]
    assert b.in_flight(busy[0].key) == 0 and b.in_flight(busy[1].key) == 2


def test_ties_taken_in_turn() -> None:
    b = LeastConnectionsBalancer(addrs(1, 1, 1))
    # Sequential requests (each ends before the next): every score ties, so turns.
    seen = []
    for _ in range(6):
        a = start(b)
        b.on_request_end(a, 0.001, False)
        seen.append(a.host)
    assert seen == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2


def test_respects_weights_relative_to_in_flight() -> None:
    b = LeastConnectionsBalancer(addrs(100, 300))
    # Kong's (in_flight + 1) / weight: the heavy target takes 3 in flight per light one.
    counts = Counter(start(b).host for _ in range(40))
    assert counts == {"10.0.0.1": 10, "10.0.0.2": 30}
    assert b.in_flight("10.0.0.1:80") == 10 and b.in_flight("10.0.0.2:80") == 30


def test_retries_skip_tried() -> None:
    b = LeastConnectionsBalancer(addrs(100, 100, 100))
    # Make one target clearly the least loaded: a retry must still not repeat it.
    other = addrs(100, 100, 100)
    for _ in range(5):
        b.on_request_start(other[1])
        b.on_request_start(other[2])
    handle = BalancerHandle()
    first = b.pick(handle)
    assert first == other[0]
    second = b.pick(handle)
    third = b.pick(handle)
    assert {first, second, third} == set(other)
    # All tried: round again, to the least loaded.
    assert b.pick(handle) == other[0]


def test_unhealthy_and_weight_zero_skipped() -> None:
    b = LeastConnectionsBalancer(addrs(0, 10, 10))
    b.set_address_health("10.0.0.2:80", False)
    assert {b.pick(BalancerHandle()).host for _ in range(5)} == {"10.0.0.3"}  # type: ignore[union-attr]
    b.set_address_health("10.0.0.3:80", False)
    assert b.pick(BalancerHandle()) is None


def test_counts_survive_health_changes_and_unknown_reports_are_ignored() -> None:
    b = LeastConnectionsBalancer(addrs(1, 1))
    a = start(b)
    b.set_address_health(a.key, False)
    b.set_address_health(a.key, True)
    assert b.in_flight(a.key) == 1
    b.on_request_end(a, 0.1, True)
    b.on_request_end(a, 0.1, True)  # an extra end never goes negative
    assert b.in_flight(a.key) == 0
    b.on_request_end(Address("10.9.9.9", 80), 0.1, False)  # unknown: ignored
