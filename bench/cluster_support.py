"""What the cluster benchmarks share: real ``ferry`` processes, Admin API calls, statistics.

Every process starts in its own session (process group) and, on Linux, gets
SIGTERM when the benchmark dies (``PR_SET_PDEATHSIG``), so
:meth:`Processes.stop_all` in a ``finally`` — or the benchmark's death — leaves
nothing running. The pure helpers (:func:`percentile`, :func:`summarize`,
:func:`parse_proc_status`, :func:`format_table`) are unit-tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp

from bench.procstat import CLOCK_TICKS, process_tree, read_proc_stat
from ferry_shared.child_process import spawn_dying_with_parent
from ferry_shared.listen import free_port

#: The repository root: child Python processes run from here so ``bench`` imports.
REPO_ROOT = Path(__file__).resolve().parent.parent

START_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


# ----------------------------------------------------------------- statistics


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0–100) by linear interpolation between closest ranks.

    The definition of numpy's default (``method="linear"``): rank ``p/100 * (n-1)``
    of the sorted values, interpolated. Raises ValueError on an empty sequence.
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is not in [0, 100]")
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float], *, digits: int = 2) -> dict[str, Any]:
    """``{n, min, p50, p99, max, mean}`` of ``values``, rounded; only ``n`` when empty."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": round(min(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p99": round(percentile(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(sum(values) / len(values), digits),
    }


def parse_proc_status(text: str) -> dict[str, int]:
    """The ``Vm*`` and ``Rss*`` lines of ``/proc/<pid>/status``, in KiB."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or not (key.startswith("Vm") or key.startswith("Rss")):
            continue
        parts = value.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            found[key] = int(parts[0])
    return found


def proc_memory(pid: int) -> dict[str, int]:
    """``/proc/<pid>/status`` memory figures (KiB); empty when the process is gone."""
    try:
        return parse_proc_status(Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return {}


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc/<pid>/task/*/children``)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return children


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        padded = [
            c.rjust(w) if n and _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)
        ]
        lines.append("  ".join(padded).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------ processes


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group at once (a crash, not a shutdown)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM the process group, wait, then SIGKILL what is left of it.

        Descendants in sessions of their own (the control plane's embedded Redis)
        are stopped by their parent on SIGTERM; any still there afterwards are killed.
        """
        tree: list[tuple[int, str]] = []
        if self.popen.poll() is None:
            with contextlib.suppress(OSError):
                for pid in process_tree(self.popen.pid):
                    stat = read_proc_stat(pid)
                    if pid != self.popen.pid and stat is not None:
                        tree.append((pid, stat.comm))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Children that outlived their leader (the process group keeps its id).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(STOP_TIMEOUT)
        for pid, comm in tree:
            stat = read_proc_stat(pid)
            if stat is not None and stat.comm == comm:  # still that process, not a reused pid
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


class Processes:
    """Starts child processes (each its own process group); :meth:`stop_all` stops them all."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[ManagedProcess] = []

    def start(
        self, name: str, args: Sequence[str], *, stdout_pipe: bool = False,
        env: dict[str, str] | None = None,
    ) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed by ManagedProcess.stop
        popen = spawn_dying_with_parent(
            list(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else log_file,
            stderr=log_file if stdout_pipe else subprocess.STDOUT,
            start_new_session=True,
            cwd=REPO_ROOT,
            env={**os.environ, **(env or {})},
        )
        process = ManagedProcess(name, popen, log_path, log_file)
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()
        self.started.clear()


@dataclass
class ControlPlaneProc:
    process: ManagedProcess
    admin_port: int
    cluster_port: int

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def cluster(self) -> str:
        return f"127.0.0.1:{self.cluster_port}"


@dataclass
class DataPlaneProc:
    process: ManagedProcess
    proxy_port: int
    status_port: int

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def status(self) -> str:
        return f"http://127.0.0.1:{self.status_port}"


def start_control_plane(
    processes: Processes, ferry_bin: Path, data_dir: Path, *extra: str, name: str = "cp"
) -> ControlPlaneProc:
    """``ferry control-plane`` with its embedded Redis, plaintext cluster link, free ports."""
    admin_port, cluster_port = free_port(), free_port()
    process = processes.start(name, [
        str(ferry_bin), "control-plane",
        "--admin-listen", f"127.0.0.1:{admin_port}",
        "--cluster-listen", f"127.0.0.1:{cluster_port}",
        "--data-dir", str(data_dir),
        "--cluster-insecure",
        "--log-level", "warning",
        *extra,
    ])
    return ControlPlaneProc(process, admin_port, cluster_port)


def start_data_plane(
    processes: Processes, ferry_bin: Path, data_dir: Path, cluster: str, *extra: str, name: str
) -> DataPlaneProc:
    """``ferry data-plane`` on free ports with a plaintext cluster link to ``cluster``."""
    proxy_port, status_port = free_port(), free_port()
    process = processes.start(name, [
        str(ferry_bin), "data-plane",
        "--control-plane", cluster,
        "--proxy-listen", f"127.0.0.1:{proxy_port}",
        "--status-listen", f"127.0.0.1:{status_port}",
        "--data-dir", str(data_dir),
        "--hostname", name,
        "--cluster-insecure",
        "--log-level", "warning",
        *extra,
    ])
    return DataPlaneProc(process, proxy_port, status_port)


# --------------------------------------------------------------------- HTTP


class BenchError(RuntimeError):
    """A benchmark could not run (a process died, an API answered an error)."""


async def wait_http_ok(
    session: aiohttp.ClientSession, url: str, process: ManagedProcess,
    timeout: float = START_TIMEOUT,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise BenchError(
                f"{process.name} exited with code {process.returncode}:\n{process.log_tail()}"
            )
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise BenchError(f"{process.name}: {url} did not answer 200 within {timeout:.0f}s")


async def admin_call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None,
    *, expect: Iterable[int] = (200, 201, 204), timeout: float = 300.0,
) -> Any:
    """One Admin API call; raises :class:`BenchError` on an unexpected status."""
    async with session.request(
        method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        payload = await response.json(content_type=None) if response.status != 204 else None
        if response.status not in set(expect):
            raise BenchError(f"{method} {url} → {response.status}: {str(payload)[:500]}")
        return payload


async def get_json(session: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> Any:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
        return await response.json(content_type=None)


async def cp_version(session: aiohttp.ClientSession, cp: ControlPlaneProc) -> int:
    return int((await get_json(session, f"{cp.admin}/status"))["configuration_version"])


def ms(seconds: float) -> float:
    return seconds * 1000.0


def no_leftovers(processes: Processes) -> list[str]:
    """Names of started processes still running (should be none after ``stop_all``)."""
    return [p.name for p in processes.started if p.returncode is None]



def cpu_seconds(pid: int) -> dict[str, float]:
    """User and system CPU seconds ``pid`` used so far (all threads); empty when it is gone."""
    stat = read_proc_stat(pid)
    if stat is None:
        return {}
    return {"user": round(stat.utime_ticks / CLOCK_TICKS, 2),
            "system": round(stat.stime_ticks / CLOCK_TICKS, 2)}


def wait_for_quiet_machine(quick: bool) -> dict[str, Any]:
    """Wait (up to 120 s, 20 s when quick) until no core is busy with work not ours.

    The proxy benchmark's check (``bench.proxy_bench.wait_for_quiet``): cluster
    figures taken while another benchmark runs are not comparable. Returns its
    last sample of the machine, for the results.
    """
    from bench.proxy_bench import QUIET_WAIT_S, wait_for_quiet

    return wait_for_quiet(set(), QUIET_WAIT_S / 6 if quick else QUIET_WAIT_S)
