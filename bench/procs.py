"""Processes the benchmarks start: pinned to a core, each in its own process group,
and all stopped (TERM, then KILL) when the ``ProcessSet`` closes, on errors and
Ctrl-C too; they also get SIGTERM if the runner itself is killed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from bench.procstat import all_processes, descendants, process_tree

STOP_TIMEOUT = 10.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the runner dies, even by SIGKILL
    (Linux's parent-death signal; it survives exec). Best effort elsewhere."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class ManagedProcess:
    """One started process (the leader of its own process group)."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self) -> list[int]:
        """This process and its descendants as they are now (nginx: master + workers)."""
        return process_tree(self.pid)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class ProcessSet:
    """Starts processes and guarantees they are all gone when it is closed."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        cpu: int | None = None,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` (on core ``cpu`` when given) with its output in ``log_path``."""
        command = list(argv)
        if cpu is not None:
            command = ["taskset", "-c", str(cpu), *command]  # taskset execs: same pid
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env=env,
                cwd=cwd,
            )
        process = ManagedProcess(name, popen, log_path)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Stop every process (last started first) and everything they started."""
        while self.processes:
            stop(self.processes.pop())


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop(process: ManagedProcess, timeout: float = STOP_TIMEOUT) -> None:
    """TERM the process group, KILL it after ``timeout``; then KILL any descendant
    that escaped the group (its own session) and reap the leader."""
    tree: list[int] = []
    if process.alive():
        with contextlib.suppress(OSError):
            tree = process.pids()
    pgid = process.pid  # start_new_session: the leader's pid is the group id
    _signal_group(pgid, signal.SIGTERM)
    try:
        process.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        _signal_group(pgid, signal.SIGKILL)
        process.popen.wait(timeout)
    deadline = time.monotonic() + timeout
    while True:
        left = [s.pid for s in all_processes() if s.pgrp == pgid or s.pid in tree]
        left = [pid for pid in left if pid != os.getpid()]
        if not left:
            return
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def pin(pids: Sequence[int], cpu: int) -> None:
    """Pin every thread of every process in ``pids`` to core ``cpu`` (``taskset -a -p``)."""
    for pid in pids:
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(cpu), str(pid)],
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )


def thread_affinities(pids: Sequence[int]) -> set[str]:
    """The distinct ``Cpus_allowed_list`` values of every thread of ``pids``."""
    found: set[str] = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith("Cpus_allowed_list:"):
                            found.add(line.split(":", 1)[1].strip())
    return found


def tree_of(pid: int) -> list[int]:
    return descendants(pid, all_processes())


def find_tool(name: str) -> str | None:
    """The path of ``name`` on PATH or in /usr/sbin, /sbin (where Debian puts nginx
    and haproxy, often not on a normal user's PATH)."""
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"])
    return shutil.which(name, path=search)


def missing_tools(tools: Sequence[str]) -> list[str]:
    return [tool for tool in tools if find_tool(tool) is None]


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so ``finally`` blocks run (and stop children)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
