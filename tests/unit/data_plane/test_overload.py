"""Overload caps per target (data_plane/overload.py): what each cap counts, when a try is
re-picked, waits or is refused, and that every count is released exactly once."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_plane.balancers import Address, BalancerHandle, create_balancer
from data_plane.health.checker import HealthChecker
from data_plane.health.settings import compile_health_settings
from data_plane.overload import (
    OPEN,
    OVERFLOW,
    WAIT,
    ConnectionSlot,
    OverloadCaps,
    OverloadGuard,
    PendingTicket,
    TargetLoad,
)
from data_plane.runtime import CompiledUpstream, ConfigError, compile_upstream
from data_plane.upstream_try import Try

A = Address("10.0.0.1", 80)
B = Address("10.0.0.2", 80)
C = Address("10.0.0.3", 80)


def upstream(
    caps: OverloadCaps,
    algorithm: str = "round-robin",
    addresses: tuple[Address, ...] = (A, B),
) -> CompiledUpstream:
    balancer = create_balancer(algorithm, list(addresses))
    compiled = CompiledUpstream(
        id="u1", name="u1", algorithm=algorithm, host_header=None, balancer=balancer,
        targets=addresses, overload=OverloadGuard.carried_over(caps, "u1", None),
    )
    compiled.attach_health(HealthChecker("u1", compile_health_settings(None), balancer, target_ids={}))
    return compiled


def requests_of(u: CompiledUpstream) -> dict[str, int]:
    assert u.overload is not None
    return {key: load.requests for key, load in u.overload.loads().items() if load.requests}


# ------------------------------------------------------------------ max_requests


def test_all_caps_zero_means_no_guard_at_all() -> None:
    assert OverloadGuard.carried_over(OverloadCaps(), "u1", None) is None
    u = upstream(OverloadCaps())
    assert u.overload is None
    tries = [u.begin_try(BalancerHandle()) for _ in range(100)]
    assert all(t is not None for t in tries)


def test_a_try_counts_on_its_target_and_ends_its_count_exactly_once() -> None:
    u = upstream(OverloadCaps(max_requests=5))
    t = u.begin_try(BalancerHandle())
    assert t is not None
    assert requests_of(u) == {t.address.key: 1}
    t.end(False, 200)
    t.end(False, 200)  # a second end releases nothing
    assert requests_of(u) == {}
    assert u.overload is not None and u.overload.load(t.address.key).requests == 0


def test_a_target_at_max_requests_is_passed_over_for_another_without_a_retry() -> None:
    u = upstream(OverloadCaps(max_requests=1), algorithm="consistent-hashing")
    first = u.begin_try(BalancerHandle(b"hot-key"))
    assert first is not None
    handle = BalancerHandle(b"hot-key")
    second = u.begin_try(handle)
    assert second is not None
    # The same key would go to the same target: it is at its cap, so the other one.
    assert second.address.key != first.address.key
    assert handle.retries == 0 and not handle.overloaded
    # Only the address really tried is in the handle (a retry still avoids it).
    assert handle.tried == {second.address.key}
    assert requests_of(u) == {A.key: 1, B.key: 1}


def test_every_target_at_max_requests_refuses_the_try_as_overloaded() -> None:
    u = upstream(OverloadCaps(max_requests=1))
    held = [u.begin_try(BalancerHandle()) for _ in range(2)]
    assert all(t is not None for t in held)
    handle = BalancerHandle()
    assert u.begin_try(handle) is None
    assert handle.overloaded
    assert handle.tried == set()  # nothing was tried
    assert requests_of(u) == {A.key: 1, B.key: 1}
    # Once one ends, its target takes tries again.
    first = held[0]
    assert first is not None
    first.end(False, 200)
    again = u.begin_try(BalancerHandle())
    assert again is not None and again.address.key == first.address.key


def test_a_refused_retry_gives_its_retry_slot_back() -> None:
    from data_plane.retry_budget import RetryBudget

    budget = RetryBudget(100.0, min_retry_concurrency=10)
    balancer = create_balancer("round-robin", [A, B])
    u = CompiledUpstream(
        id="u1", name="u1", algorithm="round-robin", host_header=None, balancer=balancer,
        targets=(A, B), retry_budget=budget,
        overload=OverloadGuard.carried_over(OverloadCaps(max_requests=1), "u1", None),
    )
    u.attach_health(HealthChecker("u1", compile_health_settings(None), balancer, target_ids={}))
    handle = BalancerHandle()
    first = u.begin_try(handle)
    assert first is not None
    first.end(True)
    assert u.allow_retry(handle)  # a retry slot is taken for the next try...
    assert budget.active_retries == 1
    blockers = [u.begin_try(BalancerHandle()) for _ in range(2)]
    assert all(t is not None for t in blockers)
    assert u.begin_try(handle) is None and handle.overloaded  # ...which is refused
    assert budget.active_retries == 0  # the refused retry's slot went back
    for t in blockers:
        assert t is not None
        t.end(False, 200)
    assert requests_of(u) == {}


@settings(max_examples=200, deadline=None)
@given(
    algorithm=st.sampled_from(["round-robin", "least-connections", "consistent-hashing", "latency"]),
    cap=st.integers(min_value=1, max_value=3),
    ops=st.lists(st.tuples(st.booleans(), st.integers(min_value=0, max_value=50)), max_size=60),
)
def test_requests_never_pass_the_cap_and_a_try_is_refused_only_when_all_are_at_it(
    algorithm: str, cap: int, ops: list[tuple[bool, int]]
) -> None:
    """The rule: per address, tries in flight <= max_requests; a begin_try fails only
    when every address is at the cap; after every try ended, every count is 0."""
    addresses = (A, B, C)
    u = upstream(OverloadCaps(max_requests=cap), algorithm=algorithm, addresses=addresses)
    open_tries: list[Try] = []
    for start, n in ops:
        if start or not open_tries:
            handle = BalancerHandle(str(n).encode())
            t = u.begin_try(handle)
            counts = requests_of(u)
            if t is None:
                assert handle.overloaded
                assert all(counts.get(a.key, 0) == cap for a in addresses)
            else:
                open_tries.append(t)
            assert all(n <= cap for n in counts.values())
        else:
            open_tries.pop(n % len(open_tries)).end(n % 2 == 0, 200)
    for t in open_tries:
        t.end(False, 200)
    assert requests_of(u) == {}


# ------------------------------------------------------- connections and pending


class FakeConn:
    """A stand-in for an upstream connection in these unit tests of the counting only
    (the proxy's real connections are exercised in tests/integration/test_overload_caps.py)."""

    def __init__(self, pool_key: str, usable: bool = True) -> None:
        self.pool_key = pool_key
        self.usable = usable

    def is_usable(self) -> bool:
        return self.usable


def wait(load: TargetLoad, key: str, recycle: Any) -> Any:
    """A pending try's wait, as the proxy runs it (its ticket taken at admission)."""
    return load.wait_turn(key, recycle, 1, PendingTicket(load))


def guard(**caps: int) -> OverloadGuard:
    g = OverloadGuard.carried_over(OverloadCaps(**caps), "u1", None)
    assert g is not None
    return g


def test_admission_opens_up_to_max_connections_then_waits_then_overflows() -> None:
    g = guard(max_connections=2, max_pending_requests=1)
    load = g.load(A.key)
    assert [g.admit_connection(load) for _ in range(2)] == [OPEN, OPEN]
    assert load.connections == 2
    assert g.admit_connection(load) == WAIT
    load.pending = 1  # one try is waiting
    assert g.admit_connection(load) == OVERFLOW
    assert load.connections == 2


def test_tries_admitted_to_wait_in_one_loop_turn_count_against_max_pending_requests() -> None:
    g = guard(max_connections=1, max_pending_requests=2)
    load = g.load(A.key)
    assert g.admit_connection(load) == OPEN
    # The proxy takes a ticket as soon as a try is admitted to wait, before its task
    # runs: the next admissions see it.
    tickets = []
    for _ in range(2):
        assert g.admit_connection(load) == WAIT
        tickets.append(PendingTicket(load))
    assert g.admit_connection(load) == OVERFLOW
    for ticket in tickets:
        ticket.release()
        ticket.release()  # once only
    assert load.pending == 0


async def test_a_task_cancelled_before_it_ran_gives_back_its_slot_and_ticket() -> None:
    load = TargetLoad(A.key)
    load.connections = 1  # what admit_connection counted for the slot
    slot, ticket = ConnectionSlot(load), PendingTicket(load)

    async def never_runs() -> None:
        raise AssertionError("the coroutine body never starts")

    for owed in (slot.release, ticket.release):
        task = asyncio.get_running_loop().create_task(never_runs())
        task.add_done_callback(owed)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert load.connections == 0 and load.pending == 0
    # A slot the connection took is the connection's to release, not the task's.
    load.connections = 1
    taken = ConnectionSlot(load)
    assert taken.take() is load
    taken.release()
    assert load.connections == 1


def test_without_max_pending_requests_the_wait_is_unbounded() -> None:
    g = guard(max_connections=1)
    load = g.load(A.key)
    assert g.admit_connection(load) == OPEN
    load.pending = 10_000
    assert g.admit_connection(load) == WAIT


async def test_a_released_connection_goes_to_the_oldest_waiter_for_its_pool_key() -> None:
    load = TargetLoad(A.key)
    load.connections = 1
    recycled: list[Any] = []
    first = asyncio.create_task(wait(load, "k", recycled.append))
    second = asyncio.create_task(wait(load, "k", recycled.append))
    other_key = asyncio.create_task(wait(load, "tls/k", recycled.append))
    await asyncio.sleep(0)
    assert load.pending == 3
    conn = FakeConn("k")
    assert load.hand_over(conn)
    assert await first is conn
    assert load.pending == 2 and len(load.waiters) == 2
    assert not load.hand_over(FakeConn("k", usable=False))  # a closing one is not handed
    # A connection closing frees its slot for the oldest waiter (any pool key).
    load.release_connection()
    assert await second is None  # the slot is reserved for it
    assert load.connections == 1
    other_key.cancel()
    with pytest.raises(asyncio.CancelledError):
        await other_key
    assert load.pending == 0 and not load.waiters and recycled == []


async def test_a_cancelled_waiter_gives_back_what_it_was_given_meanwhile() -> None:
    load = TargetLoad(A.key)
    load.connections = 1
    recycled: list[Any] = []
    got_slot = asyncio.create_task(wait(load, "k", recycled.append))
    await asyncio.sleep(0)
    load.release_connection()  # the slot passes to the waiter...
    got_slot.cancel()  # ...which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await got_slot
    assert load.connections == 0  # the slot was released, not leaked
    load.connections = 1
    got_conn = asyncio.create_task(wait(load, "k", recycled.append))
    await asyncio.sleep(0)
    conn = FakeConn("k")
    assert load.hand_over(conn)
    got_conn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await got_conn
    assert recycled == [conn]  # the connection went back (to the pool or a waiter)
    assert load.pending == 0 and load.idle() is False and load.connections == 1


async def test_a_handed_connection_that_closed_before_the_waiter_ran_is_not_used() -> None:
    load = TargetLoad(A.key)
    load.connections = 1
    waiter = asyncio.create_task(wait(load, "k", lambda _c: None))
    await asyncio.sleep(0)
    conn = FakeConn("k")
    assert load.hand_over(conn)
    conn.usable = False  # the target closed it before the waiter ran...
    load.connections -= 1  # ...and its slot was released (no other waiter)
    assert await waiter is None  # the free slot is taken instead
    assert load.connections == 1 and load.pending == 0

    # With the slot taken by someone else meanwhile, the wait goes on.
    waiter = asyncio.create_task(wait(load, "k", lambda _c: None))
    await asyncio.sleep(0)
    closed = FakeConn("k")
    assert load.hand_over(closed)
    closed.usable = False
    await asyncio.sleep(0)
    assert not waiter.done() and load.pending == 1  # waiting again
    fresh = FakeConn("k")
    assert load.hand_over(fresh)
    assert await waiter is fresh
    assert load.pending == 0


async def test_a_waiter_timing_out_leaves_the_queue() -> None:
    load = TargetLoad(A.key)
    load.connections = 1
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0):
            await wait(load, "k", lambda _c: None)
    assert load.pending == 0 and not load.waiters
    load.release_connection()
    assert load.connections == 0 and load.idle()


# ------------------------------------------------------------------- compiling


def entity(**fields: Any) -> dict[str, Any]:
    return {"id": "u1", "name": "backends", **fields}


def test_compile_upstream_reads_the_caps() -> None:
    u = compile_upstream(entity(max_connections=3, max_pending_requests=2, max_requests=7), [], None)
    assert u.overload is not None
    assert u.overload.caps == OverloadCaps(3, 2, 7)
    assert compile_upstream(entity(), [], None).overload is None


def test_a_new_config_version_keeps_the_counts_of_tries_in_flight() -> None:
    old = compile_upstream(entity(max_requests=2), [], None)
    assert old.overload is not None
    old.overload.load(A.key).requests = 2
    new = compile_upstream(entity(max_requests=5), [], old)
    assert new.overload is not None and new.overload.caps.max_requests == 5
    assert new.overload.load(A.key).requests == 2


@pytest.mark.parametrize("field", ["max_connections", "max_pending_requests", "max_requests"])
@pytest.mark.parametrize("value", [-1, 2**31, 1.5, "3", True])
def test_compile_upstream_refuses_a_cap_it_cannot_apply(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        compile_upstream(entity(**{field: value}), [], None)


# --------------------------------------------------------------------- metrics


def test_overflows_are_counted_merged_across_workers_and_exported() -> None:
    import json

    from prometheus_client import generate_latest

    from data_plane.cluster_client import ClusterLinkState
    from data_plane.metrics_export import DataPlaneCollector, metrics_registry
    from data_plane.request_metrics import RequestMetrics, merge_snapshots
    from data_plane.runtime import ConfigHolder

    one, two = RequestMetrics(), RequestMetrics()
    assert "overflows" not in one.snapshot(0)  # nothing refused: the snapshot is as before
    one.count_overflow("shop", "max_requests")
    one.count_overflow("shop", "max_requests")
    two.count_overflow("shop", "max_requests")
    two.count_overflow("cart", "max_pending_requests")
    merged = merge_snapshots([json.loads(json.dumps(one.snapshot(0))), two.snapshot(0)])
    assert sorted(merged["overflows"]) == [["cart", "max_pending_requests", 1], ["shop", "max_requests", 3]]
    restarted = RequestMetrics()
    restarted.restore(one.snapshot(0))
    assert restarted.overflows == {("shop", "max_requests"): 2}

    collector = DataPlaneCollector(ConfigHolder(), ClusterLinkState(), lambda: merged)
    text = generate_latest(metrics_registry(collector)).decode()
    assert 'ferry_upstream_overflow_total{cap="max_requests",upstream="shop"} 3.0' in text
    assert 'ferry_upstream_overflow_total{cap="max_pending_requests",upstream="cart"} 1.0' in text
