"""The runner: scenario selection, modules that do not exist yet, results files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import run as runner
from bench.options import BenchOptions


def options(tmp_path: Path) -> BenchOptions:
    return BenchOptions(results_dir=tmp_path, ferry_bin=Path("ferry"), work_dir=tmp_path)


def test_parse_only() -> None:
    assert runner.parse_only(None) == ["proxy", "python-path", "workers", "propagation", "scale", "failover", "tls",
                                          "http2"]
    assert runner.parse_only("failover, proxy") == ["proxy", "failover"]
    assert runner.parse_only("failover,workers,proxy") == ["proxy", "workers", "failover"]
    with pytest.raises(argparse.ArgumentTypeError, match="nope"):
        runner.parse_only("proxy,nope")


def test_quick_shortens_unless_told_otherwise(tmp_path: Path) -> None:
    parser = runner.build_parser()
    quick = runner.build_options(parser.parse_args(["--quick"]), tmp_path)
    assert (quick.duration, quick.rounds, quick.quick) == (3.0, 1, True)
    told = runner.build_options(parser.parse_args(["--quick", "--duration", "5", "--rounds", "2"]), tmp_path)
    assert (told.duration, told.rounds) == (5.0, 2)
    default = runner.build_options(parser.parse_args([]), tmp_path)
    assert (default.duration, default.rounds, default.connections) == (10.0, 3, 50)


def test_run_module_single_and_several(tmp_path: Path) -> None:
    calls: list[str] = []

    def run_all(_: BenchOptions) -> dict[str, Any]:
        calls.append("run")
        return {"propagation": {"p": 1}, "scale": {"s": 2}}

    def run_scale(_: BenchOptions) -> dict[str, Any]:
        calls.append("run_scale")
        return {"s": 3}

    module: Any = SimpleNamespace(run=run_all, run_scale=run_scale)
    provides = ("propagation", "scale")
    opts = options(tmp_path)
    assert runner.run_module(module, ["scale"], provides, opts) == {"scale": {"s": 3}}
    assert runner.run_module(module, ["propagation", "scale"], provides, opts) == {
        "propagation": {"p": 1}, "scale": {"s": 2},
    }
    # No run_propagation: the whole module runs and the asked scenario is kept with the rest.
    assert runner.run_module(module, ["propagation"], provides, opts)["propagation"] == {"p": 1}
    assert calls == ["run_scale", "run", "run"]
    single: Any = SimpleNamespace(run=lambda _: {"x": 1})
    assert runner.run_module(single, ["failover"], ("failover",), opts) == {"failover": {"x": 1}}


@pytest.fixture
def quiet_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "machine_info", lambda: {
        "cpu_model": "test", "cores": 2, "kernel": "k", "os": "os", "nginx": None, "haproxy": None,
        "wrk": None, "python": "3", "ferry": "0", "ferry_git": {"commit": None, "dirty": None},
    })


@pytest.mark.usefixtures("quiet_machine")
def test_missing_module_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(runner, "MODULES", {"bench.not_written_yet": ("failover",)})
    assert runner.main(["--only", "failover", "--results-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "skipping failover: bench/not_written_yet.py does not exist yet" in out
    assert "no results written" in out
    assert not (tmp_path / "r").exists()


@pytest.mark.usefixtures("quiet_machine")
def test_results_and_failures_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_ok = SimpleNamespace(run=lambda opts: {"rps": 123, "duration": opts.duration})

    def boom(_: BenchOptions) -> dict[str, Any]:
        raise RuntimeError("backend would not start")

    fake_bad = SimpleNamespace(run=boom)
    modules = {"bench.fake_ok": fake_ok, "bench.fake_bad": fake_bad}
    monkeypatch.setattr(runner, "MODULES", {"bench.fake_ok": ("proxy",), "bench.fake_bad": ("failover",)})
    monkeypatch.setattr(runner, "load_module", modules.get)
    code = runner.main(["--quick", "--results-dir", str(tmp_path)])
    assert code == 1
    latest = json.loads((tmp_path / "latest.json").read_text())
    assert latest["results"] == {"proxy": {"rps": 123, "duration": 3.0}}
    assert latest["errors"] == {"failover": "RuntimeError: backend would not start"}
    assert latest["machine"]["cpu_model"] == "test"
    assert latest["options"]["quick"] is True
    assert len(list(tmp_path.glob("2*.json"))) == 1


def test_the_python_path_scenario_reports_both_paths_and_their_ratio() -> None:
    from bench.python_path import render

    row = {"us_per_request": 10.0, "runs_us": [10.0], "hot_path": {"mode": "compiled", "reason": None}}
    pure = {"us_per_request": 15.0, "runs_us": [15.0], "hot_path": {"mode": "python", "reason": "set"}}
    text = render({"compiled": row, "python": pure, "compiled_vs_python": 0.667})
    assert "compiled   10.00 µs" in text and "python     15.00 µs" in text
    assert "compiled ÷ python: 0.667" in text and "ran " not in text
    stale = {**row, "hot_path": {"mode": "python", "reason": "base.py is newer"}}
    assert "(ran python: base.py is newer)" in render({"compiled": stale, "python": pure, "compiled_vs_python": 1.0})
