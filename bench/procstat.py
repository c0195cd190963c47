"""CPU time of processes and cores, read from ``/proc`` (Linux).

``/proc/<pid>/stat`` holds a process's ``utime`` and ``stime`` (fields 14 and 15, in
clock ticks) summed over all its threads, so one read per process covers a
multi-threaded proxy. ``/proc/stat`` holds per-core counters, which also see time
no process is charged for (interrupts, softirq: much of loopback networking).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROC = Path("/proc")


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the benchmark needs."""

    pid: int
    comm: str
    ppid: int
    pgrp: int
    utime_ticks: int
    stime_ticks: int
    num_threads: int

    @property
    def cpu_ticks(self) -> int:
        return self.utime_ticks + self.stime_ticks


def parse_proc_stat(text: str) -> ProcStat:
    """Parse one ``/proc/<pid>/stat`` line.

    The command name (field 2) is in parentheses and may itself contain spaces and
    parentheses, so the fields after it are found from the *last* ``)``.
    """
    open_paren, close_paren = text.index("("), text.rindex(")")
    pid = int(text[:open_paren])
    comm = text[open_paren + 1 : close_paren]
    rest = text[close_paren + 1 :].split()
    # rest[0] is field 3 (state); field n is rest[n - 3].
    return ProcStat(
        pid=pid,
        comm=comm,
        ppid=int(rest[1]),
        pgrp=int(rest[2]),
        utime_ticks=int(rest[11]),
        stime_ticks=int(rest[12]),
        num_threads=int(rest[17]),
    )


def read_proc_stat(pid: int, proc: Path = PROC) -> ProcStat | None:
    """``/proc/<pid>/stat``, or None when the process is gone."""
    try:
        return parse_proc_stat((proc / str(pid) / "stat").read_text())
    except (FileNotFoundError, ProcessLookupError):
        return None


def all_processes(proc: Path = PROC) -> list[ProcStat]:
    stats = []
    for entry in proc.iterdir():
        if entry.name.isdigit():
            stat = read_proc_stat(int(entry.name), proc)
            if stat is not None:
                stats.append(stat)
    return stats


def cpu_ticks_by_pid(proc: Path = PROC) -> dict[int, int]:
    """Every process's user + system CPU ticks so far."""
    return {stat.pid: stat.cpu_ticks for stat in all_processes(proc)}


def cpu_seconds_of_others(
    before: dict[int, int], after: dict[int, int], ours: set[int]
) -> tuple[float, list[tuple[int, float]]]:
    """CPU seconds that processes not in ``ours`` used between two ``cpu_ticks_by_pid``
    readings (a process that started in between counts whole), and the pids that used it."""
    used = []
    for pid, ticks in after.items():
        if pid in ours:
            continue
        delta = ticks - before.get(pid, 0)
        if delta > 0:
            used.append((pid, delta / CLOCK_TICKS))
    return sum(seconds for _, seconds in used), sorted(used, key=lambda u: -u[1])


def descendants(root: int, stats: Iterable[ProcStat]) -> list[int]:
    """``root`` and every process below it (children, grandchildren...), by ``ppid``."""
    children: dict[int, list[int]] = {}
    for stat in stats:
        children.setdefault(stat.ppid, []).append(stat.pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_tree(root: int, proc: Path = PROC) -> list[int]:
    """Pids of ``root``'s process tree as it is now (nginx: master and workers)."""
    return descendants(root, all_processes(proc))


def cpu_seconds(pids: Iterable[int], proc: Path = PROC) -> float:
    """User + system CPU seconds used so far by ``pids`` (all their threads)."""
    ticks = 0
    for pid in pids:
        stat = read_proc_stat(pid, proc)
        if stat is not None:
            ticks += stat.cpu_ticks
    return ticks / CLOCK_TICKS


@dataclass(frozen=True)
class CoreTimes:
    """One ``cpuN`` line of ``/proc/stat``, in clock ticks."""

    busy: int
    total: int


def parse_cpu_times(text: str) -> dict[int, CoreTimes]:
    """Per-core busy and total ticks from ``/proc/stat`` (idle and iowait are not busy)."""
    cores: dict[int, CoreTimes] = {}
    for line in text.splitlines():
        name, _, values = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu":
            continue
        numbers = [int(v) for v in values.split()]
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time
        # is already counted in user and nice.
        counted = numbers[:8]
        idle = counted[3] + (counted[4] if len(counted) > 4 else 0)
        total = sum(counted)
        cores[int(name[3:])] = CoreTimes(busy=total - idle, total=total)
    return cores


def read_cpu_times(proc: Path = PROC) -> dict[int, CoreTimes]:
    return parse_cpu_times((proc / "stat").read_text())


def core_busy(
    before: Mapping[int, CoreTimes], after: Mapping[int, CoreTimes]
) -> dict[int, dict[str, float]]:
    """Per core between two readings: busy fraction and busy seconds."""
    result: dict[int, dict[str, float]] = {}
    for core, end in after.items():
        start = before.get(core)
        if start is None:
            continue
        total = end.total - start.total
        busy = end.busy - start.busy
        result[core] = {
            "busy_fraction": busy / total if total > 0 else 0.0,
            "busy_seconds": busy / CLOCK_TICKS,
        }
    return result
