"""Sticky sessions: a cookie pins a client to its address while that address is usable."""

from __future__ import annotations

import uuid

from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import Address, BalancerHandle, BalancerOptions, create_balancer
from data_plane.balancers.base import ResolvedAddress
from data_plane.balancers.sticky_sessions import (
    StickyCookie,
    StickySessionsBalancer,
    sticky_token,
)

UPSTREAM_ID = "6f1e3c0a-3c1f-4d5e-9a57-0c6b8f1e2d3a"
OPTIONS = BalancerOptions(sticky_salt=UPSTREAM_ID)


def addrs(n: int, weight: int = 100) -> list[Address]:
    return [Address(f"10.0.0.{i + 1}", 8000, weight) for i in range(n)]


def sticky(addresses: list[Address], options: BalancerOptions = OPTIONS) -> StickySessionsBalancer:
    b = create_balancer("sticky-sessions", addresses, options)
    assert isinstance(b, StickySessionsBalancer)
    return b


def first_pick(b: StickySessionsBalancer, cookie: bytes | None) -> Address:
    address = b.pick(BalancerHandle(cookie))
    assert address is not None
    return address


def test_no_cookie_is_balanced_by_least_connections() -> None:
    targets = addrs(3)
    b = sticky(targets)
    b.on_request_start(targets[0])
    b.on_request_start(targets[0])
    b.on_request_start(targets[1])
    assert first_pick(b, None) == targets[2]
    assert first_pick(b, b"") == targets[2]


@given(index=st.integers(0, 4), picks=st.integers(1, 50), busy=st.lists(st.integers(0, 4), max_size=30))
@settings(max_examples=50, deadline=None)
def test_a_cookie_maps_to_the_same_address_whatever_the_load(index: int, picks: int, busy: list[int]) -> None:
    targets = addrs(5)
    b = sticky(targets)
    for i in busy:  # the pinned address may be the busiest: it is still chosen
        b.on_request_start(targets[i])
    cookie = b.token(targets[index])
    for _ in range(picks):
        address = first_pick(b, cookie)
        assert address == targets[index]
        b.on_request_start(address)


def test_two_data_planes_map_a_cookie_to_the_same_address() -> None:
    # Same upstream (same id), targets listed in another order, separate processes'
    # worth of state: the cookie one set is understood by the other.
    targets = addrs(6)
    dp1 = sticky(targets)
    dp2 = sticky(list(reversed(targets)))
    for target in targets:
        token = dp1.token(target)
        assert dp2.token(target) == token
        assert first_pick(dp2, token) == target
    assert sticky_token(UPSTREAM_ID.encode(), targets[0].key) == dp1.token(targets[0])


def test_the_cookie_is_opaque_and_salted_by_the_upstream() -> None:
    target = addrs(1)[0]
    token = sticky([target]).token(target)
    assert len(token) == 32 and all(c in b"0123456789abcdef" for c in token)
    assert b"10.0.0.1" not in token and b"8000" not in token
    other = sticky([target], BalancerOptions(sticky_salt=str(uuid.uuid4()))).token(target)
    assert other != token


def test_moves_when_the_pinned_address_becomes_unusable_and_comes_back() -> None:
    targets = addrs(3)
    b = sticky(targets)
    cookie = b.token(targets[1])
    b.set_address_health(targets[1].key, False)
    moved = first_pick(b, cookie)
    assert moved != targets[1]
    b.set_address_health(targets[1].key, True)
    assert first_pick(b, cookie) == targets[1]


def test_weight_zero_address_is_not_pinned_to() -> None:
    targets = [*addrs(2), Address("10.0.0.9", 8000, 0)]
    b = sticky(targets)
    assert b.address_for(b.token(targets[2])) is None
    assert first_pick(b, b.token(targets[2])) in targets[:2]


def test_unknown_or_forged_cookie_is_treated_as_no_cookie() -> None:
    targets = addrs(2)
    b = sticky(targets)
    gone = Address("10.9.9.9", 8000)
    for cookie in (b"nonsense", sticky_token(UPSTREAM_ID.encode(), gone.key), b.token(targets[0]).upper()):
        assert b.address_for(cookie) is None
        assert first_pick(b, cookie) in targets


def test_a_retry_leaves_the_pinned_address_for_another() -> None:
    targets = addrs(3)
    b = sticky(targets)
    handle = BalancerHandle(b.token(targets[0]))
    assert b.pick(handle) == targets[0]
    retry = b.pick(handle)
    assert retry is not None and retry != targets[0]
    assert handle.tried == {targets[0].key, retry.key}


def test_pins_survive_a_config_version_that_adds_a_target() -> None:
    targets = addrs(4)
    old = sticky(targets)
    new = create_balancer(
        "sticky-sessions", [*targets, Address("10.0.0.50", 8000)], OPTIONS, previous=old
    )
    assert isinstance(new, StickySessionsBalancer)
    for target in targets:
        assert first_pick(new, old.token(target)) == target


def test_resolved_addresses_of_one_hostname_target_are_pinned_one_by_one() -> None:
    a = ResolvedAddress("10.1.0.1", 8000, hostname="api.internal")
    c = ResolvedAddress("10.1.0.2", 8000, hostname="api.internal")
    b = sticky([a, c])
    assert b.token(a) != b.token(c)
    assert first_pick(b, b.token(c)) == c


def test_set_cookie_names_the_picked_address_only_when_it_changes() -> None:
    targets = addrs(2)
    b = sticky(targets)
    cookie = StickyCookie("srv", "/app")
    token = b.token(targets[1])
    assert cookie.header_for(b, None, targets[1]) == (
        b"Set-Cookie: srv=" + token + b"; Path=/app; HttpOnly\r\n"
    )
    assert cookie.header_for(b, token, targets[1]) is None
    # The client sent another address's cookie (its target went away): re-pinned.
    assert cookie.header_for(b, b.token(targets[0]), targets[1]) == (
        b"Set-Cookie: srv=" + token + b"; Path=/app; HttpOnly\r\n"
    )


def test_a_client_pinned_to_a_failover_target_is_handed_back_when_a_primary_recovers() -> None:
    primary = Address("10.0.9.1", 8000, 100)
    backup = Address("10.0.9.2", 8000, 100, failover=True)
    b = sticky([primary, backup])
    b.set_address_health(primary.key, False)
    cookie = b.token(first_pick(b, None))
    assert b.address_for(cookie) == backup  # the only eligible address
    assert first_pick(b, cookie) == backup
    b.set_address_health(primary.key, True)
    # The failover target is healthy but no longer eligible: the client moves.
    assert first_pick(b, cookie) == primary


def test_in_panic_a_client_stays_pinned_to_its_unhealthy_target() -> None:
    targets = addrs(3)
    b = sticky(targets)
    cookie = b.token(targets[1])
    b.set_address_health(targets[1].key, False)
    assert first_pick(b, cookie) != targets[1]
    b.set_panic(True)
    assert first_pick(b, cookie) == targets[1]
