"""What every registered algorithm promises, and weighted splits within 2%."""

from __future__ import annotations

from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import (
    ALGORITHMS,
    KNOWN_ALGORITHMS,
    Address,
    Balancer,
    BalancerHandle,
    BalancerOptions,
    create_balancer,
)


def addrs(*weights: int) -> list[Address]:
    return [Address(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights)]


def test_every_known_algorithm_is_registered_and_unknown_refused() -> None:
    assert set(ALGORITHMS) == set(KNOWN_ALGORITHMS)
    for name, cls in ALGORITHMS.items():
        assert isinstance(create_balancer(name, addrs(1), BalancerOptions()), cls)
    with pytest.raises(ValueError, match="unknown balancer algorithm"):
        create_balancer("random", addrs(1))


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
@given(
    weights=st.lists(st.integers(0, 1000), min_size=1, max_size=8),
    unhealthy=st.sets(st.integers(0, 7), max_size=3),
    key=st.binary(max_size=16),
    busy=st.lists(st.integers(0, 7), max_size=20),
)
@settings(max_examples=60, deadline=None)
def test_retries_never_repeat_while_an_untried_one_is_left(
    algorithm: str, weights: list[int], unhealthy: set[int], key: bytes, busy: list[int]
) -> None:
    targets = addrs(*weights)
    b = create_balancer(algorithm, targets)
    for i in unhealthy:
        if i < len(targets):
            b.set_address_health(targets[i].key, False)
    for i in busy:  # some load, so stateful algorithms have something to prefer
        if i < len(targets):
            b.on_request_start(targets[i])
    usable = {a.key for a in targets if b.is_usable(a)}
    handle = BalancerHandle(key)
    seen: list[str] = []
    for _ in range(len(usable)):
        address = b.pick(handle)
        assert address is not None and address.key in usable
        assert address.key not in seen
        seen.append(address.key)
        b.on_request_start(address)
        b.on_request_end(address, 0.01, True)
    assert set(seen) == usable
    # All usable ones tried: the next retry still gets a usable address, or none at all.
    again = b.pick(handle)
    assert (again is None) == (not usable)
    if again is not None:
        assert again.key in usable


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_no_usable_address_gives_none(algorithm: str) -> None:
    assert create_balancer(algorithm, []).pick(BalancerHandle()) is None
    assert create_balancer(algorithm, addrs(0, 0)).pick(BalancerHandle()) is None
    b = create_balancer(algorithm, addrs(5))
    b.set_address_health("10.0.0.1:80", False)
    assert b.pick(BalancerHandle()) is None


def shares_round_robin(b: Balancer, n: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for _ in range(n):
        a = b.pick(BalancerHandle())
        assert a is not None
        counts[a.key] += 1
    return counts


def shares_least_connections(b: Balancer, n: int, window: int) -> Counter[str]:
    """Requests overlap: ``window`` stay in flight and the oldest ends first (equal
    service times), the steady state in which least-connections splits by weight."""
    counts: Counter[str] = Counter()
    in_flight: deque[Address] = deque()
    for _ in range(n):
        a = b.pick(BalancerHandle())
        assert a is not None
        b.on_request_start(a)
        in_flight.append(a)
        if len(in_flight) >= window:
            b.on_request_end(in_flight.popleft(), 0.01, False)
        counts[a.key] += 1
    return counts


WEIGHTS = st.lists(st.integers(1, 100), min_size=2, max_size=5)


@given(weights=WEIGHTS)
@settings(max_examples=40, deadline=None)
def test_round_robin_weighted_split_within_2_percent(weights: list[int]) -> None:
    targets = addrs(*weights)
    counts = shares_round_robin(create_balancer("round-robin", targets), 10_000)
    total = sum(weights)
    for a in targets:
        assert abs(counts[a.key] / 10_000 - a.weight / total) <= 0.02


@given(weights=WEIGHTS)
@settings(max_examples=40, deadline=None)
def test_least_connections_weighted_split_within_2_percent(weights: list[int]) -> None:
    targets = addrs(*weights)
    counts = shares_least_connections(create_balancer("least-connections", targets), 10_000, 200)
    total = sum(weights)
    for a in targets:
        assert abs(counts[a.key] / 10_000 - a.weight / total) <= 0.02
