"""The failover bench's outlier case: totals per configuration and its goal."""

from __future__ import annotations

from typing import Any

from bench.failover_bench import OUTLIER_CASES, WITH_OUTLIER, _outlier_summary
from data_plane.health.settings import compile_health_settings


def result(errors: int, requests: int = 1000) -> dict[str, Any]:
    return {
        "client_errors": errors,
        "requests": requests,
        "errors_after_kill": {"HTTP 500": errors},
        "requests_after_kill": requests // 2,
    }


def test_the_goal_is_met_only_with_fewer_errors_than_every_passive_only_configuration() -> None:
    cases = {
        "passive_connection_failures": [result(300), result(320)],
        "passive_http_failures": [result(90), result(80)],
        "with_outlier_detection": [result(60), result(100)],
    }
    summary = _outlier_summary(cases)
    assert summary["passive_http_failures"]["client_errors_total"] == 170
    assert summary["with_outlier_detection"]["errors_after_failing_total"] == 160
    assert summary["with_outlier_detection"]["requests_after_failing_total"] == 1000
    assert summary["goal_met"]
    cases["with_outlier_detection"] = [result(90), result(80)]
    assert not _outlier_summary(cases)["goal_met"]


def test_the_outlier_configuration_is_one_a_data_plane_accepts_and_the_last_case() -> None:
    assert OUTLIER_CASES[-1] == ("with_outlier_detection", WITH_OUTLIER)
    settings = compile_health_settings(WITH_OUTLIER)
    assert settings.passive.outlier is not None and settings.passive.outlier.interval == 0.5
