"""Summaries over rounds, the Ferry ratios and the goals (no processes started)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.proxy_bench import (
    SCENARIOS,
    added_p99,
    compute_ratios,
    goals,
    per_request_us,
    render,
    rotated,
    summarize,
)


def run(scenario: str, round_: int, rps: float, p99: float, us: float | None, errors: int = 0) -> dict[str, Any]:
    return {
        "scenario": scenario, "round": round_, "requests_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99,
        "errors": errors, "proxy_cpu_us_per_request": us, "proxy_cpu_fraction": None if us is None else 0.99,
        "proxy_core_us_per_request": None if us is None else us + 1, "proxy_core_busy_fraction": 0.99,
        "load_core_busy_fraction": 0.9, "backends_cpu_us_per_request": 5.0,
    }


PEAK = [
    run("direct", 1, 100_000, 0.40, None), run("direct", 2, 110_000, 0.50, None), run("direct", 3, 90_000, 0.45, None),
    run("nginx", 1, 60_000, 1.5, 15.0), run("nginx", 2, 62_000, 1.6, 16.0), run("nginx", 3, 61_000, 1.7, 14.0),
    run("haproxy", 1, 55_000, 1.8, 18.0), run("haproxy", 2, 57_000, 1.9, 17.0),
    run("haproxy", 3, 20_000, 90.0, 30.0, errors=2),
    run("ferry", 1, 30_000, 3.0, 30.0), run("ferry", 2, 31_000, 3.1, 32.0), run("ferry", 3, 29_000, 2.9, 31.0),
    run("ferry-python", 1, 20_000, 4.0, 48.0), run("ferry-python", 2, 21_000, 4.2, 50.0),
    run("ferry-python", 3, 19_000, 3.9, 52.0),
]


def test_summarize_takes_medians() -> None:
    summary = summarize(PEAK)
    assert list(summary) == list(SCENARIOS)
    assert summary["nginx"]["requests_per_s"] == 61_000
    assert summary["nginx"]["proxy_cpu_us_per_request"] == 15.0
    assert summary["haproxy"]["p99_ms"] == 1.9  # the outlier round does not move the median
    assert summary["haproxy"]["errors"] == 2
    assert summary["haproxy"]["requests_per_s_min"] == 20_000
    assert summary["direct"]["proxy_cpu_us_per_request"] is None
    assert summary["ferry"]["runs"] == 3
    assert summary["ferry-python"]["proxy_cpu_us_per_request"] == 50.0
    assert summary["ferry-python"]["label"] == "Ferry DP, pure Python"


def test_ratios_are_based_on_cpu_per_request() -> None:
    ratios = compute_ratios(summarize(PEAK), {"nginx": 0.2, "haproxy": 0.3, "ferry": 0.5})
    assert ratios["ferry_vs_nginx"]["cpu_efficiency"] == pytest.approx(15.0 / 31.0)
    assert ratios["ferry_vs_haproxy"]["cpu_efficiency"] == pytest.approx(18.0 / 31.0)
    assert ratios["ferry_vs_nginx"]["core_efficiency"] == pytest.approx(16.0 / 32.0)
    assert ratios["ferry_vs_nginx"]["throughput"] == pytest.approx(30_000 / 61_000)
    assert ratios["ferry_vs_nginx"]["added_p99_ms_difference"] == pytest.approx(0.3)


def test_ratios_of_the_pure_python_path() -> None:
    ratios = compute_ratios(summarize(PEAK), {"nginx": 0.2, "haproxy": 0.3, "ferry": 0.5, "ferry-python": 0.9})
    assert ratios["ferry_python_vs_nginx"]["cpu_efficiency"] == pytest.approx(15.0 / 50.0)
    assert ratios["ferry_python_vs_haproxy"]["cpu_efficiency"] == pytest.approx(18.0 / 50.0)
    assert ratios["ferry_python_vs_nginx"]["throughput"] == pytest.approx(20_000 / 61_000)
    assert ratios["ferry_python_vs_haproxy"]["added_p99_ms_difference"] == pytest.approx(0.6)
    paths = ratios["ferry_vs_ferry_python"]
    assert paths["cpu_efficiency"] == pytest.approx(50.0 / 31.0)  # the speed-up
    assert paths["compiled_over_python_cpu_per_request"] == pytest.approx(31.0 / 50.0)
    assert paths["core_efficiency"] == pytest.approx(51.0 / 32.0)
    assert paths["throughput"] == pytest.approx(30_000 / 20_000)
    assert paths["added_p99_ms_difference"] == pytest.approx(-0.4)


def test_ratios_with_missing_figures() -> None:
    ratios = compute_ratios({"ferry": summarize(PEAK)["ferry"]}, {})
    assert ratios["ferry_vs_nginx"]["cpu_efficiency"] is None
    assert ratios["ferry_vs_haproxy"]["added_p99_ms_difference"] is None
    assert ratios["ferry_python_vs_nginx"]["cpu_efficiency"] is None
    assert ratios["ferry_vs_ferry_python"]["compiled_over_python_cpu_per_request"] is None
    assert ratios["ferry_vs_ferry_python"]["cpu_efficiency"] is None


def test_added_p99_pairs_runs_of_the_same_round() -> None:
    half = [
        run("direct", 1, 10_000, 0.2, None), run("ferry", 1, 10_000, 0.9, 30.0), run("nginx", 1, 10_000, 0.5, 15.0),
        run("direct", 2, 10_000, 0.6, None), run("ferry", 2, 10_000, 1.0, 30.0), run("nginx", 2, 10_000, 0.8, 15.0),
        run("direct", 3, 10_000, 0.3, None), run("ferry", 3, 10_000, 0.8, 30.0),
        run("ferry-python", 3, 9_000, 1.3, 50.0),
    ]
    added = added_p99(half)
    assert added["ferry"] == pytest.approx(0.5)  # median of 0.7, 0.4, 0.5
    assert added["nginx"] == pytest.approx(0.25)  # median of 0.3, 0.2 (no nginx run in round 3)
    assert added["haproxy"] is None
    assert added["ferry-python"] == pytest.approx(1.0)


def test_goals() -> None:
    met = goals({"ferry_vs_nginx": {"cpu_efficiency": 0.8}}, {"ferry": 0.4})
    assert [g["met"] for g in met] == [True, True]
    below = goals({"ferry_vs_nginx": {"cpu_efficiency": 0.5}}, {"ferry": 1.2})
    assert [g["met"] for g in below] == [False, False]
    unknown = goals({}, {})
    assert [g["value"] for g in unknown] == [None, None]
    assert [g["met"] for g in unknown] == [False, False]


def test_per_request_us() -> None:
    assert per_request_us(2.5, 100_000) == 25.0
    assert per_request_us(1.0, 0) is None


def test_rotated() -> None:
    assert rotated(SCENARIOS, 0) == ["direct", "nginx", "haproxy", "ferry", "ferry-python"]
    assert rotated(SCENARIOS, 1) == ["nginx", "haproxy", "ferry", "ferry-python", "direct"]
    assert rotated(SCENARIOS, 6) == rotated(SCENARIOS, 1)


def test_render_shows_figures_ratios_and_goals() -> None:
    peak = summarize(PEAK)
    half_runs = [run(name, 1, 15_000, 0.5 if name == "direct" else 0.9, 20.0) for name in SCENARIOS]
    half_added = added_p99(half_runs)
    ratios = compute_ratios(peak, half_added)
    text = render({
        "settings": {"rounds": 3, "duration_s": 10.0, "connections": 50, "body_bytes": 16384,
                     "proxy_core": 0, "load_core": 1},
        "peak": {"summary": peak},
        "half_load": {"target_rps": 15_000, "think_time_ms": 2.9, "summary": summarize(half_runs),
                      "added_p99_ms": half_added},
        "ratios": ratios,
        "goals": goals(ratios, half_added),
        "features": {"passive_health_checks": "on", "metrics": "on"},
        "hot_paths": {"ferry": {"mode": "compiled", "reason": None, "compiler": "mypyc", "modules": ["a", "b"]},
                      "ferry-python": {"mode": "python", "reason": "FERRY_NO_EXTENSIONS is set",
                                       "compiler": "mypyc", "modules": ["a", "b"]}},
        "warnings": ["something to know"],
    })
    assert "Ferry DP, compiled" in text and "61,000" in text
    python_row = next(line for line in text.splitlines() if line.startswith("Ferry DP, pure Python"))
    # req/s, p50, p99, CPU µs/req, core µs/req, proxy CPU, Ferry eff. (the compiled path's speed-up), errors
    assert python_row[22:].split() == ["20,000", "2.000", "4.000", "50.0", "51.0", "99%", "1.61", "0"]
    assert "Ferry/nginx       CPU efficiency 0.48" in text
    assert "Ferry-py/nginx    CPU efficiency 0.30 (core 0.31), throughput 0.33×" in text
    assert "Ferry-py/HAProxy  CPU efficiency 0.36" in text
    assert "compiled/pure Python: CPU µs/req ratio 0.62 (speed-up 1.61×, core 1.59×), throughput 1.50×" in text
    assert "Hot paths (GET /status): ferry compiled (mypyc, 2 modules); " \
           "ferry-python python (FERRY_NO_EXTENSIONS is set)" in text
    assert "≥ 0.75: 0.48  below goal" in text
    assert "+0.400" in text and "≤ 0.5: 0.40  PASS" in text
    assert "WARNING: something to know" in text


def test_a_disturbed_run_is_measured_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import proxy_bench

    foreign = iter([0.4, 0.2, 0.3])
    monkeypatch.setattr(proxy_bench, "measure", lambda *a, **k: {"foreign_cpu_cores": next(foreign)})
    monkeypatch.setattr(proxy_bench, "DISTURBED_PAUSE_S", 0.0)
    target = proxy_bench.Target("ferry", "http://127.0.0.1:1/", None)
    best = proxy_bench.measure_undisturbed(None, target, retries=2)  # type: ignore[arg-type]
    assert best == {"foreign_cpu_cores": 0.2, "attempts": 3, "disturbed": True}

    quiet = iter([0.4, 0.01, 0.9])
    monkeypatch.setattr(proxy_bench, "measure", lambda *a, **k: {"foreign_cpu_cores": next(quiet)})
    best = proxy_bench.measure_undisturbed(None, target, retries=2)  # type: ignore[arg-type]
    assert best == {"foreign_cpu_cores": 0.01, "attempts": 2, "disturbed": False}
