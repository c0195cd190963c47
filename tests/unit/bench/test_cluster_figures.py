"""The pure parts of the cluster benchmarks: statistics, parsing, result shaping."""

from __future__ import annotations

import json
import os

import pytest

from bench.cluster_bench import _flag_value, propagation_times, receipt_times, scale_document
from bench.cluster_support import (
    cpu_seconds,
    format_table,
    parse_proc_status,
    percentile,
    proc_memory,
    summarize,
)
from bench.failover_bench import Outcome, classify, dead_target_transition, latency_windows
from bench.sim_data_planes import Tracker
from proto import cluster_pb2

# --------------------------------------------------------------------- statistics


def test_percentile_interpolates_between_closest_ranks_like_numpy() -> None:
    values = [15.0, 20.0, 35.0, 40.0, 50.0]
    assert percentile(values, 0) == 15.0
    assert percentile(values, 100) == 50.0
    assert percentile(values, 50) == 35.0
    assert percentile(values, 40) == pytest.approx(29.0)  # rank 1.6: 20 + 0.6 * 15
    assert percentile(values, 99) == pytest.approx(49.6)  # rank 3.96: 40 + 0.96 * 10


def test_percentile_does_not_depend_on_order_and_handles_one_value() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([7.0], 99) == 7.0


def test_percentile_refuses_no_values_and_out_of_range() -> None:
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_rounds_and_says_n() -> None:
    summary = summarize([1.0, 2.0, 3.0, 4.0], digits=1)
    assert summary == {"n": 4, "min": 1.0, "p50": 2.5, "p99": 4.0, "max": 4.0, "mean": 2.5}
    assert summarize([]) == {"n": 0}


# ---------------------------------------------------------------------- /proc

STATUS = """Name:\tpython3
State:\tS (sleeping)
VmPeak:\t 2413528 kB
VmSize:\t 2413400 kB
VmHWM:\t 2111900 kB
VmRSS:\t 1191612 kB
RssAnon:\t 1170000 kB
Threads:\t12
"""


def test_parse_proc_status_reads_memory_lines_in_kib() -> None:
    found = parse_proc_status(STATUS)
    assert found["VmHWM"] == 2111900
    assert found["VmRSS"] == 1191612
    assert found["RssAnon"] == 1170000
    assert "Threads" not in found and "State" not in found


def test_memory_and_cpu_of_this_process_and_of_none() -> None:
    assert proc_memory(os.getpid())["VmHWM"] > 0
    assert set(cpu_seconds(os.getpid())) == {"user", "system"}
    assert proc_memory(2**22 + 1) == {} and cpu_seconds(2**22 + 1) == {}


def test_format_table_pads_columns_and_right_aligns_numbers() -> None:
    text = format_table(["step", "ms"], [["import", 737.3], ["a longer step", 12.0], ["none", None]])
    lines = text.splitlines()
    assert lines[0].split() == ["step", "ms"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].endswith("737.30") and lines[3].endswith(" 12.00")
    assert lines[4].endswith("-")
    assert len({len(line) for line in lines[2:4]}) == 1


# ---------------------------------------------------------------- propagation


def test_propagation_is_to_the_last_data_plane_from_the_201() -> None:
    times = propagation_times(100.0, [100.004, 100.012, 100.007])
    assert times["all"] == pytest.approx(12.0)
    assert times["first"] == pytest.approx(4.0)
    with pytest.raises(ValueError):
        propagation_times(100.0, [])


def test_flag_value_reads_both_spellings() -> None:
    assert _flag_value(["--merge-window", "0"], "--merge-window", "d") == "0"
    assert _flag_value(["--merge-window=0.01"], "--merge-window", "d") == "0.01"
    assert _flag_value([], "--merge-window", "d") == "d"


# ----------------------------------------------------------------------- scale


def test_scale_document_has_distinct_ip_targets() -> None:
    document = scale_document(300, 10)
    upstreams = document["upstreams"]
    assert len(upstreams) == 300 and len({u["name"] for u in upstreams}) == 300
    targets = [t["target"] for u in upstreams for t in u["targets"]]
    assert len(targets) == 3000 and len(set(targets)) == 3000
    assert all(t.startswith("10.") and t.endswith(":8080") for t in targets)
    json.dumps(document)  # it is what POST /config receives
    with pytest.raises(ValueError):
        scale_document(1, 251)


def test_receipt_times_are_milliseconds_after_the_201() -> None:
    summary = receipt_times(10.0, [10.1, 10.2, 10.3])
    assert summary["max"] == pytest.approx(300.0) and summary["p50"] == pytest.approx(200.0)


def test_tracker_reports_a_version_once_every_stream_has_it(capsys: pytest.CaptureFixture[str]) -> None:
    tracker = Tracker(streams=2)
    snapshot = cluster_pb2.Snapshot(version=3, hash="h", resources=[cluster_pb2.Resource(kind="upstreams")])
    tracker.snapshot(1, 5.0, snapshot, 123)
    assert capsys.readouterr().out == ""
    tracker.snapshot(0, 6.0, snapshot, 0)
    event = json.loads(capsys.readouterr().out)
    assert event == {"event": "snapshots", "version": 3, "hash": "h", "resources": 1, "bytes": 123,
                     "times": [6.0, 5.0]}
    tracker.delta(0, 7.0, 4, 1)
    tracker.delta(0, 7.5, 5, 1)
    assert capsys.readouterr().out == ""
    tracker.delta(1, 8.0, 4, 1)
    assert json.loads(capsys.readouterr().out) == {"event": "delta", "version": 4, "upserts": 1,
                                                   "times": [7.0, 8.0]}


# -------------------------------------------------------------------- failover


def test_classify_counts_errors_and_backends_on_each_side_of_the_kill() -> None:
    outcomes = [
        Outcome(1.0, 1.01, 200, "b1"),
        Outcome(1.5, 1.51, 200, "b2"),
        Outcome(2.0, 2.02, 502, None),
        Outcome(2.1, 2.2, None, None, "ServerDisconnectedError"),
        Outcome(2.5, 2.51, 200, "b2"),
    ]
    shaped = classify(outcomes, t_kill=2.0)
    assert shaped["requests"] == 5
    assert (shaped["requests_before_kill"], shaped["requests_after_kill"]) == (2, 3)
    assert shaped["errors_before_kill"] == {}
    assert shaped["errors_after_kill"] == {"HTTP 502": 1, "ServerDisconnectedError": 1}
    assert shaped["client_errors"] == 2
    assert shaped["backends_before_kill"] == {"b1": 1, "b2": 1}
    assert shaped["backends_after_kill"] == {"b2": 1}


def test_latency_windows_split_before_during_and_after() -> None:
    outcomes = [Outcome(0.5, 0.51, 200, "b1"), Outcome(2.2, 2.25, 200, "b2"),
                Outcome(3.5, 3.501, 200, "b2")]
    windows = latency_windows(outcomes, t_kill=2.0)
    assert windows["before_kill"]["max"] == pytest.approx(10.0)
    assert windows["first_second_after"]["max"] == pytest.approx(50.0)
    assert windows["later"]["n"] == 1


def test_dead_target_transition_reads_the_data_planes_own_time() -> None:
    health = {"data": [
        {"target": "127.0.0.1:1", "data_planes": [
            {"addresses": [{"address": "127.0.0.1:1", "health": "HEALTHY", "updated_at": 1.0}]}]},
        {"target": "127.0.0.1:2", "data_planes": [
            {"addresses": [{"address": "127.0.0.1:2", "health": "UNHEALTHY",
                            "reason": "passive: 1 tcp_failures", "updated_at": 12.5}]}]},
    ]}
    assert dead_target_transition(health, "127.0.0.1:2") == {
        "time": 12.5, "reason": "passive: 1 tcp_failures"}
    assert dead_target_transition(health, "127.0.0.1:1") is None
    assert dead_target_transition({"data": []}, "127.0.0.1:2") is None
