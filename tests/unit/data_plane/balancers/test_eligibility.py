"""The one eligibility rule (Balancer.eligible): failover tiers and panic mode, honoured
by every algorithm, consistent hashing included (a ring per tier)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import ALGORITHMS, Address, Balancer, BalancerHandle, create_balancer
from data_plane.balancers.base import parse_target
from data_plane.balancers.consistent_hashing import ConsistentHashingBalancer
from data_plane.balancers.least_connections import LeastConnectionsBalancer

ALL = sorted(ALGORITHMS)

#: One address: (weight, failover, healthy).
address_specs = st.lists(
    st.tuples(st.integers(0, 200), st.booleans(), st.booleans()), min_size=1, max_size=8
)


def build(algorithm: str, specs: list[tuple[int, bool, bool]]) -> tuple[Balancer, list[Address]]:
    targets = [Address(f"10.0.1.{i + 1}", 80, w, failover=f) for i, (w, f, _) in enumerate(specs)]
    b = create_balancer(algorithm, targets)
    for address, (_, _, healthy) in zip(targets, specs, strict=True):
        if not healthy:
            b.set_address_health(address.key, False)
    return b, targets


def picks(b: Balancer, n: int, key: bytes | None = None, *, distinct_keys: bool = False) -> list[Address]:
    out = []
    for i in range(n):
        handle = BalancerHandle(str(i).encode() if distinct_keys else key)
        address = b.pick(handle)
        assert address is not None
        b.on_request_start(address)
        b.on_request_end(address, 0.001, False)
        out.append(address)
    return out


@pytest.mark.parametrize("algorithm", ALL)
@given(specs=address_specs)
@settings(max_examples=80, deadline=None)
def test_a_failover_target_is_picked_iff_no_primary_is_usable(
    algorithm: str, specs: list[tuple[int, bool, bool]]
) -> None:
    b, targets = build(algorithm, specs)
    primaries_usable = [a for a in targets if not a.failover and b.is_usable(a)]
    backups_usable = [a for a in targets if a.failover and b.is_usable(a)]
    chosen = [b.pick(BalancerHandle(str(i).encode())) for i in range(3 * len(targets))]
    if primaries_usable:
        assert all(a is not None and not a.failover and b.is_usable(a) for a in chosen)
    elif backups_usable:
        assert all(a is not None and a.failover and b.is_usable(a) for a in chosen)
    else:
        assert chosen == [None] * len(chosen)


@pytest.mark.parametrize("algorithm", ALL)
@given(specs=address_specs)
@settings(max_examples=80, deadline=None)
def test_in_panic_health_is_ignored_within_the_serving_tier_and_weight_0_never_picked(
    algorithm: str, specs: list[tuple[int, bool, bool]]
) -> None:
    b, targets = build(algorithm, specs)
    b.set_panic(True)
    assert b.in_panic
    primaries = [a for a in targets if not a.failover and a.weight > 0]
    backups = [a for a in targets if a.failover and a.weight > 0]
    if any(b.is_usable(a) for a in primaries):
        tier = primaries
    elif any(b.is_usable(a) for a in backups) or not primaries:
        tier = backups
    else:
        tier = primaries  # nothing usable anywhere: the primaries, healthy or not
    assert b.eligible() == tier
    keys = {a.key for a in tier}
    for i in range(3 * len(targets)):
        address = b.pick(BalancerHandle(str(i).encode()))
        if not tier:
            assert address is None
        else:
            assert address is not None and address.key in keys and address.weight > 0


@given(
    weights=st.lists(st.integers(1, 50), min_size=1, max_size=6),
    down=st.sets(st.integers(0, 5)),
)
@settings(max_examples=60, deadline=None)
def test_round_robin_in_panic_picks_every_target_in_proportion_to_its_weight(
    weights: list[int], down: set[int]
) -> None:
    targets = [Address(f"10.0.2.{i + 1}", 80, w) for i, w in enumerate(weights)]
    b = create_balancer("round-robin", targets)
    for i in down:
        if i < len(targets):
            b.set_address_health(targets[i].key, False)
    b.set_panic(True)
    counts = Counter(a.key for a in picks(b, sum(weights)))
    assert counts == {a.key: a.weight for a in targets}  # one window: exactly the weights


def test_least_connections_in_panic_spreads_in_flight_tries_by_weight() -> None:
    targets = [Address("10.0.3.1", 80, 300), Address("10.0.3.2", 80, 100), Address("10.0.3.3", 80, 100)]
    b = create_balancer("least-connections", targets)
    assert isinstance(b, LeastConnectionsBalancer)
    for a in targets[1:]:
        b.set_address_health(a.key, False)
    b.set_panic(True)
    for _ in range(500):  # tries that never end: in-flight counts follow the weights
        address = b.pick(BalancerHandle())
        assert address is not None
        b.on_request_start(address)
    assert [b.in_flight(a.key) for a in targets] == [300, 100, 100]


@pytest.mark.parametrize("algorithm", ALL)
def test_leaving_panic_goes_back_to_the_healthy_targets_only(algorithm: str) -> None:
    b, targets = build(algorithm, [(100, False, True), (100, False, False), (100, False, False)])
    b.set_panic(True)
    assert {a.key for a in picks(b, 60, distinct_keys=True)} == {a.key for a in targets}
    b.set_panic(False)
    assert {a.key for a in picks(b, 30, distinct_keys=True)} == {targets[0].key}


@pytest.mark.parametrize("algorithm", ALL)
def test_failover_targets_take_over_and_hand_back(algorithm: str) -> None:
    b, targets = build(algorithm, [(100, False, True), (100, False, True), (100, True, True)])
    primaries = {targets[0].key, targets[1].key}
    assert {a.key for a in picks(b, 40, distinct_keys=True)} == primaries
    b.set_address_health(targets[0].key, False)
    assert {a.key for a in picks(b, 40, distinct_keys=True)} == {targets[1].key}
    b.set_address_health(targets[1].key, False)
    assert {a.key for a in picks(b, 20, distinct_keys=True)} == {targets[2].key}
    b.set_address_health(targets[1].key, True)  # a primary back: the failover hands back
    assert {a.key for a in picks(b, 20, distinct_keys=True)} == {targets[1].key}


@pytest.mark.parametrize("algorithm", ALL)
def test_a_retry_stays_in_the_serving_tier(algorithm: str) -> None:
    b, targets = build(algorithm, [(100, False, True), (100, True, True)])
    handle = BalancerHandle(b"k")
    assert [b.pick(handle) for _ in range(3)] == [targets[0]] * 3  # never the failover one


def test_consistent_hashing_failover_targets_do_not_move_keys_between_primaries() -> None:
    primaries = [Address(f"10.0.4.{i}", 80, 100) for i in range(1, 5)]
    plain = ConsistentHashingBalancer(primaries)
    backups = [Address("10.0.5.1", 80, 100, failover=True), Address("10.0.5.2", 80, 50, failover=True)]
    mixed = ConsistentHashingBalancer([*primaries, *backups])
    keys = [str(i).encode() for i in range(500)]
    assert [mixed.pick(BalancerHandle(k)) for k in keys] == [plain.pick(BalancerHandle(k)) for k in keys]


def test_consistent_hashing_keys_keep_one_failover_target_while_primaries_are_down() -> None:
    primaries = [Address(f"10.0.6.{i}", 80, 100) for i in range(1, 4)]
    backups = [Address(f"10.0.7.{i}", 80, 100, failover=True) for i in range(1, 4)]
    b = ConsistentHashingBalancer([*primaries, *backups])
    for a in primaries:
        b.set_address_health(a.key, False)
    keys = [str(i).encode() for i in range(300)]
    first = [b.pick(BalancerHandle(k)) for k in keys]
    assert all(a is not None and a.failover for a in first)
    assert len({a.key for a in first if a is not None}) == 3  # spread over the failover ring
    assert [b.pick(BalancerHandle(k)) for k in keys] == first  # and consistent
    # The same keys over a ring of the failover targets alone: the ring is per tier.
    alone = ConsistentHashingBalancer([Address(a.host, a.port, a.weight) for a in backups])
    assert [a.key for a in first if a is not None] == [
        alone.pick(BalancerHandle(k)).key for k in keys  # type: ignore[union-attr]
    ]


def test_consistent_hashing_in_panic_sends_a_key_to_its_owner_even_when_unhealthy() -> None:
    targets = [Address(f"10.0.8.{i}", 80, 100) for i in range(1, 6)]
    b = ConsistentHashingBalancer(targets)
    keys = [str(i).encode() for i in range(200)]
    owners = [b.owner_of(k) for k in keys]
    for a in targets[:3]:
        b.set_address_health(a.key, False)
    assert all(b.pick(BalancerHandle(k)) not in targets[:3] for k in keys)
    b.set_panic(True)
    assert [b.pick(BalancerHandle(k)) for k in keys] == owners


def test_the_failover_flag_is_part_of_equality_and_fingerprint_not_of_the_key() -> None:
    primary, backup = Address("10.0.9.1", 80, 100), Address("10.0.9.1", 80, 100, failover=True)
    assert primary.key == backup.key and primary != backup
    assert create_balancer("round-robin", [primary]).fingerprint() != create_balancer(
        "round-robin", [backup]
    ).fingerprint()
    assert parse_target("10.0.9.1:80", 100, True) == backup
    assert parse_target("10.0.9.1:80", 100) == primary
    with pytest.raises(ValueError, match="invalid failover"):
        parse_target("10.0.9.1:80", 100, "yes")


def test_a_rebuild_for_a_changed_failover_flag_keeps_health_marks() -> None:
    old = create_balancer("round-robin", [Address("10.0.9.2", 80), Address("10.0.9.3", 80)])
    old.set_address_health("10.0.9.2:80", False)
    new = create_balancer(
        "round-robin",
        [Address("10.0.9.2", 80), Address("10.0.9.3", 80, failover=True)],
        previous=old,
    )
    # The only primary is down: the failover target serves.
    assert new.pick(BalancerHandle()) == Address("10.0.9.3", 80, failover=True)
