"""Smooth weighted round-robin: distribution, smoothness, weight 0, retries."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import Address, BalancerHandle, create_balancer, parse_target
from data_plane.balancers.round_robin import RoundRobinBalancer


def addrs(*weights: int) -> list[Address]:
    return [Address(f"10.0.0.{i + 1}", 80, w) for i, w in enumerate(weights)]


def picks(balancer: RoundRobinBalancer, n: int) -> list[str]:
    out = []
    for _ in range(n):
        address = balancer.pick(BalancerHandle())
        assert address is not None
        out.append(address.host)
    return out


def test_equal_weights_alternate() -> None:
    b = RoundRobinBalancer(addrs(100, 100, 100))
    assert picks(b, 6) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2


def test_smooth_no_bursts() -> None:
    b = RoundRobinBalancer(addrs(5, 1, 1))
    # nginx's documented sequence for weights 5, 1, 1.
    assert picks(b, 7) == ["10.0.0.1"] * 2 + ["10.0.0.2", "10.0.0.1", "10.0.0.3"] + ["10.0.0.1"] * 2


def test_weight_zero_never_picked_and_all_zero_is_none() -> None:
    b = RoundRobinBalancer(addrs(0, 10, 0))
    assert set(picks(b, 20)) == {"10.0.0.2"}
    assert RoundRobinBalancer(addrs(0, 0)).pick(BalancerHandle()) is None
    assert RoundRobinBalancer([]).pick(BalancerHandle()) is None


def test_retry_skips_tried_addresses() -> None:
    b = RoundRobinBalancer(addrs(1, 1, 1))
    handle = BalancerHandle()
    seen = {b.pick(handle).key for _ in range(3)}  # type: ignore[union-attr]
    assert len(seen) == 3 and handle.tried == seen
    # All tried: goes round again rather than giving up (single target retries too).
    assert b.pick(handle) is not None
    single = RoundRobinBalancer(addrs(7))
    h = BalancerHandle()
    assert single.pick(h) == single.pick(h)


def test_unhealthy_skipped_and_restored() -> None:
    b = RoundRobinBalancer(addrs(1, 1))
    b.set_address_health("10.0.0.1:80", False)
    assert set(picks(b, 4)) == {"10.0.0.2"}
    b.set_address_health("10.0.0.1:80", True)
    assert set(picks(b, 4)) == {"10.0.0.1", "10.0.0.2"}


def test_registry() -> None:
    assert isinstance(create_balancer("round-robin", addrs(1)), RoundRobinBalancer)
    with pytest.raises(ValueError, match="unknown"):
        create_balancer("random", addrs(1))


@pytest.mark.parametrize(
    ("text", "host", "port", "key"),
    [
        ("a.example:81", "a.example", 81, "a.example:81"),
        ("a.example", "a.example", 8000, "a.example:8000"),
        ("[::1]:9000", "::1", 9000, "[::1]:9000"),
        ("::1", "::1", 8000, "[::1]:8000"),
        ("10.1.2.3:1", "10.1.2.3", 1, "10.1.2.3:1"),
    ],
)
def test_parse_target(text: str, host: str, port: int, key: str) -> None:
    a = parse_target(text)
    assert (a.host, a.port, a.key) == (host, port, key)


@pytest.mark.parametrize("text", ["", "a:b", "a:70000", "[::1", "[zz]:1", "a b:1", "a:1:2"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


def test_parse_target_accepts_port_0_as_the_admin_api_does() -> None:
    assert parse_target("a:0").key == "a:0"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=6))
def test_window_shares_match_weights(weights: list[int]) -> None:
    """Over any window of sum(weights) picks, each address gets exactly its weight."""
    b = RoundRobinBalancer(addrs(*weights))
    total = sum(weights)
    if total == 0:
        assert b.pick(BalancerHandle()) is None
        return
    picks(b, 3)  # start the window anywhere
    counts = Counter(picks(b, total))
    assert counts == Counter({f"10.0.0.{i + 1}": w for i, w in enumerate(weights) if w})


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=10), min_size=2, max_size=5))
def test_smoothness_bound(weights: list[int]) -> None:
    """Smooth WRR never serves an address far ahead of its fair share."""
    b = RoundRobinBalancer(addrs(*weights))
    total = sum(weights)
    served: Counter[str] = Counter()
    for n in range(1, 3 * total + 1):
        served[picks(b, 1)[0]] += 1
        for i, w in enumerate(weights):
            assert abs(served[f"10.0.0.{i + 1}"] - n * w / total) < len(weights)


def test_parse_target_results_are_shared_but_a_bool_weight_is_still_refused() -> None:
    first = parse_target("10.0.0.9:81", 1)
    assert parse_target("10.0.0.9:81", 1) is first  # cached: configs recompile targets
    assert parse_target("10.0.0.9:81", 2).weight == 2
    with pytest.raises(ValueError, match="invalid weight"):
        parse_target("10.0.0.9:81", True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid target"):
        parse_target("10.0.0.9:99999", 1)
    with pytest.raises(ValueError, match="invalid target"):
        parse_target("10.0.0.9:99999", 1)  # a failure is not cached as a result
