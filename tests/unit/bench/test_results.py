"""The results files: bench/results/<UTC timestamp>.json and latest.json."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from bench.results import merge_latest, timestamp, write_results

MACHINE = {"cpu_model": "Xeon", "cores": 2, "kernel": "6.1", "nginx": "nginx/1.22.1"}
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)


def run(results: dict[str, Any], machine: dict[str, Any] = MACHINE) -> dict[str, Any]:
    return {"machine": machine, "results": results}


def read(path: Path) -> Any:
    return json.loads(path.read_text())


def test_timestamp_is_utc() -> None:
    local = datetime(2025, 3, 1, 14, 5, 9, tzinfo=timezone(timedelta(hours=2)))
    assert timestamp(local) == "20250301T120509Z"


def test_writes_stamped_and_latest(tmp_path: Path) -> None:
    results = tmp_path / "results"
    payload = {**run({"proxy": {"ratio": 0.8}}), "dir": Path("/x")}
    stamped, latest = write_results(results, payload, T0)
    assert stamped == results / "20250301T120000Z.json"
    assert latest == results / "latest.json"
    assert read(stamped) == {"machine": MACHINE, "results": {"proxy": {"ratio": 0.8}}, "dir": "/x"}
    assert read(latest) == {**read(stamped), "results_from": {"proxy": "20250301T120000Z.json"}}
    assert sorted(p.name for p in results.iterdir()) == ["20250301T120000Z.json", "latest.json"]


def test_latest_keeps_the_scenarios_a_run_did_not_run(tmp_path: Path) -> None:
    write_results(tmp_path, run({"proxy": {"n": 1}, "failover": {"n": 1}}), T0)
    write_results(tmp_path, run({"proxy": {"n": 2}}), T0 + timedelta(minutes=5))
    latest = read(tmp_path / "latest.json")
    assert latest["results"] == {"proxy": {"n": 2}, "failover": {"n": 1}}
    assert latest["results_from"] == {"proxy": "20250301T120500Z.json", "failover": "20250301T120000Z.json"}
    # Each timestamped file holds its own run only.
    assert read(tmp_path / "20250301T120500Z.json")["results"] == {"proxy": {"n": 2}}
    assert read(tmp_path / "20250301T120000Z.json")["results"]["proxy"] == {"n": 1}
    # A third run keeps naming where the oldest figures came from.
    write_results(tmp_path, run({"scale": {"n": 3}}), T0 + timedelta(minutes=9))
    assert read(tmp_path / "latest.json")["results_from"] == {
        "scale": "20250301T120900Z.json", "proxy": "20250301T120500Z.json",
        "failover": "20250301T120000Z.json",
    }


def test_latest_drops_figures_of_another_machine() -> None:
    previous = {**run({"failover": {"n": 1}}, {**MACHINE, "cores": 8}), "results_from": {"failover": "old.json"}}
    merged = merge_latest(previous, run({"proxy": {"n": 2}}), "new.json")
    assert merged["results"] == {"proxy": {"n": 2}}
    assert merged["results_from"] == {"proxy": "new.json"}


def test_a_damaged_latest_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("{not json")
    write_results(tmp_path, run({"proxy": {"n": 1}}), T0)
    assert read(tmp_path / "latest.json")["results"] == {"proxy": {"n": 1}}


def test_non_finite_numbers_become_null(tmp_path: Path) -> None:
    _, latest = write_results(tmp_path, {"a": float("nan"), "b": [float("inf"), 1.5], "c": (1, 2)}, T0)
    assert read(latest) == {"a": None, "b": [None, 1.5], "c": [1, 2], "results": {}, "results_from": {}}
