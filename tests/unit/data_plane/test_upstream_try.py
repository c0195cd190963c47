"""The upstream's door (data_plane/upstream_try.py): every try settles what it owes the
balancer, the health checker and the retry budget exactly once, whatever ends it."""

from __future__ import annotations

import asyncio
from typing import Any

from data_plane.balancers import Address, BalancerHandle, create_balancer
from data_plane.balancers.least_connections import LeastConnectionsBalancer
from data_plane.health.checker import HealthChecker
from data_plane.health.settings import compile_health_settings
from data_plane.retry_budget import RetryBudget
from data_plane.runtime import CompiledUpstream
from data_plane.upstream_try import end_request

A = Address("10.0.0.1", 80)
B = Address("10.0.0.2", 80)


def upstream(
    algorithm: str = "round-robin",
    healthchecks: dict[str, Any] | None = None,
    budget: RetryBudget | None = None,
) -> CompiledUpstream:
    balancer = create_balancer(algorithm, [A, B])
    compiled = CompiledUpstream(
        id="u1", name="u1", algorithm=algorithm, host_header=None, balancer=balancer,
        targets=(A, B), retry_budget=budget,
    )
    settings = compile_health_settings(healthchecks)
    compiled.attach_health(HealthChecker("u1", settings, balancer, target_ids={}))
    return compiled


def in_flight(u: CompiledUpstream) -> dict[str, int]:
    balancer = u.balancer
    assert isinstance(balancer, LeastConnectionsBalancer)
    counts = {a.key: balancer.in_flight(a.key) for a in (A, B)}
    return {key: n for key, n in counts.items() if n}


def test_a_try_ends_its_in_flight_count_exactly_once() -> None:
    u = upstream("least-connections")
    tries = [u.begin_try(BalancerHandle()) for _ in range(3)]
    assert all(t is not None for t in tries)
    counts = in_flight(u)
    assert sorted(counts.values()) == [1, 2]
    busy = next(key for key, n in counts.items() if n == 2)
    t = next(t for t in tries if t is not None and t.address.key == busy)
    t.end(False, 200)
    t.end(False, 200)  # a second end settles nothing
    assert in_flight(u)[busy] == 1


def test_a_passive_failure_reaches_the_health_checker_once() -> None:
    u = upstream(healthchecks={"passive": {"unhealthy": {"tcp_failures": 2}, "base_ejection_time": 0}})
    assert u.health is not None
    t = u.begin_try(BalancerHandle())
    assert t is not None
    t.end(True)
    t.end(True)
    assert u.health.state_of(t.address) == "HEALTHY"  # one failure of two counted, not two
    again = u.begin_try(BalancerHandle())
    assert again is not None
    (again if again.address == t.address else t).end(True)
    u.health.report_passive(t.address, True, False, 0)
    assert u.health.state_of(t.address) == "UNHEALTHY"


def test_below_the_threshold_no_try_begins_and_a_retry_slot_goes_back() -> None:
    budget = RetryBudget(0, min_retry_concurrency=1)
    u = upstream(
        healthchecks={"threshold": 60, "passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}},
        budget=budget,
    )
    assert u.health is not None
    handle = BalancerHandle()
    first = u.begin_try(handle)
    assert first is not None and budget.active_requests == 1
    first.end(True)  # 50% healthy < 60%: the upstream is below its threshold
    assert u.health.below_threshold
    assert u.allow_retry(handle) and budget.active_retries == 1
    assert u.begin_try(handle) is None
    assert budget.active_retries == 0
    end_request(handle)
    end_request(handle)
    assert (budget.active_requests, budget.active_retries) == (0, 0)


def test_a_retry_holds_its_budget_slot_until_its_try_ends() -> None:
    budget = RetryBudget(0, min_retry_concurrency=1)
    u = upstream(budget=budget)
    handle, other = BalancerHandle(), BalancerHandle()
    first = u.begin_try(handle)
    assert first is not None
    first.end(True)
    assert u.allow_retry(handle)
    second = u.begin_try(other)
    assert second is not None and u.allow_retry(other) is False  # one retry at a time
    retry = u.begin_try(handle)
    assert retry is not None and budget.active_retries == 1
    retry.end(False, 200)
    assert budget.active_retries == 0 and u.allow_retry(other)


def test_an_aborted_trial_lets_the_half_open_address_through_again() -> None:
    async def run() -> None:
        u = upstream(healthchecks={"passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0.01}})
        health = u.health
        assert health is not None

        class NeverProbe:
            async def probe(self, *args: Any, **kwargs: Any) -> Any:
                raise AssertionError("no active probes are configured")

        health.start(NeverProbe())  # type: ignore[arg-type]
        try:
            health.report_passive(A, True, False, 0)
            deadline = asyncio.get_running_loop().time() + 5
            while not health.trial_waiting:
                assert asyncio.get_running_loop().time() < deadline, "never half-open"
                await asyncio.sleep(0.005)
            trial = None
            for _ in range(4):
                t = u.begin_try(BalancerHandle())
                assert t is not None
                if t.address == A:
                    trial = t
                    break
                t.end(False, 200)
            assert trial is not None and not health.trial_waiting
            trial.end(True, aborted=True)  # the client went away: no verdict on A
            assert health.trial_waiting == {A.key} and health.state_of(A) == "UNHEALTHY"
        finally:
            await health.stop()

    asyncio.run(run())
