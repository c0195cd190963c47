"""Consistent hashing with bounded load (Envoy's ``hash_balance_factor``)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import Address, BalancerHandle, BalancerOptions, create_balancer
from data_plane.balancers.consistent_hashing import ConsistentHashingBalancer


def addrs(*weights: int) -> list[Address]:
    return [Address(f"10.0.1.{i + 1}", 8000, w) for i, w in enumerate(weights)]


def hashing(targets: list[Address], factor: int) -> ConsistentHashingBalancer:
    b = create_balancer("consistent-hashing", targets, BalancerOptions(slots=1000, hash_balance_factor=factor))
    assert isinstance(b, ConsistentHashingBalancer)
    return b


def expected_bound(factor: int, loads: dict[str, int], usable: list[Address], address: Address) -> int:
    total = sum(loads.get(a.key, 0) for a in usable)
    weight = sum(a.weight for a in usable)
    return math.ceil(factor * (total + 1) * address.weight / (100 * weight))


@given(
    weights=st.lists(st.integers(1, 300), min_size=1, max_size=6),
    factor=st.integers(100, 400),
    busy=st.lists(st.integers(0, 5), max_size=60),
    unhealthy=st.sets(st.integers(0, 5), max_size=2),
    key=st.binary(max_size=12),
)
@settings(max_examples=200, deadline=None)
def test_no_first_pick_exceeds_the_bound_whatever_the_load(
    weights: list[int], factor: int, busy: list[int], unhealthy: set[int], key: bytes
) -> None:
    targets = addrs(*weights)
    b = hashing(targets, factor)
    for i in unhealthy:
        if i < len(targets):
            b.set_address_health(targets[i].key, False)
    for i in busy:
        if i < len(targets):
            b.on_request_start(targets[i])
    usable = [a for a in targets if b.is_usable(a)]
    loads = {a.key: b.in_flight(a.key) for a in targets}
    picked = b.pick(BalancerHandle(key))
    if not usable:
        assert picked is None
        return
    assert picked is not None and picked in usable
    assert loads[picked.key] + 1 <= expected_bound(factor, loads, usable, picked)
    assert b.bound(picked) == expected_bound(factor, loads, usable, picked)


@given(
    count=st.integers(2, 6),
    factor=st.integers(100, 300),
    key=st.binary(max_size=12),
    requests=st.integers(1, 80),
)
@settings(max_examples=100, deadline=None)
def test_a_hot_key_never_loads_a_target_past_factor_times_the_average(
    count: int, factor: int, key: bytes, requests: int
) -> None:
    targets = addrs(*([100] * count))
    b = hashing(targets, factor)
    for placed in range(requests):
        address = b.pick(BalancerHandle(key))
        assert address is not None
        b.on_request_start(address)
        # After placing placed+1 requests, each target holds at most its bound.
        for target in targets:
            assert b.in_flight(target.key) <= math.ceil(factor * (placed + 1) / (100 * count))


@given(keys=st.lists(st.binary(max_size=12), min_size=1, max_size=40), factor=st.integers(100, 500))
@settings(max_examples=60, deadline=None)
def test_without_load_the_mapping_is_plain_consistent_hashing(keys: list[bytes], factor: int) -> None:
    targets = addrs(100, 50, 200, 100)
    plain = hashing(targets, 0)
    bounded = hashing(targets, factor)
    for key in keys:
        assert bounded.pick(BalancerHandle(key)) == plain.pick(BalancerHandle(key))


@given(keys=st.lists(st.binary(max_size=12), min_size=1, max_size=40), busy=st.lists(st.integers(0, 3), max_size=40))
@settings(max_examples=60, deadline=None)
def test_factor_zero_ignores_load_and_tracks_nothing(keys: list[bytes], busy: list[int]) -> None:
    targets = addrs(100, 100, 100, 100)
    reference = ConsistentHashingBalancer(targets, BalancerOptions(slots=1000))
    b = hashing(targets, 0)
    assert b.tracks_requests is False
    for i in busy:
        b.on_request_start(targets[i])
    assert all(b.in_flight(t.key) == 0 for t in targets)
    for key in keys:
        assert b.pick(BalancerHandle(key)) == reference.pick(BalancerHandle(key))


def test_tracking_is_per_instance() -> None:
    targets = addrs(100, 100)
    assert hashing(targets, 0).tracks_requests is False
    assert hashing(targets, 150).tracks_requests is True
    assert create_balancer("least-connections", targets).tracks_requests is True
    assert create_balancer("round-robin", targets).tracks_requests is False


def test_a_hot_key_spills_to_the_next_targets_on_the_ring_and_back() -> None:
    targets = addrs(100, 100, 100)
    b = hashing(targets, 150)
    owner = b.owner_of(b"hot")
    assert owner is not None
    placed = []
    for _ in range(9):
        address = b.pick(BalancerHandle(b"hot"))
        assert address is not None
        b.on_request_start(address)
        placed.append(address)
    counts = Counter(a.key for a in placed)
    assert len(counts) > 1
    assert counts[owner.key] == max(counts.values())
    assert max(counts.values()) <= math.ceil(1.5 * 9 / 3)
    for address in placed:  # everything ends: the key goes home again
        b.on_request_end(address, 0.01, False)
    assert b.pick(BalancerHandle(b"hot")) == owner


def test_loads_survive_health_changes_and_count_only_usable_targets() -> None:
    targets = addrs(100, 100, 100)
    b = hashing(targets, 100)
    for _ in range(4):
        b.on_request_start(targets[0])
    b.on_request_start(targets[1])
    b.set_address_health(targets[0].key, False)
    # Usable load is 1 over 2 targets: bound = ceil(1 * 2 * 100 / 200) = 1.
    assert b.bound(targets[1]) == 1
    b.set_address_health(targets[0].key, True)
    assert b.in_flight(targets[0].key) == 4
    assert b.bound(targets[1]) == math.ceil(6 / 3)
    for _ in range(5):
        b.on_request_end(targets[0], 0.01, False)  # one more end than starts: ignored
    assert b.in_flight(targets[0].key) == 0


@pytest.mark.parametrize("factor", [1, 50, 99, -1])
def test_factors_below_100_are_refused(factor: int) -> None:
    with pytest.raises(ValueError, match="hash_balance_factor"):
        hashing(addrs(100), factor)


def test_a_retry_skips_tried_targets_even_when_the_others_are_full() -> None:
    targets = addrs(100, 100)
    b = hashing(targets, 100)
    handle = BalancerHandle(b"k")
    first = b.pick(handle)
    assert first is not None
    b.on_request_start(first)
    other = next(t for t in targets if t != first)
    for _ in range(5):
        b.on_request_start(other)
    retry = b.pick(handle)
    assert retry == other


def test_bounded_load_spreads_over_the_failover_tier_once_no_primary_is_usable() -> None:
    primaries = [Address("10.0.7.1", 80, 100), Address("10.0.7.2", 80, 100)]
    backups = [Address(f"10.0.8.{i}", 80, 100, failover=True) for i in range(1, 4)]
    b = hashing(primaries + backups, 150)
    for p in primaries:
        b.set_address_health(p.key, False)
    seen: Counter[str] = Counter()
    for _ in range(9):  # one hot key, nine requests in flight
        address = b.pick(BalancerHandle(b"hot"))
        assert address is not None and address.failover
        b.on_request_start(address)
        seen[address.key] += 1
    # Bound over the 3 failover targets: ceil(1.5 * 9 / 3) = 5 at most on one.
    assert len(seen) > 1 and max(seen.values()) <= 5
    b.set_address_health(primaries[0].key, True)
    address = b.pick(BalancerHandle(b"hot"))
    assert address is not None and not address.failover


@pytest.mark.parametrize("factor", [0, 100])
def test_an_address_whose_points_all_lost_their_positions_still_serves_when_it_is_the_only_one_left(
    factor: int,
) -> None:
    # 10.0.1.3 (weight 1) gets 3 points on a 1000-slot ring; here all 3 lose their
    # position to 10.0.1.2's heavier points (hypothesis found this set).
    targets = addrs(1, 136, 1)
    b = hashing(targets, factor)
    assert targets[2] not in b._ring
    b.set_address_health(targets[0].key, False)
    b.set_address_health(targets[1].key, False)
    assert b.pick(BalancerHandle(b"")) == targets[2]
    assert b.pick(BalancerHandle(b"any key")) == targets[2]
