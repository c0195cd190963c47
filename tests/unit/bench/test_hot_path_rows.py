"""The proxy benchmark's two Ferry rows: which data planes it starts and how it checks
and describes each one's ``/status`` ``hot_path`` block (no processes started)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.proxy_bench import FERRY_DATA_PLANES, SCENARIOS, check_hot_paths, describe_hot_paths
from data_plane.hot_path import NO_EXTENSIONS_ENV, HotPath


def block(mode: str, reason: str | None = None) -> dict[str, Any]:
    return HotPath(mode, reason).as_json()  # type: ignore[arg-type]


def test_every_data_plane_is_a_scenario_and_only_ferry_python_opts_out() -> None:
    assert set(FERRY_DATA_PLANES) <= set(SCENARIOS)
    assert FERRY_DATA_PLANES["ferry"][1:] == ({}, "compiled")
    # Spelled out in bench (importing data_plane would pick a path for the harness): keep in step.
    assert FERRY_DATA_PLANES["ferry-python"][1:] == ({NO_EXTENSIONS_ENV: "1"}, "python")
    hostnames = [hostname for hostname, _, _ in FERRY_DATA_PLANES.values()]
    assert len(set(hostnames)) == len(hostnames)  # the control plane tells them apart by hostname


def test_the_expected_paths_give_no_warning() -> None:
    hot_paths = {"ferry": block("compiled"), "ferry-python": block("python", f"{NO_EXTENSIONS_ENV} is set")}
    assert check_hot_paths(hot_paths) == []
    assert describe_hot_paths(hot_paths) == (
        f"ferry compiled (mypyc, {len(block('compiled')['modules'])} modules); "
        "ferry-python python (FERRY_NO_EXTENSIONS is set)"
    )


def test_a_missing_build_is_a_warning_not_a_failure() -> None:
    reason = "data_plane.proxy.client is not compiled"
    warnings = check_hot_paths({"ferry": block("python", reason), "ferry-python": block("python", "set")})
    assert len(warnings) == 1
    assert "Ferry DP, compiled (bench-dp) runs the python hot path" in warnings[0]
    assert reason in warnings[0] and "NOT the compiled path's" in warnings[0]


def test_no_hot_path_block_is_a_warning() -> None:
    warnings = check_hot_paths({"ferry": None, "ferry-python": None})
    assert len(warnings) == 2 and all("no hot_path block" in w for w in warnings)
    assert describe_hot_paths({"ferry": None}) == "ferry unknown (no hot_path in /status)"


def test_a_compiled_pure_python_row_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="FERRY_NO_EXTENSIONS=1 but reports hot_path.mode 'compiled'"):
        check_hot_paths({"ferry": block("compiled"), "ferry-python": block("compiled")})


def test_render_marks_a_row_on_another_path_than_its_label() -> None:
    from bench.proxy_bench import compute_ratios, goals, render, summarize

    peak = summarize([
        {"scenario": name, "round": 1, "requests_per_s": 10_000, "p50_ms": 1.0, "p99_ms": 2.0, "errors": 0,
         "proxy_cpu_us_per_request": 40.0, "proxy_cpu_fraction": 0.99, "proxy_core_us_per_request": 45.0,
         "proxy_core_busy_fraction": 0.99, "load_core_busy_fraction": 0.9, "backends_cpu_us_per_request": 5.0}
        for name in SCENARIOS
    ])
    ratios = compute_ratios(peak, {})

    def rendered(hot_paths: dict[str, Any]) -> str:
        return render({
            "settings": {"rounds": 1, "duration_s": 3.0, "connections": 50, "body_bytes": 16384,
                         "proxy_core": 0, "load_core": 1},
            "peak": {"summary": peak}, "ratios": ratios, "goals": goals(ratios, {}),
            "features": {"passive_health_checks": "on", "metrics": "on"}, "hot_paths": hot_paths, "warnings": [],
        })

    stale = rendered({"ferry": block("python", "base.py changed since it was compiled (rebuild)"),
                      "ferry-python": block("python", "set")})
    assert "Ferry DP, compiled (!)  " in stale and "Ferry DP, pure Python (!)" not in stale
    assert "(!): that data plane runs another hot path" in stale
    fine = rendered({"ferry": block("compiled"), "ferry-python": block("python", "set")})
    assert "(!)" not in fine


def test_render_shows_the_peak_with_every_request_different() -> None:
    from bench.proxy_bench import VARIED_SCENARIOS, compute_ratios, goals, render, summarize

    def row(name: str, us: float) -> dict[str, Any]:
        return {"scenario": name, "round": 1, "requests_per_s": 10_000, "p50_ms": 1.0, "p99_ms": 2.0,
                "errors": 0, "proxy_cpu_us_per_request": us, "proxy_cpu_fraction": 0.99,
                "proxy_core_us_per_request": us, "proxy_core_busy_fraction": 0.99,
                "load_core_busy_fraction": 0.9, "backends_cpu_us_per_request": 5.0}

    peak = summarize([row(name, 20.0) for name in SCENARIOS])
    varied = summarize([row("nginx", 16.0), row("ferry", 25.0)])
    assert set(varied) == set(VARIED_SCENARIOS)
    ratios = compute_ratios(peak, {})
    text = render({
        "settings": {"rounds": 1, "duration_s": 3.0, "connections": 50, "body_bytes": 16384,
                     "proxy_core": 0, "load_core": 1},
        "peak": {"summary": peak}, "peak_varied": {"summary": varied, "cpu_efficiency": 16.0 / 25.0},
        "ratios": ratios, "goals": goals(ratios, {}),
        "features": {"passive_health_checks": "on", "metrics": "on"}, "hot_paths": {}, "warnings": [],
    })
    assert "every request a different target" in text
    assert "Ferry/nginx CPU efficiency with every request different: 0.64" in text
