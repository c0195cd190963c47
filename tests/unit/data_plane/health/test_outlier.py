"""Outlier detection's decisions (Envoy's success-rate and failure-percentage rules),
the ejection cap's arithmetic, the window, and compiling
``healthchecks.passive.outlier_detection`` / ``max_ejection_percent`` on the data plane."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from data_plane.health.outlier import (
    FailurePercentageRule,
    OutlierSettings,
    OutlierWindow,
    SuccessRateRule,
    compile_outlier_detection,
    ejection_allowed,
    ejection_cause,
    find_outliers,
)
from data_plane.health.settings import compile_health_settings

SUCCESS_ONLY = OutlierSettings(
    # A factor of 1 stdev: with n hosts one lone deviant is sqrt(n - 1) stdevs from the
    # mean, so Envoy's 1.9 needs 5 hosts to ever eject one; these tests use 3.
    interval=1,
    success_rate=SuccessRateRule(minimum_hosts=3, request_volume=10, stdev_factor=1000),
    failure_percentage=None,
)
FAILURE_ONLY = OutlierSettings(
    interval=1,
    success_rate=None,
    failure_percentage=FailurePercentageRule(threshold=50, minimum_hosts=3, request_volume=10),
)

#: ``key -> (requests, failures)`` with failures <= requests.
counts_strategy = st.dictionaries(
    st.sampled_from([f"10.0.0.{i}:80" for i in range(12)]),
    st.integers(min_value=0, max_value=300).flatmap(
        lambda total: st.tuples(st.just(total), st.integers(min_value=0, max_value=total))
    ),
    max_size=12,
)


# ------------------------------------------------------------------ success rate


def test_one_host_failing_30_percent_among_healthy_ones_is_a_success_rate_outlier() -> None:
    counts = {"a": (100, 0), "b": (100, 0), "c": (100, 0), "d": (100, 0), "e": (100, 30)}
    (found,) = find_outliers(counts, OutlierSettings(failure_percentage=None))
    # mean 94, population stdev 12: the limit is 94 - 1.9 * 12 = 71.2.
    assert found.key == "e"
    assert found.reason == "outlier: success rate 70% < 71.2%"


def test_too_few_qualifying_hosts_eject_nothing() -> None:
    # Only two hosts reach the request volume of 10; three are needed.
    counts = {"a": (50, 0), "b": (50, 50), "c": (9, 0), "d": (9, 0)}
    assert find_outliers(counts, SUCCESS_ONLY) == []
    assert [o.key for o in find_outliers({**counts, "c": (10, 0)}, SUCCESS_ONLY)] == ["b"]


def test_a_host_below_the_request_volume_is_never_ejected_however_badly_it_fails() -> None:
    counts = {"a": (10, 0), "b": (10, 0), "c": (10, 0), "d": (9, 9)}
    assert find_outliers(counts, SUCCESS_ONLY) == []


@given(counts_strategy, st.integers(min_value=1, max_value=4000), st.integers(min_value=1, max_value=6))
def test_success_rate_ejects_exactly_the_hosts_below_mean_minus_factor_stdev(
    counts: dict[str, tuple[int, int]], factor: int, minimum_hosts: int
) -> None:
    rule = SuccessRateRule(minimum_hosts=minimum_hosts, request_volume=20, stdev_factor=factor)
    found = {o.key for o in find_outliers(counts, OutlierSettings(success_rate=rule, failure_percentage=None))}
    rates = {k: 100 * (t - f) / t for k, (t, f) in counts.items() if t >= 20}
    if len(rates) < minimum_hosts or not rates:
        assert found == set()
        return
    mean = sum(rates.values()) / len(rates)
    stdev = math.sqrt(sum((r - mean) ** 2 for r in rates.values()) / len(rates))
    limit = mean - factor / 1000 * stdev
    # Away from the boundary, where float rounding could go either way.
    assume(all(abs(r - limit) > 1e-6 for r in rates.values()))
    assert found == {k for k, r in rates.items() if r < limit}


@given(st.integers(min_value=1, max_value=12), st.integers(min_value=20, max_value=500), st.data())
def test_hosts_with_equal_success_rates_are_never_ejected(n: int, total: int, data: st.DataObject) -> None:
    failures = data.draw(st.integers(min_value=0, max_value=total))
    counts = {f"h{i}": (total, failures) for i in range(n)}
    rule = SuccessRateRule(minimum_hosts=1, request_volume=1, stdev_factor=1)
    assert find_outliers(counts, OutlierSettings(success_rate=rule, failure_percentage=None)) == []


@given(counts_strategy)
def test_the_best_host_is_never_a_success_rate_outlier(counts: dict[str, tuple[int, int]]) -> None:
    rule = SuccessRateRule(minimum_hosts=1, request_volume=1, stdev_factor=1)
    found = {o.key for o in find_outliers(counts, OutlierSettings(success_rate=rule, failure_percentage=None))}
    rates = {k: (t - f) / t for k, (t, f) in counts.items() if t > 0}
    best = max(rates.values(), default=None)
    assert not any(rates[k] == best for k in found)


# ------------------------------------------------------------ failure percentage


def test_failure_percentage_at_the_threshold_is_ejected_below_it_is_not() -> None:
    counts = {"a": (10, 5), "b": (10, 4), "c": (10, 0)}
    (found,) = find_outliers(counts, FAILURE_ONLY)
    assert found.key == "a"
    assert found.reason == "outlier: failure percentage 50% >= 50%"


@given(counts_strategy, st.integers(min_value=0, max_value=100), st.integers(min_value=1, max_value=6))
def test_failure_percentage_ejects_exactly_the_qualifying_hosts_at_or_above_the_threshold(
    counts: dict[str, tuple[int, int]], threshold: int, minimum_hosts: int
) -> None:
    rule = FailurePercentageRule(threshold=threshold, minimum_hosts=minimum_hosts, request_volume=15)
    found = {o.key for o in find_outliers(counts, OutlierSettings(success_rate=None, failure_percentage=rule))}
    qualified = {k: (t, f) for k, (t, f) in counts.items() if t >= 15}
    if len(qualified) < minimum_hosts:
        assert found == set()
    else:
        # Integer arithmetic: failures/total >= threshold/100.
        assert found == {k for k, (t, f) in qualified.items() if f * 100 >= threshold * t}


def test_both_rules_report_a_host_once_worst_first_with_the_success_rate_reason() -> None:
    settings = OutlierSettings(
        success_rate=SuccessRateRule(minimum_hosts=3, request_volume=10, stdev_factor=1000),
        failure_percentage=FailurePercentageRule(threshold=40, minimum_hosts=3, request_volume=10),
    )
    counts = {"a": (10, 0), "b": (10, 0), "c": (10, 0), "d": (10, 0), "e": (10, 9), "f": (10, 4)}
    found = find_outliers(counts, settings)
    assert [o.key for o in found] == ["e", "f"]
    assert found[0].reason.startswith("outlier: success rate 10% < ")
    assert found[1].reason == "outlier: failure percentage 40% >= 40%"


def test_both_rules_off_find_nothing() -> None:
    off = OutlierSettings(success_rate=None, failure_percentage=None)
    assert find_outliers({"a": (100, 100), "b": (100, 0)}, off) == []


# ------------------------------------------------------------------ window, cap


def test_the_window_counts_requests_and_failures_and_starts_over_when_taken() -> None:
    window = OutlierWindow()
    for failed in (True, False, False):
        window.record("a", failed)
    window.record("b", False)
    assert window.take() == {"a": (3, 1), "b": (1, 0)}
    assert window.take() == {}


@given(
    st.lists(st.integers(min_value=1, max_value=100), min_size=1, max_size=20),
    st.integers(min_value=0, max_value=100),
)
def test_ejecting_in_turn_under_the_cap_never_takes_out_more_than_its_share(
    weights: list[int], cap: int
) -> None:
    total, out, left_in = sum(weights), 0, []
    for weight in weights:
        if ejection_allowed(total, out, weight, cap):
            out += weight
        else:
            left_in.append(weight)
    assert out * 100 <= cap * total
    # Each target left in would have gone past the cap (it is not stricter than it says).
    assert all((out + w) * 100 > cap * total for w in left_in)


def test_ten_equal_targets_with_a_cap_of_50_allow_five_ejections() -> None:
    out = 0
    for _ in range(10):
        if ejection_allowed(1000, out, 100, 50):
            out += 100
    assert out == 500
    assert ejection_allowed(1000, 1000, 100, 100)  # 100: never capped


@pytest.mark.parametrize(
    ("reason", "cause"),
    [
        ("active: 2 http_failures (last status 500)", "active"),
        ("passive: 3 tcp_failures", "passive"),
        ("outlier: success rate 41% < 78%", "outlier"),
        ("manual", "manual"),
        ("unhealthy before the upstream was re-created", "manual"),
    ],
)
def test_the_cause_of_an_ejection_is_the_prefix_of_its_reason(reason: str, cause: str) -> None:
    assert ejection_cause(reason) == cause


# ------------------------------------------------------------------ compiling


def test_outlier_detection_is_off_by_default_and_an_empty_record_takes_envoys_defaults() -> None:
    assert compile_health_settings({}).passive.outlier is None
    assert compile_health_settings({}).max_ejection_percent == 100
    assert not compile_health_settings({}).enabled
    settings = compile_health_settings({"passive": {"outlier_detection": {}}})
    assert settings.passive.outlier == OutlierSettings(
        interval=10,
        success_rate=SuccessRateRule(minimum_hosts=5, request_volume=100, stdev_factor=1900),
        failure_percentage=FailurePercentageRule(threshold=85, minimum_hosts=5, request_volume=50),
    )
    # It needs the passive outcomes: passive reporting is on with every counter at 0.
    assert settings.passive.enabled and settings.enabled


def test_a_null_rule_is_off_and_given_values_are_kept() -> None:
    raw = {
        "interval": 0.5,
        "success_rate": None,
        "failure_percentage": {"threshold": 20, "minimum_hosts": 2, "request_volume": 7},
    }
    assert compile_outlier_detection(raw) == OutlierSettings(
        interval=0.5,
        success_rate=None,
        failure_percentage=FailurePercentageRule(threshold=20, minimum_hosts=2, request_volume=7),
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"interval": 0}, "outlier_detection.interval"),
        ({"interval": "1"}, "outlier_detection.interval"),
        ({"success_rate": {"minimum_hosts": 0}}, "outlier_detection.success_rate.minimum_hosts"),
        ({"success_rate": {"stdev_factor": 1.5}}, "outlier_detection.success_rate.stdev_factor"),
        ({"success_rate": []}, "outlier_detection.success_rate"),
        ({"failure_percentage": {"threshold": 101}}, "outlier_detection.failure_percentage.threshold"),
        ({"failure_percentage": {"request_volume": True}}, "outlier_detection.failure_percentage.request_volume"),
        ("on", "outlier_detection"),
    ],
)
def test_the_data_plane_refuses_what_it_cannot_use_naming_the_field(raw: Any, field: str) -> None:
    with pytest.raises(ValueError, match=f"'healthchecks.passive.{field}'"):
        compile_health_settings({"passive": {"outlier_detection": raw}})


@pytest.mark.parametrize("value", [-1, 101, "50", True])
def test_max_ejection_percent_must_be_between_0_and_100(value: object) -> None:
    with pytest.raises(ValueError, match="'healthchecks.max_ejection_percent'"):
        compile_health_settings({"max_ejection_percent": value})
