"""Reading CPU time from /proc: a process's utime + stime, per-core busy time."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.procstat import (
    CLOCK_TICKS,
    CoreTimes,
    ProcStat,
    core_busy,
    cpu_seconds,
    cpu_seconds_of_others,
    cpu_ticks_by_pid,
    descendants,
    parse_cpu_times,
    parse_proc_stat,
    process_tree,
)

# A real /proc/<pid>/stat line (of `cat`), and one of a process whose name has spaces
# and parentheses (the kernel writes it as is).
CAT = (
    "5626 (cat) R 5618 5618 2684 0 -1 4194304 100 0 0 0 7 3 0 0 20 0 1 0 942411 3133440 380 "
    "18446744073709551615 94727809572864 94727809592745 140720514327632 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0"
)
ODD = "812 (nginx: (worker) x) S 1 812 812 0 -1 4194560 9 0 0 0 1234 567 0 0 20 0 4 0 5 1 1 0"

PROC_STAT = """cpu  241069 0 36779 1563233 2780 0 22681 80 0 0
cpu0 98186 0 15500 807303 203 0 12043 37 0 0
cpu1 142882 0 21279 755929 2576 0 10637 42 0 0
intr 1 2 3
ctxt 12345
"""


def test_parse_proc_stat() -> None:
    stat = parse_proc_stat(CAT)
    assert stat == ProcStat(pid=5626, comm="cat", ppid=5618, pgrp=5618, utime_ticks=7, stime_ticks=3,
                            num_threads=1)
    assert stat.cpu_ticks == 10


def test_parse_proc_stat_with_spaces_and_parentheses_in_the_name() -> None:
    stat = parse_proc_stat(ODD)
    assert stat.comm == "nginx: (worker) x"
    assert (stat.pid, stat.ppid, stat.pgrp) == (812, 1, 812)
    assert (stat.utime_ticks, stat.stime_ticks, stat.num_threads) == (1234, 567, 4)


def _fake_proc(tmp_path: Path, lines: dict[int, str]) -> Path:
    for pid, line in lines.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(line + "\n")
    (tmp_path / "stat").write_text(PROC_STAT)
    return tmp_path


def _line(pid: int, ppid: int, utime: int, stime: int) -> str:
    return f"{pid} (p{pid}) S {ppid} {pid} {pid} 0 -1 0 0 0 0 0 {utime} {stime} 0 0 20 0 1 0 1 1 1 0"


def test_cpu_seconds_sums_processes_and_skips_vanished_ones(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {10: _line(10, 1, 150, 50), 11: _line(11, 10, 30, 20)})
    assert cpu_seconds([10, 11, 99], proc) == pytest.approx(250 / CLOCK_TICKS)


def test_process_tree(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {
        10: _line(10, 1, 0, 0), 11: _line(11, 10, 0, 0), 12: _line(12, 11, 0, 0), 13: _line(13, 1, 0, 0),
    })
    assert sorted(process_tree(10, proc)) == [10, 11, 12]
    assert process_tree(13, proc) == [13]


def test_descendants_of_a_process_without_children() -> None:
    assert descendants(5, [parse_proc_stat(CAT)]) == [5]


def test_parse_cpu_times() -> None:
    cores = parse_cpu_times(PROC_STAT)
    assert set(cores) == {0, 1}
    # busy = user + nice + system + irq + softirq + steal; idle and iowait are not.
    assert cores[0] == CoreTimes(busy=98186 + 15500 + 12043 + 37, total=98186 + 15500 + 807303 + 203 + 12043 + 37)


def test_core_busy() -> None:
    before = {0: CoreTimes(busy=100, total=1000), 1: CoreTimes(busy=0, total=1000)}
    after = {0: CoreTimes(busy=175, total=1100), 1: CoreTimes(busy=10, total=1100), 2: CoreTimes(busy=1, total=1)}
    busy = core_busy(before, after)
    assert set(busy) == {0, 1}
    assert busy[0]["busy_fraction"] == pytest.approx(0.75)
    assert busy[0]["busy_seconds"] == pytest.approx(75 / CLOCK_TICKS)
    assert busy[1]["busy_fraction"] == pytest.approx(0.10)


def test_reads_this_process() -> None:
    assert cpu_seconds([__import__("os").getpid()]) > 0


def test_cpu_of_other_processes() -> None:
    before = {1: 100, 2: 500, 3: 40}
    after = {1: 130, 2: 900, 4: 25}  # 3 exited (its time is lost), 4 started during the run
    seconds, used = cpu_seconds_of_others(before, after, ours={2})
    assert seconds == pytest.approx((30 + 25) / CLOCK_TICKS)
    assert [pid for pid, _ in used] == [1, 4]


def test_cpu_ticks_by_pid(tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path, {10: _line(10, 1, 7, 3), 11: _line(11, 1, 1, 1)})
    assert cpu_ticks_by_pid(proc) == {10: 10, 11: 2}
