"""Envoy's retry budget: max(min_retry_concurrency, percent of active requests)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from data_plane.retry_budget import RetryBudget
from data_plane.runtime import ConfigError, compile_config


def test_min_retry_concurrency_when_quiet() -> None:
    budget = RetryBudget(20)
    budget.request_started()
    assert [budget.try_start_retry() for _ in range(4)] == [True, True, True, False]
    budget.retry_ended()
    assert budget.try_start_retry() is True


def test_percent_of_active_requests() -> None:
    budget = RetryBudget(25)
    for _ in range(40):
        budget.request_started()
    assert budget.allowed_retries() == 10
    assert sum(budget.try_start_retry() for _ in range(20)) == 10
    for _ in range(20):
        budget.request_ended()
    # 20 active -> 5 allowed, 10 already running: none more until they end.
    assert not budget.try_start_retry()
    for _ in range(6):
        budget.retry_ended()
    assert budget.active_retries == 4 and budget.try_start_retry()


def test_zero_percent_still_allows_the_minimum_and_custom_minimum() -> None:
    budget = RetryBudget(0)
    for _ in range(100):
        budget.request_started()
    assert sum(budget.try_start_retry() for _ in range(10)) == 3
    none_at_all = RetryBudget(0, min_retry_concurrency=0)
    none_at_all.request_started()
    assert not none_at_all.try_start_retry()


def test_counters_never_negative() -> None:
    budget = RetryBudget(50)
    budget.request_ended()
    budget.retry_ended()
    assert (budget.active_requests, budget.active_retries) == (0, 0)


@pytest.mark.parametrize("percent", [-1, 101, float("nan"), True])
def test_invalid_percent(percent: Any) -> None:
    with pytest.raises(ValueError):
        RetryBudget(percent)


def entities(percent: Any) -> dict[str, list[dict[str, Any]]]:
    return {
        "upstreams": [{"id": "u", "name": "up", "retry_budget_percent": percent}],
        "targets": [{"id": "t", "target": "10.0.0.1:80", "upstream": {"id": "u"}}],
        "services": [{"id": "s", "host": "up"}],
    }


def test_compiled_per_upstream_and_kept_across_versions() -> None:
    assert compile_config(1, "a", entities(None)).upstreams["u"].retry_budget is None
    first = compile_config(1, "a", entities(20))
    budget = first.upstreams["u"].retry_budget
    assert budget is not None and budget.percent == 20.0
    assert first.services["s"].upstream is first.upstreams["u"]
    budget.request_started()
    changed = copy.deepcopy(entities(20))
    changed["targets"][0]["weight"] = 5
    second = compile_config(2, "b", changed, previous=first)
    assert second.upstreams["u"].retry_budget is budget  # counts of requests in flight kept
    third = compile_config(3, "c", entities(30), previous=second)
    assert third.upstreams["u"].retry_budget is not budget


@pytest.mark.parametrize("percent", [-1, 100.5, "10", True])
def test_compile_refuses_invalid_percent(percent: Any) -> None:
    with pytest.raises(ConfigError, match="retry_budget_percent"):
        compile_config(1, "a", entities(percent))
