"""What the figures were measured on: CPU, kernel, tool versions, Ferry's commit."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from pathlib import Path
from typing import Any

from bench.procs import find_tool

REPO = Path(__file__).resolve().parent.parent


def _run(command: list[str], cwd: Path | None = None, strip: bool = True) -> str:
    """stdout + stderr of ``command`` ('' when it cannot run); never raises."""
    executable = find_tool(command[0])
    if executable is None:
        return ""
    try:
        done = subprocess.run([executable, *command[1:]], capture_output=True, text=True, timeout=10, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return ""
    output = done.stdout + done.stderr
    return output.strip() if strip else output


def tool_version(tool: str) -> str | None:
    """``nginx/1.22.1``-style version of nginx, haproxy or wrk; None when absent."""
    patterns = {
        "nginx": (["nginx", "-v"], r"nginx version: (\S+)"),
        "haproxy": (["haproxy", "-v"], r"HAProxy version (\S+)"),
        "wrk": (["wrk", "-v"], r"^wrk (\S+)"),
    }
    command, pattern = patterns[tool]
    match = re.search(pattern, _run(command), re.MULTILINE)
    return match.group(1) if match else None


def cpu_model(cpuinfo: str) -> str:
    match = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return match.group(1).strip() if match else platform.processor() or "unknown"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def git_commit(repo: Path = REPO) -> dict[str, Any]:
    """HEAD's commit and the tracked files that differ from it (read only: no index lock)."""
    commit = _run(["git", "-C", str(repo), "rev-parse", "HEAD"])
    status = _run(["git", "-C", str(repo), "--no-optional-locks", "status", "--porcelain",
                   "--untracked-files=no"], strip=False)
    modified = [line[3:] for line in status.splitlines() if len(line) > 3]
    return {
        "commit": commit or None,
        "dirty": bool(modified) if commit else None,
        # Which tracked files differ from the commit (the figures measured their code).
        "modified": modified[:50],
    }


def machine_info() -> dict[str, Any]:
    import ferry

    cpuinfo = _read("/proc/cpuinfo")
    mhz = re.search(r"^cpu MHz\s*:\s*([\d.]+)", cpuinfo, re.MULTILINE)
    os_release = re.search(r'^PRETTY_NAME="?([^"\n]+)"?', _read("/etc/os-release"), re.MULTILINE)
    meminfo = re.search(r"^MemTotal:\s*(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    return {
        "cpu_model": cpu_model(cpuinfo),
        "cpu_mhz": float(mhz.group(1)) if mhz else None,
        "cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mib": int(meminfo.group(1)) // 1024 if meminfo else None,
        "kernel": platform.release(),
        "os": os_release.group(1) if os_release else platform.platform(),
        "python": platform.python_version(),
        "nginx": tool_version("nginx"),
        "haproxy": tool_version("haproxy"),
        "wrk": tool_version("wrk"),
        "ferry": ferry.__version__,
        "ferry_git": git_commit(),
    }
