"""Consistent hashing: remapping bounds, cross-node determinism, weights, retries, health."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from data_plane.balancers import Address, BalancerHandle, BalancerOptions, create_balancer
from data_plane.balancers.consistent_hashing import ConsistentHashingBalancer

KEYS = [f"user-{i}".encode() for i in range(10_000)]


def addrs(n: int, weight: int = 100, start: int = 1) -> list[Address]:
    return [Address(f"10.0.{i // 250}.{i % 250 + 1}", 8000, weight) for i in range(start - 1, start - 1 + n)]


def mapping(balancer: ConsistentHashingBalancer) -> list[str]:
    out = []
    for key in KEYS:
        address = balancer.pick(BalancerHandle(key))
        assert address is not None
        out.append(address.key)
    return out


def moved(before: list[str], after: list[str]) -> int:
    return sum(1 for a, b in zip(before, after, strict=True) if a != b)


@pytest.mark.parametrize("n", [2, 3, 5, 10, 20, 50])
def test_adding_one_target_moves_at_most_1_3_over_n(n: int) -> None:
    base = addrs(n)
    before = mapping(ConsistentHashingBalancer(base))
    after = mapping(ConsistentHashingBalancer([*base, *addrs(1, start=n + 1)]))
    assert moved(before, after) <= 1.3 / n * len(KEYS)
    # Only keys that now go to the new target moved.
    new_key = addrs(1, start=n + 1)[0].key
    assert all(b == new_key for a, b in zip(before, after, strict=True) if a != b)


@pytest.mark.parametrize("n", [3, 5, 10, 20, 50])
def test_removing_one_target_moves_at_most_1_3_over_n(n: int) -> None:
    base = addrs(n)
    before = mapping(ConsistentHashingBalancer(base))
    for removed_index in (0, n // 2, n - 1):
        removed = base[removed_index]
        after = mapping(ConsistentHashingBalancer([a for a in base if a != removed]))
        assert moved(before, after) <= 1.3 / n * len(KEYS)
        # Only the removed target's keys moved.
        assert all(a == removed.key for a, b in zip(before, after, strict=True) if a != b)


def test_after_targets_changed_matches_a_fresh_build() -> None:
    b = ConsistentHashingBalancer(addrs(5))
    b.after_targets_changed(addrs(6))
    assert mapping(b) == mapping(ConsistentHashingBalancer(addrs(6)))


def test_same_key_same_target_on_independent_builds_in_any_order() -> None:
    targets = addrs(12) + [Address("backend.example", 9000, 100), Address("::1", 8001, 50)]
    shuffled = list(targets)
    random.Random(7).shuffle(shuffled)
    one = create_balancer("consistent-hashing", targets, BalancerOptions(slots=5000))
    two = create_balancer("consistent-hashing", shuffled, BalancerOptions(slots=5000))
    assert isinstance(one, ConsistentHashingBalancer) and isinstance(two, ConsistentHashingBalancer)
    assert mapping(one) == mapping(two)


def test_known_mapping_is_stable_across_processes() -> None:
    # The hash must not be Python's randomised hash(): pin one lookup.
    b = ConsistentHashingBalancer(addrs(3))
    first = b.pick(BalancerHandle(b"user-1"))
    assert first is not None
    assert b.owner_of(b"user-1") == first
    assert ConsistentHashingBalancer(addrs(3)).owner_of(b"user-1") == first


def test_weights_respected_roughly() -> None:
    targets = [Address("10.0.0.1", 80, 100), Address("10.0.0.2", 80, 200), Address("10.0.0.3", 80, 300)]
    counts = Counter(mapping(ConsistentHashingBalancer(targets)))
    shares = {k: v / len(KEYS) for k, v in counts.items()}
    for target, expected in zip(targets, (1 / 6, 2 / 6, 3 / 6), strict=True):
        assert abs(shares[target.key] - expected) < 0.06, shares


def test_equal_weights_balance_roughly() -> None:
    counts = Counter(mapping(ConsistentHashingBalancer(addrs(8))))
    for count in counts.values():
        assert abs(count / len(KEYS) - 1 / 8) < 0.03


def test_weight_zero_never_picked() -> None:
    targets = [Address("10.0.0.1", 80, 0), Address("10.0.0.2", 80, 10)]
    assert set(mapping(ConsistentHashingBalancer(targets))) == {"10.0.0.2:80"}
    assert ConsistentHashingBalancer([Address("10.0.0.1", 80, 0)]).pick(BalancerHandle(b"k")) is None
    assert ConsistentHashingBalancer([]).pick(BalancerHandle(b"k")) is None


def test_retries_never_repeat_while_untried_left() -> None:
    b = ConsistentHashingBalancer(addrs(6))
    for key in KEYS[:200]:
        handle = BalancerHandle(key)
        seen = []
        for _ in range(6):
            address = b.pick(handle)
            assert address is not None
            seen.append(address.key)
        assert len(set(seen)) == 6
        assert seen[0] == b.owner_of(key).key  # type: ignore[union-attr]
        # All tried: starts over at the key's owner.
        assert b.pick(handle) == b.owner_of(key)


def test_unhealthy_skipped_and_only_its_keys_move() -> None:
    b = ConsistentHashingBalancer(addrs(5))
    before = mapping(b)
    down = addrs(5)[2].key
    b.set_address_health(down, False)
    after = mapping(b)
    assert down not in after
    assert all(a == down for a, c in zip(before, after, strict=True) if a != c)
    # The down target's keys spread over several others, not onto one neighbour.
    assert len({c for a, c in zip(before, after, strict=True) if a == down}) >= 3
    b.set_address_health(down, True)
    assert mapping(b) == before
    for a in addrs(5):
        b.set_address_health(a.key, False)
    assert b.pick(BalancerHandle(b"k")) is None


def test_no_hash_key_hashes_empty_string() -> None:
    b = ConsistentHashingBalancer(addrs(5))
    assert b.pick(BalancerHandle()) == b.owner_of(b"")
    assert {b.pick(BalancerHandle()) for _ in range(10)} == {b.owner_of(b"")}


@pytest.mark.parametrize("slots", [10, 100, 65536])
def test_ring_size_follows_slots(slots: int) -> None:
    b = ConsistentHashingBalancer(addrs(4), BalancerOptions(slots=slots))
    assert b.slots == slots
    # A ring of `slots` positions: at most `slots` distinct owners' points, all usable.
    assert len({b.owner_of(k) for k in KEYS[:2000]}) <= min(4, slots)
    assert b.pick(BalancerHandle(b"x")) is not None


def test_slow_start_is_ignored() -> None:
    now = [0.0]
    opts = BalancerOptions(slow_start=60, clock=lambda: now[0])
    b = ConsistentHashingBalancer(addrs(3), opts)
    b.after_targets_changed(addrs(4))
    assert mapping(b) == mapping(ConsistentHashingBalancer(addrs(4)))
