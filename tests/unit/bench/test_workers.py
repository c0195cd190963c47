"""The workers scenario's pure helpers: process roles, the workers' spread, the
nginx config, summaries and the 2-vs-1 ratios (no processes started)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench.proxy_bench import nginx_proxy_conf
from bench.workers_bench import (
    VARIANTS,
    nginx_workers_conf,
    parse_context_switches,
    parse_cpu_list,
    per_round_ratio,
    process_role,
    render,
    role_names,
    scaling,
    summarize,
    worker_spread,
)

PY = "/work/.venv/bin/python"


def test_process_role() -> None:
    assert process_role(10, 10, [PY, "/work/.venv/bin/ferry", "data-plane", "--workers", "2"]) == "node"
    worker = [PY, "-m", "ferry", "data-plane-worker", "--hub", "/d/workers.sock", "--index", "1"]
    assert process_role(10, 11, worker) == "worker 1"
    assert process_role(10, 12, [PY, "-m", "ferry", "data-plane-worker", "--index"]) == "worker ?"
    assert process_role(20, 20, ["nginx: master process /usr/sbin/nginx -p /x/"]) == "master"
    assert process_role(20, 21, ["nginx: worker process"]) == "worker"
    assert process_role(20, 22, ["nginx: cache manager process"]) == "other"
    assert process_role(20, 23, []) == "other"


def test_role_names_numbers_nginx_workers_by_pid() -> None:
    assert role_names({20: "master", 31: "worker", 25: "worker"}) == {
        20: "master", 25: "worker 0", 31: "worker 1",
    }
    ferry = {10: "node", 11: "worker 1", 12: "worker 0"}
    assert role_names(ferry) == ferry


def test_worker_spread_both_served() -> None:
    spread = worker_spread({"node": 0.05, "worker 0": 4.0, "worker 1": 6.0}, wall_s=10.0)
    assert spread["workers"] == 2
    assert spread["share"] == {"worker 0": 0.4, "worker 1": 0.6}
    assert spread["cores"] == {"worker 0": 0.4, "worker 1": 0.6}
    assert spread["min_share"] == 0.4
    assert spread["all_served"] is True


def test_worker_spread_one_idle_or_too_little() -> None:
    # One worker did almost nothing: the node's CPU does not count as a worker's.
    lopsided = worker_spread({"node": 5.0, "worker 0": 9.5, "worker 1": 0.5}, wall_s=10.0)
    assert lopsided["all_served"] is False
    assert lopsided["min_share"] == 0.05
    # An even split of next to nothing is not "served" either (0.02 of a core each).
    assert worker_spread({"worker 0": 0.2, "worker 1": 0.2}, wall_s=10.0)["all_served"] is False
    assert worker_spread({"worker 0": 0.0, "worker 1": 0.0}, wall_s=10.0)["all_served"] is False


def test_worker_spread_single_process_has_nothing_to_check() -> None:
    assert worker_spread({"node": 9.9}, wall_s=10.0) == {
        "workers": 0, "cpu_s": {}, "share": {}, "cores": {}, "min_share": None, "all_served": None,
    }
    assert worker_spread({"master": 0.0, "worker 0": 9.0}, wall_s=10.0)["all_served"] is None


def test_nginx_workers_conf(tmp_path: Path) -> None:
    conf = nginx_proxy_conf(tmp_path, 8080, [9001, 9002])
    assert nginx_workers_conf(conf, 1) == conf
    two = nginx_workers_conf(conf, 2)
    assert "worker_processes 2;" in two and "worker_processes 1;" not in two
    assert "listen 127.0.0.1:8080 backlog=4096 reuseport;" in two
    assert two.count("reuseport") == 1
    with pytest.raises(ValueError, match="no longer has"):
        nginx_workers_conf("worker_processes auto;", 2)


def test_parse_cpu_list() -> None:
    assert parse_cpu_list("0-1") == {0, 1}
    assert parse_cpu_list("0") == {0}
    assert parse_cpu_list("0-2,5,7-8") == {0, 1, 2, 5, 7, 8}
    assert parse_cpu_list("") == set()


STATUS = """Name:\tpython
State:\tR (running)
Threads:\t2
Cpus_allowed_list:\t0-1
voluntary_ctxt_switches:\t1234
nonvoluntary_ctxt_switches:\t56789
"""


def test_parse_context_switches() -> None:
    assert parse_context_switches(STATUS) == (1234, 56789)
    assert parse_context_switches("Name:\tx\n") == (0, 0)


def run(variant: str, round_: int, rps: float, us: float, *, p99: float = 2.0, cores: float = 1.0,
        roles: dict[str, float] | None = None, errors: int = 0, min_share: float | None = None) -> dict[str, Any]:
    return {
        "variant": variant, "round": round_, "requests_per_s": rps, "p50_ms": p99 / 2, "p99_ms": p99,
        "errors": errors, "proxy_cpu_us_per_request": us,
        "proxy_cpu_us_per_request_by_role": roles or {"node": us},
        "proxy_cores": cores, "proxy_machine_share": cores / 2, "machine_busy_share": 0.9,
        "wrk_cores": 0.4, "backends_cores": 0.3,
        "worker_spread": {"min_share": min_share}, "foreign_cpu_cores": 0.0,
    }


RUNS = [
    run("ferry-1", 1, 20_000, 45.0), run("ferry-1", 2, 24_000, 42.0), run("ferry-1", 3, 22_000, 43.0),
    run("ferry-2", 1, 30_000, 36.0, cores=1.2, p99=5.0, min_share=0.45,
        roles={"node": 0.1, "worker 0": 17.0, "worker 1": 19.0}),
    run("ferry-2", 2, 36_000, 35.0, cores=1.3, p99=6.0, min_share=0.48,
        roles={"node": 0.2, "worker 0": 18.0, "worker 1": 17.0}),
    run("ferry-2", 3, 33_000, 37.0, cores=1.1, p99=4.0, min_share=0.40,
        roles={"node": 0.1, "worker 0": 18.0, "worker 1": 19.0}, errors=3),
    run("nginx-1", 1, 60_000, 15.0), run("nginx-1", 2, 62_000, 15.0), run("nginx-1", 3, 61_000, 16.0),
    run("nginx-2", 1, 63_000, 16.0), run("nginx-2", 2, 62_000, 16.0),
]


def test_summarize_takes_medians_per_variant() -> None:
    summary = summarize(RUNS)
    assert list(summary) == list(VARIANTS)
    two = summary["ferry-2"]
    assert (two["runs"], two["requests_per_s"], two["requests_per_s_min"], two["requests_per_s_max"]) == (
        3, 33_000, 30_000, 36_000)
    assert two["proxy_cpu_us_per_request"] == 36.0
    assert two["proxy_cpu_us_per_request_by_role"] == {"node": 0.1, "worker 0": 18.0, "worker 1": 19.0}
    assert two["p99_ms"] == 5.0 and two["proxy_cores"] == 1.2 and two["worker_min_share"] == 0.45
    assert two["errors"] == 3 and summary["ferry-1"]["errors"] == 0
    assert summary["ferry-1"]["worker_min_share"] is None
    assert summary["nginx-2"]["runs"] == 2


def test_per_round_ratio_pairs_runs_of_the_same_round() -> None:
    assert per_round_ratio(RUNS, "ferry-2", "ferry-1") == [1.5, 1.5, 1.5]
    # nginx-2 has no round 3: only rounds with both count.
    assert per_round_ratio(RUNS, "nginx-2", "nginx-1") == [1.05, 1.0]
    assert per_round_ratio(RUNS, "ferry-2", "nope") == []


def test_scaling() -> None:
    sc = scaling(summarize(RUNS), RUNS)
    assert sc["ferry"]["throughput"] == pytest.approx(33_000 / 22_000)
    assert sc["ferry"]["throughput_per_round"] == [1.5, 1.5, 1.5]
    assert sc["ferry"]["cpu_us_per_request"] == pytest.approx(36.0 / 43.0)
    assert sc["ferry"]["cores"] == pytest.approx(1.2)
    assert sc["ferry"]["p99"] == pytest.approx(2.5)
    assert sc["nginx"]["throughput"] == pytest.approx(62_500 / 61_000)
    assert sc["ferry_2_vs_nginx_2"]["cpu_efficiency"] == pytest.approx(16.0 / 36.0)
    assert sc["ferry_2_vs_nginx_2"]["throughput"] == pytest.approx(33_000 / 62_500)
    empty = scaling({}, [])
    assert empty["ferry"]["throughput"] is None and empty["ferry"]["throughput_per_round"] == []


def test_render_says_unpinned_and_shows_every_variant() -> None:
    summary = summarize(RUNS)
    spread = {"workers": 2, "cpu_s": {"worker 0": 1.0, "worker 1": 1.2}, "share": {"worker 0": 0.45, "worker 1": 0.55},
              "cores": {}, "min_share": 0.45, "all_served": True}
    result = {
        "settings": {"rounds": 3, "duration_s": 10.0, "wrk_threads": 2, "connections": 50, "body_bytes": 16384,
                     "cores": 2},
        "peak": {"summary": summary, "runs": RUNS},
        "checks": {"worker_spread": {"ferry-2": spread, "nginx-2": dict(spread, all_served=False)}},
        "scaling": scaling(summary, RUNS),
        "warnings": ["something"],
    }
    text = render(result)
    assert "UNPINNED" in text and "wrk -t2 -c50" in text
    for label in ("Ferry DP --workers 1", "Ferry DP --workers 2", "nginx (1 worker)", "nginx (2 workers)"):
        assert label in text
    assert "req/s 1.50×" in text
    assert "→ OK" in text and "→ NOT BOTH" in text
    assert "WARNING: something" in text
