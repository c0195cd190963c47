"""Several proxy workers per node: ``ferry data-plane --workers 1`` against ``--workers 2``.

The same Ferry setup as the ``proxy`` scenario (bench/proxy_bench.py): one control
plane, an upstream of the same two nginx keep-alive backends (16 KiB body),
round-robin, passive health checks, a route ``/bench``. Two data-plane nodes follow
that control plane, both running the whole time:

- ``ferry-1``: ``--workers 1`` (the node process proxies itself: one process);
- ``ferry-2``: ``--workers 2`` (the node keeps the cluster link and the health
  checker; two worker processes proxy on one port with ``SO_REUSEPORT``);

and, as a reference measured the same way, nginx as the proxy with
``worker_processes 1`` and ``2`` (``listen ... reuseport`` like Ferry's workers).

**Nothing is pinned.** The machine this was written for has 2 cores: two proxy
workers need both, so wrk (``-t2``) and the backends have to share them with the
proxy. Each run reads, from ``/proc``, the CPU time of every process of the proxy
(for Ferry: the node *and* its workers, summed), of the backends, of wrk (the
runner's reaped children, ``RUSAGE_CHILDREN``) and of every core, so the output
says where the two cores went, not only the req/s.

Before measuring, a check run against ``ferry-2`` reads each worker's CPU time
before and after: both must have done a real share of the work (the kernel spreads
connections by a hash of their addresses), or the scenario fails.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.options import BenchOptions
from bench.procs import ManagedProcess, ProcessSet, missing_tools, thread_affinities
from bench.procstat import (
    CLOCK_TICKS,
    core_busy,
    cpu_seconds,
    cpu_seconds_of_others,
    cpu_ticks_by_pid,
    read_cpu_times,
    read_proc_stat,
)
from bench.proxy_bench import (
    DISTURBED_PAUSE_S,
    DISTURBED_RETRIES,
    FOREIGN_CPU_LIMIT,
    QUIET_LIMIT,
    QUIET_WAIT_S,
    SETTLE_S,
    URL_PATH,
    BenchUnavailable,
    Target,
    _child_env,
    _http_ok,
    _json,
    _tool,
    body_text,
    check_target,
    configure_ferry,
    http_get,
    nginx_backend_conf,
    nginx_proxy_conf,
    per_request_us,
    prepare_site,
    ratio,
    rotated,
    wait_for_quiet,
    wait_until,
)
from bench.wrk import parse_wrk_output, wrk_command
from ferry_shared.listen import free_port

VARIANTS = ("ferry-1", "ferry-2", "nginx-1", "nginx-2")
LABELS = {
    "ferry-1": "Ferry DP --workers 1",
    "ferry-2": "Ferry DP --workers 2",
    "nginx-1": "nginx (1 worker)",
    "nginx-2": "nginx (2 workers)",
}
WRK_THREADS = 2
REQUIRED_TOOLS = ("nginx", "wrk")
#: Each worker of a 2-worker proxy must have used at least this share of the workers'
#: CPU time during the check run, and at least MIN_WORKER_CORES of a core.
MIN_WORKER_SHARE = 0.25
MIN_WORKER_CORES = 0.1


@dataclass
class Variant:
    name: str
    url: str
    process: ManagedProcess
    #: Worker processes this proxy should have (1: the node/worker proxies itself).
    workers: int


# --------------------------------------------------------------------------- pure helpers


def process_role(root: int, pid: int, argv: Sequence[str]) -> str:
    """What a process of a proxy's tree is: ``node`` (Ferry's node), ``master``
    (nginx's), ``worker <i>`` (a Ferry worker: its ``--index``), ``worker`` (an nginx
    worker), or ``other``."""
    if pid == root:
        return "master" if argv and argv[0].startswith("nginx: master") else "node"
    if "data-plane-worker" in argv:
        index = argv[argv.index("--index") + 1] if "--index" in argv[:-1] else "?"
        return f"worker {index}"
    if argv and argv[0].startswith("nginx: worker"):
        return "worker"
    return "other"


def role_names(roles: Mapping[int, str]) -> dict[int, str]:
    """Make roles unique: nginx's workers (all ``worker``) become ``worker 0``,
    ``worker 1``... in pid order; the rest are kept."""
    named: dict[int, str] = {}
    plain = sorted(pid for pid, role in roles.items() if role == "worker")
    for pid, role in roles.items():
        named[pid] = f"worker {plain.index(pid)}" if role == "worker" else role
    return named


def worker_spread(
    cpu_by_role: Mapping[str, float], wall_s: float, *,
    min_share: float = MIN_WORKER_SHARE, min_cores: float = MIN_WORKER_CORES,
) -> dict[str, Any]:
    """How the workers' CPU seconds over a run were spread among them.

    ``all_served`` says whether every worker (role ``worker ...``) used at least
    ``min_share`` of the workers' total and at least ``min_cores`` of a core; None
    when there are fewer than two workers (nothing to spread).
    """
    workers = {role: cpu for role, cpu in cpu_by_role.items() if role.startswith("worker")}
    total = sum(workers.values())
    shares = {role: (cpu / total if total > 0 else 0.0) for role, cpu in sorted(workers.items())}
    cores = {role: (cpu / wall_s if wall_s > 0 else 0.0) for role, cpu in sorted(workers.items())}
    served = None
    if len(workers) >= 2:
        served = all(shares[r] >= min_share and cores[r] >= min_cores for r in workers)
    return {
        "workers": len(workers),
        "cpu_s": {r: round(c, 3) for r, c in sorted(workers.items())},
        "share": {r: round(s, 3) for r, s in shares.items()},
        "cores": {r: round(c, 3) for r, c in cores.items()},
        "min_share": round(min(shares.values()), 3) if shares else None,
        "all_served": served,
    }


def nginx_workers_conf(conf: str, workers: int) -> str:
    """proxy_bench's nginx proxy config with ``worker_processes workers`` and, for
    more than one, ``reuseport`` on the listen socket (each worker its own socket, the
    kernel spreading connections: what Ferry's workers do)."""
    if workers == 1:
        return conf
    changed = conf.replace("worker_processes 1;", f"worker_processes {workers};", 1)
    changed = changed.replace("backlog=4096;", "backlog=4096 reuseport;", 1)
    if "reuseport" not in changed or f"worker_processes {workers};" not in changed:
        raise ValueError("the nginx proxy config no longer has the lines to change")
    return changed


def parse_context_switches(status: str) -> tuple[int, int]:
    """``(voluntary, involuntary)`` context switches from a ``/proc/<pid>/status`` text:
    a process that waits for events switches voluntarily; one the scheduler takes the
    core from, involuntarily."""
    counts = {"voluntary_ctxt_switches": 0, "nonvoluntary_ctxt_switches": 0}
    for line in status.splitlines():
        name, _, value = line.partition(":")
        if name in counts:
            counts[name] = int(value.strip())
    return counts["voluntary_ctxt_switches"], counts["nonvoluntary_ctxt_switches"]


def parse_cpu_list(text: str) -> set[int]:
    """``Cpus_allowed_list`` (``0-1,4``) as a set of cores."""
    cores: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of each figure per variant over the rounds (and the req/s spread)."""
    summary: dict[str, dict[str, Any]] = {}
    for name in VARIANTS:
        mine = [r for r in runs if r["variant"] == name]
        if not mine:
            continue
        rps = [r["requests_per_s"] for r in mine]
        roles = sorted({role for r in mine for role in r["proxy_cpu_us_per_request_by_role"]})
        summary[name] = {
            "label": LABELS[name],
            "runs": len(mine),
            "requests_per_s": _median(rps),
            "requests_per_s_min": min(rps),
            "requests_per_s_max": max(rps),
            "p50_ms": _median([r["p50_ms"] for r in mine]),
            "p99_ms": _median([r["p99_ms"] for r in mine]),
            "proxy_cpu_us_per_request": _median([r["proxy_cpu_us_per_request"] for r in mine]),
            "proxy_cpu_us_per_request_by_role": {
                role: _median([r["proxy_cpu_us_per_request_by_role"].get(role) for r in mine]) for role in roles
            },
            "proxy_user_us_per_request": _median([r.get("proxy_user_us_per_request") for r in mine]),
            "proxy_system_us_per_request": _median([r.get("proxy_system_us_per_request") for r in mine]),
            "proxy_voluntary_switches_per_request": _median(
                [r.get("proxy_voluntary_switches_per_request") for r in mine]),
            "proxy_involuntary_switches_per_request": _median(
                [r.get("proxy_involuntary_switches_per_request") for r in mine]),
            "proxy_cores": _median([r["proxy_cores"] for r in mine]),
            "proxy_machine_share": _median([r["proxy_machine_share"] for r in mine]),
            "machine_busy_share": _median([r["machine_busy_share"] for r in mine]),
            "wrk_cores": _median([r["wrk_cores"] for r in mine]),
            "backends_cores": _median([r["backends_cores"] for r in mine]),
            "worker_min_share": _median([r["worker_spread"]["min_share"] for r in mine]),
            "errors": sum(r["errors"] for r in mine),
            "foreign_cpu_cores_max": max((r.get("foreign_cpu_cores") or 0.0) for r in mine),
            "disturbed_runs": sum(1 for r in mine if r.get("disturbed")),
        }
    return summary


def per_round_ratio(runs: Sequence[dict[str, Any]], numerator: str, denominator: str,
                    key: str = "requests_per_s") -> list[float]:
    """``key`` of ``numerator`` ÷ that of ``denominator``, round by round (rounds having both)."""
    by_round: dict[int, dict[str, float]] = {}
    for run in runs:
        if run.get(key) is not None:
            by_round.setdefault(run["round"], {})[run["variant"]] = run[key]
    ratios = []
    for round_ in sorted(by_round):
        values = by_round[round_]
        value = ratio(values.get(numerator), values.get(denominator))
        if value is not None:
            ratios.append(round(value, 3))
    return ratios


def scaling(summary: Mapping[str, Mapping[str, Any]], runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """2 workers against 1, for Ferry and for nginx, from the medians (and per round)."""

    def get(name: str, key: str) -> float | None:
        return summary.get(name, {}).get(key)

    result: dict[str, Any] = {}
    for proxy in ("ferry", "nginx"):
        one, two = f"{proxy}-1", f"{proxy}-2"
        result[proxy] = {
            "throughput": ratio(get(two, "requests_per_s"), get(one, "requests_per_s")),
            "throughput_per_round": per_round_ratio(runs, two, one),
            "cpu_us_per_request": ratio(get(two, "proxy_cpu_us_per_request"), get(one, "proxy_cpu_us_per_request")),
            "cores": ratio(get(two, "proxy_cores"), get(one, "proxy_cores")),
            "p99": ratio(get(two, "p99_ms"), get(one, "p99_ms")),
        }
    result["ferry_2_vs_nginx_2"] = {
        # nginx's CPU µs/req ÷ Ferry's (1.00: as efficient), and Ferry's req/s ÷ nginx's.
        "cpu_efficiency": ratio(get("nginx-2", "proxy_cpu_us_per_request"), get("ferry-2", "proxy_cpu_us_per_request")),
        "throughput": ratio(get("ferry-2", "requests_per_s"), get("nginx-2", "requests_per_s")),
    }
    return result


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "",
        f"Several workers per node: {s['rounds']} interleaved round(s) × {s['duration_s']:g} s, "
        f"wrk -t{s['wrk_threads']} -c{s['connections']}, {s['body_bytes'] // 1024} KiB responses "
        "from 2 nginx keep-alive backends;",
        f"UNPINNED: proxy, wrk and backends share the machine's {s['cores']} cores. Figures are medians over rounds.",
        "",
        f"{'variant':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'CPU µs/req':>12}{'cores':>7}"
        f"{'machine':>9}{'wrk':>6}{'backends':>9}{'busy':>6}{'errors':>8}",
    ]
    summary = result["peak"]["summary"]
    for name in VARIANTS:
        row = summary.get(name)
        if row is None:
            continue
        lines.append(
            f"{row['label']:<22}{_num(row['requests_per_s'], ',.0f'):>10}{_num(row['p50_ms'], '.3f'):>9}"
            f"{_num(row['p99_ms'], '.3f'):>9}{_num(row['proxy_cpu_us_per_request'], '.1f'):>12}"
            f"{_num(row['proxy_cores'], '.2f'):>7}{_pct(row['proxy_machine_share']):>9}"
            f"{_num(row['wrk_cores'], '.2f'):>6}{_num(row['backends_cores'], '.2f'):>9}"
            f"{_pct(row['machine_busy_share']):>6}{row['errors']:>8}"
        )
    lines += [
        "  CPU µs/req: user+system CPU of all the proxy's processes (Ferry: node + workers) per request.",
        "  cores: those processes' CPU in cores' worth; machine: that as a share of all cores;",
        "  wrk, backends: their CPU in cores' worth; busy: how busy all cores were (incl. softirq).",
        "",
        "Per process (CPU µs/req, medians), user/system split and context switches per request",
    ]
    for name in VARIANTS:
        row = summary.get(name)
        if row is None:
            continue
        parts = ", ".join(f"{role} {_num(us, '.1f')}" for role, us in row["proxy_cpu_us_per_request_by_role"].items())
        lines.append(
            f"  {row['label']:<22}{parts}; user {_num(row.get('proxy_user_us_per_request'), '.1f')} + system "
            f"{_num(row.get('proxy_system_us_per_request'), '.1f')}; context switches/req voluntary "
            f"{_num(row.get('proxy_voluntary_switches_per_request'), '.3f')}, involuntary "
            f"{_num(row.get('proxy_involuntary_switches_per_request'), '.3f')}"
        )
    check = result["checks"]["worker_spread"]
    lines += [
        "",
        "Both workers served (check run before measuring, each worker's CPU from /proc):",
    ]
    for name, spread in check.items():
        shares = ", ".join(f"{r} {c:.2f} s ({spread['share'][r] * 100:.0f}%)" for r, c in spread["cpu_s"].items())
        lines.append(f"  {LABELS[name]:<22}{shares}  → {'OK' if spread['all_served'] else 'NOT BOTH'}")
    sc = result["scaling"]
    lines += [
        "",
        "2 workers ÷ 1 worker (medians; per round in brackets)",
    ]
    for proxy in ("ferry", "nginx"):
        r = sc[proxy]
        rounds = ", ".join(f"{v:.2f}" for v in r["throughput_per_round"])
        lines.append(
            f"  {proxy:<6} req/s {_num(r['throughput'], '.2f')}× [{rounds}], CPU µs/req "
            f"{_num(r['cpu_us_per_request'], '.2f')}×, cores used {_num(r['cores'], '.2f')}×, "
            f"p99 {_num(r['p99'], '.2f')}×"
        )
    vs = sc["ferry_2_vs_nginx_2"]
    lines.append(f"  Ferry --workers 2 / nginx 2 workers: CPU efficiency {_num(vs['cpu_efficiency'], '.2f')}, "
                 f"throughput {_num(vs['throughput'], '.2f')}×")
    for warning in result["warnings"]:
        lines.append(f"  WARNING: {warning}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- processes


def _log(message: str) -> None:
    print(f"[workers] {message}", flush=True)


def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def roles_of(process: ManagedProcess) -> dict[int, str]:
    """Every process of ``process``'s tree now, by pid, with its role."""
    return role_names({pid: process_role(process.pid, pid, _argv(pid)) for pid in process.pids()})


@dataclass(frozen=True)
class _Sample:
    user_ticks: int
    system_ticks: int
    voluntary: int
    involuntary: int

    @property
    def ticks(self) -> int:
        return self.user_ticks + self.system_ticks


def _samples(pids: Sequence[int]) -> dict[int, _Sample]:
    """CPU ticks (``/proc/<pid>/stat``) and context switches (``/proc/<pid>/status``)."""
    found = {}
    for pid in pids:
        stat = read_proc_stat(pid)
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if stat is not None:
            found[pid] = _Sample(stat.utime_ticks, stat.stime_ticks, *parse_context_switches(status))
    return found


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_nginx(procs: ProcessSet, name: str, base: Path, conf: str) -> ManagedProcess:
    """nginx with ``conf``, on no particular core."""
    base.mkdir(parents=True, exist_ok=True)
    conf_path = base / "nginx.conf"
    conf_path.write_text(conf)
    return procs.start(
        name, [_tool("nginx"), "-p", f"{base}/", "-e", str(base / "error.log"), "-c", str(conf_path)],
        log_path=base / "output.log",
    )


def start_control_plane(procs: ProcessSet, options: BenchOptions, base: Path,
                        backends: Sequence[int]) -> tuple[ManagedProcess, str, int]:
    """A control plane (with its embedded Redis), configured like proxy_bench's."""
    admin_port, cluster_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    control_plane = procs.start(
        "ferry-control-plane",
        [str(options.ferry_bin), "control-plane", "--admin-listen", f"127.0.0.1:{admin_port}",
         "--cluster-listen", f"127.0.0.1:{cluster_port}", "--data-dir", str(base / "control-plane"),
         "--cluster-insecure", "--log-level", "warning"],
        log_path=base / "control-plane.log", env=_child_env(),
    )
    wait_until(lambda: _http_ok(f"{admin}/status"), "the control plane's Admin API", [control_plane])
    configure_ferry(admin, backends)
    return control_plane, admin, cluster_port


def start_data_plane(procs: ProcessSet, options: BenchOptions, base: Path, *, admin: str,
                     cluster_port: int, workers: int, control_plane: ManagedProcess) -> tuple[ManagedProcess, str, dict]:
    """One data-plane node with ``--workers workers``; waits until it is SYNCED, every
    worker serves the config (``/status/ready``) and it proxies the bench route."""
    proxy_port, status_port = free_port(), free_port()
    status = f"http://127.0.0.1:{status_port}"
    hostname = f"bench-dp-w{workers}"
    node = procs.start(
        f"ferry-data-plane-w{workers}",
        [str(options.ferry_bin), "data-plane", "--control-plane", f"127.0.0.1:{cluster_port}",
         "--proxy-listen", f"127.0.0.1:{proxy_port}", "--status-listen", f"127.0.0.1:{status_port}",
         "--data-dir", str(base / f"data-plane-w{workers}"), "--hostname", hostname,
         "--workers", str(workers), "--cluster-insecure", "--log-level", "warning"],
        log_path=base / f"data-plane-w{workers}.log", env=_child_env(),
    )
    both = [control_plane, node]

    def synced() -> bool:
        try:
            dp_hash = _json(f"{status}/status")["configuration_hash"]
            rows = _json(f"{admin}/clustering/data-planes")["data"]
        except (OSError, RuntimeError, ValueError):
            return False
        return bool(dp_hash) and any(
            row["hostname"] == hostname and row["sync_status"] == "SYNCED" and row["config_hash"] == dp_hash
            for row in rows
        )

    def ready() -> bool:
        try:
            return http_get(f"{status}/status/ready")[0] == 200
        except OSError:
            return False

    wait_until(synced, f"data plane {hostname} to apply the configuration (SYNCED)", both)
    wait_until(ready, f"every worker of {hostname} to serve the configuration (/status/ready)", both)
    url = f"http://127.0.0.1:{proxy_port}{URL_PATH}"
    wait_until(lambda: _http_ok(url), f"{hostname} to proxy the bench route", both)
    body = _json(f"{status}/status")
    health = _json(f"{status}/upstreams/bench/health?balancer_health=1")["data"]
    info = {
        "hostname": hostname,
        "configuration_hash": body["configuration_hash"],
        "workers_reported": body.get("workers"),
        "upstream_health": health["health"],
    }
    if workers > 1:
        reported = body.get("workers") or []
        if len(reported) != workers or any(w["configuration_hash"] != body["configuration_hash"] for w in reported):
            raise RuntimeError(f"{hostname}: /status lists workers {reported}, expected {workers} serving "
                               f"{body['configuration_hash']}")
    return node, url, info


# --------------------------------------------------------------------------- measuring


@dataclass
class Rig:
    procs: ProcessSet
    backends: ManagedProcess
    cores: int


def measure(rig: Rig, variant: Variant, *, duration: float, connections: int) -> dict[str, Any]:
    """One unpinned wrk run against ``variant``: its processes' CPU time (each, and
    summed), the backends', wrk's, every core's and that of processes not ours."""
    roles = roles_of(variant.process)
    proxy_pids = sorted(roles)
    backend_pids = rig.backends.pids()
    our_pids = {pid for p in rig.procs.processes for pid in p.pids()} | {os.getpid()}
    rest_pids = sorted(our_pids - set(proxy_pids) - set(backend_pids) - {os.getpid()})
    command = wrk_command(variant.url, duration=duration, connections=connections, threads=WRK_THREADS,
                          executable=_tool("wrk"))
    proxy_before = _samples(proxy_pids)
    backends_before = cpu_seconds(backend_pids)
    rest_before = cpu_seconds(rest_pids)
    everyone_before = cpu_ticks_by_pid()
    cores_before = read_cpu_times()
    children_before = _children_cpu_s()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60)
    wall = time.monotonic() - started
    wrk_cpu = _children_cpu_s() - children_before
    cores_after = read_cpu_times()
    proxy_after = _samples(proxy_pids)
    backends_cpu = cpu_seconds(backend_pids) - backends_before
    rest_cpu = cpu_seconds(rest_pids) - rest_before
    others_cpu, others = cpu_seconds_of_others(everyone_before, cpu_ticks_by_pid(), our_pids)
    try:
        result = parse_wrk_output(done.stdout)
    except ValueError as exc:
        raise RuntimeError(f"wrk against {variant.name} failed (exit {done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}") from exc
    requests = result.requests
    both = [pid for pid in proxy_pids if pid in proxy_before and pid in proxy_after]
    cpu_by_role = {roles[pid]: (proxy_after[pid].ticks - proxy_before[pid].ticks) / CLOCK_TICKS for pid in both}
    proxy_cpu = sum(cpu_by_role.values())
    user = sum(proxy_after[pid].user_ticks - proxy_before[pid].user_ticks for pid in both) / CLOCK_TICKS
    voluntary = sum(proxy_after[pid].voluntary - proxy_before[pid].voluntary for pid in both)
    involuntary = sum(proxy_after[pid].involuntary - proxy_before[pid].involuntary for pid in both)
    busy = core_busy(cores_before, cores_after)
    busy_seconds = sum(v["busy_seconds"] for v in busy.values())
    gone = [pid for pid in proxy_pids if pid not in proxy_after]
    new = sorted(set(roles_of(variant.process)) - set(proxy_pids))
    return {
        "variant": variant.name,
        "wall_s": round(wall, 3),
        "wrk": result.to_json(),
        "requests_per_s": result.requests_per_s,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "proxy_processes": {str(pid): role for pid, role in sorted(roles.items())},
        "proxy_cpu_s": round(proxy_cpu, 3),
        "proxy_cpu_s_by_role": {role: round(cpu, 3) for role, cpu in sorted(cpu_by_role.items())},
        "proxy_cpu_us_per_request": per_request_us(proxy_cpu, requests),
        "proxy_cpu_us_per_request_by_role": {
            role: per_request_us(cpu, requests) for role, cpu in sorted(cpu_by_role.items())
        },
        "proxy_user_us_per_request": per_request_us(user, requests),
        "proxy_system_us_per_request": per_request_us(proxy_cpu - user, requests),
        # Per request, over the proxy's processes: voluntary switches (it waited for
        # events), involuntary ones (the scheduler gave its core to another process).
        "proxy_voluntary_switches_per_request": round(voluntary / requests, 4) if requests else None,
        "proxy_involuntary_switches_per_request": round(involuntary / requests, 4) if requests else None,
        "proxy_cores": round(proxy_cpu / wall, 3) if wall > 0 else None,
        "proxy_machine_share": round(proxy_cpu / wall / rig.cores, 3) if wall > 0 else None,
        "worker_spread": worker_spread(cpu_by_role, wall),
        "wrk_cores": round(wrk_cpu / wall, 3) if wall > 0 else None,
        "backends_cores": round(backends_cpu / wall, 3) if wall > 0 else None,
        # Our other processes (the control plane and Redis, the proxies not measured): ~0.
        "rest_of_ours_cores": round(rest_cpu / wall, 3) if wall > 0 else None,
        "machine_busy_share": round(busy_seconds / wall / rig.cores, 3) if wall > 0 else None,
        "core_busy_fraction": {str(c): round(v["busy_fraction"], 3) for c, v in busy.items()},
        "foreign_cpu_cores": round(others_cpu / wall, 3) if wall > 0 else None,
        "foreign_pids": [pid for pid, _ in others[:5]],
        "proxy_processes_gone": gone,
        "proxy_processes_new": new,
    }


def measure_undisturbed(rig: Rig, variant: Variant, *, retries: int, **kwargs: Any) -> dict[str, Any]:
    """:func:`measure`, again after a pause while other work shares the machine (as
    proxy_bench does); keeps the least disturbed attempt."""
    attempts = []
    for attempt in range(retries + 1):
        run = measure(rig, variant, **kwargs)
        attempts.append(run)
        foreign = run["foreign_cpu_cores"] or 0.0
        if foreign <= FOREIGN_CPU_LIMIT:
            break
        if attempt < retries:
            _log(f"  {variant.name}: disturbed ({foreign:.2f} of a core not ours); again in {DISTURBED_PAUSE_S:g} s")
            time.sleep(DISTURBED_PAUSE_S)
    best = min(attempts, key=lambda r: r["foreign_cpu_cores"] or 0.0)
    best["attempts"] = len(attempts)
    best["disturbed"] = (best["foreign_cpu_cores"] or 0.0) > FOREIGN_CPU_LIMIT
    return best


def _line(run: dict[str, Any]) -> str:
    spread = run["worker_spread"]
    shares = (" workers " + "/".join(f"{s * 100:.0f}%" for s in spread["share"].values())
              if spread["workers"] >= 2 else "")
    foreign = run.get("foreign_cpu_cores") or 0.0
    return (f"{run['requests_per_s']:>10,.0f} req/s  p99 {run['p99_ms']:.3f} ms  "
            f"CPU {_num(run['proxy_cpu_us_per_request'], '.1f')} µs/req  {run['proxy_cores']:.2f} cores"
            f"{shares}  errors {run['errors']}"
            + (f"  [disturbed: {foreign:.2f} of a core not ours]" if foreign > FOREIGN_CPU_LIMIT else ""))


# --------------------------------------------------------------------------- the scenario


def run(options: BenchOptions) -> dict[str, Any]:
    missing = missing_tools(REQUIRED_TOOLS)
    if missing:
        raise BenchUnavailable(f"missing tools: {', '.join(missing)} (make bench installs them)")
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        raise BenchUnavailable(f"two workers need two cores; this process may use {usable}")
    base = options.work_dir / "workers"
    www = prepare_site(base)
    duration, connections, rounds = options.duration, options.connections, options.rounds
    warmup = 1.0 if options.quick else 2.0
    check_s = 2.0 if options.quick else 3.0
    retries = 1 if options.quick else DISTURBED_RETRIES
    warnings: list[str] = []

    with ProcessSet() as procs:
        backend_ports = [free_port(), free_port()]
        _log(f"starting the backends (nginx, 1 worker, ports {backend_ports}); nothing is pinned")
        backends = start_nginx(procs, "backends", base / "backends",
                               nginx_backend_conf(base / "backends", backend_ports, www))
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{backend_ports[0]}{URL_PATH}"), "the nginx backends",
                   [backends])

        _log("starting Ferry: a control plane (+ embedded Redis), data planes --workers 1 and --workers 2")
        control_plane, admin, cluster_port = start_control_plane(procs, options, base / "ferry", backend_ports)
        nodes: dict[str, dict[str, Any]] = {}
        variants: dict[str, Variant] = {}
        for workers in (1, 2):
            node, url, info = start_data_plane(procs, options, base / "ferry", admin=admin,
                                               cluster_port=cluster_port, workers=workers,
                                               control_plane=control_plane)
            variants[f"ferry-{workers}"] = Variant(f"ferry-{workers}", url, node, workers)
            nodes[f"ferry-{workers}"] = info
        _log("starting nginx as the proxy with 1 and with 2 workers")
        for workers in (1, 2):
            port = free_port()
            conf = nginx_workers_conf(nginx_proxy_conf(base / f"nginx-{workers}", port, backend_ports), workers)
            proc = start_nginx(procs, f"nginx-{workers}", base / f"nginx-{workers}", conf)
            variants[f"nginx-{workers}"] = Variant(f"nginx-{workers}", f"http://127.0.0.1:{port}{URL_PATH}",
                                                   proc, workers)
        wait_until(lambda: all(_http_ok(variants[n].url) for n in ("nginx-1", "nginx-2")), "nginx as the proxy",
                   [variants["nginx-1"].process, variants["nginx-2"].process])
        checks: dict[str, Any] = {
            name: check_target(Target(name, v.url, v.process)) for name, v in variants.items()
        }
        checks["ferry_nodes"] = nodes
        for name, variant in variants.items():
            roles = roles_of(variant.process)
            workers_seen = sum(1 for role in roles.values() if role.startswith("worker"))
            expected = variant.workers if variant.workers > 1 or name.startswith("nginx") else 0
            if workers_seen != expected:
                raise RuntimeError(f"{name}: processes {roles}, expected {expected} worker process(es)")
        affinity: dict[str, Any] = {"benchmark and wrk": sorted(os.sched_getaffinity(0))}
        for name, process in [(n, v.process) for n, v in variants.items()] + [
            ("backends", backends), ("control plane", control_plane)
        ]:
            affinity[name] = sorted(thread_affinities(process.pids()))
        pinned = {name: a for name, a in affinity.items()
                  if name != "benchmark and wrk" and any(parse_cpu_list(x) != set(usable) for x in a)}
        if pinned:
            warnings.append(f"some processes are limited to fewer cores than the benchmark's {usable}: {pinned}")

        rig = Rig(procs=procs, backends=backends, cores=len(usable))
        ours = {pid for p in procs.processes for pid in p.pids()}
        background = wait_for_quiet(ours, QUIET_WAIT_S / 6 if options.quick else QUIET_WAIT_S)
        busy_cores = {c: f for c, f in background["core_busy_fraction"].items() if f > QUIET_LIMIT}
        if busy_cores:
            warnings.append("the machine was not idle before the runs (core busy: "
                            + ", ".join(f"{c}: {f * 100:.0f}%" for c, f in busy_cores.items()) + ")")
            _log(f"WARNING: {warnings[-1]}")

        _log(f"warm-up: {warmup:g} s per variant")
        for variant in variants.values():
            measure(rig, variant, duration=warmup, connections=connections)
            time.sleep(SETTLE_S)

        _log(f"check: did both workers serve? ({check_s:g} s against each 2-worker proxy)")
        spread_checks: dict[str, Any] = {}
        for name in ("ferry-2", "nginx-2"):
            check = measure(rig, variants[name], duration=check_s, connections=connections)
            spread = dict(check["worker_spread"], requests=check["wrk"]["requests"], wall_s=check["wall_s"],
                          processes=check["proxy_processes"])
            spread_checks[name] = spread
            _log(f"  {name}: " + ", ".join(f"{r} {c:.2f} s CPU ({spread['share'][r] * 100:.0f}%)"
                                           for r, c in spread["cpu_s"].items())
                 + f" → {'both served' if spread['all_served'] else 'NOT both'}")
            time.sleep(SETTLE_S)
        checks["worker_spread"] = spread_checks
        if not spread_checks["ferry-2"]["all_served"]:
            raise RuntimeError(
                "Ferry --workers 2: the workers did not both serve during the check run "
                f"({spread_checks['ferry-2']['cpu_s']}); not measuring a 2-worker node that proxies on one"
            )
        if not spread_checks["nginx-2"]["all_served"]:
            warnings.append(f"nginx (2 workers): the workers did not both serve in the check run "
                            f"({spread_checks['nginx-2']['cpu_s']})")

        runs: list[dict[str, Any]] = []
        for round_index in range(rounds):
            order = rotated(VARIANTS, round_index)
            _log(f"round {round_index + 1}/{rounds}: {', '.join(order)}")
            for position, name in enumerate(order):
                run_ = measure_undisturbed(rig, variants[name], retries=retries, duration=duration,
                                           connections=connections)
                run_.update(round=round_index + 1, position=position)
                runs.append(run_)
                _log(f"  {name:<8}{_line(run_)}")
                time.sleep(SETTLE_S)
        for name, variant in variants.items():
            if not variant.process.alive():
                warnings.append(f"{name} exited during the runs; see {variant.process.log_path}")

    summary = summarize(runs)
    for run_ in runs:
        if run_["proxy_processes_gone"] or run_["proxy_processes_new"]:
            warnings.append(f"{run_['variant']} round {run_['round']}: processes came or went during the run "
                            f"(gone {run_['proxy_processes_gone']}, new {run_['proxy_processes_new']})")
        if run_["worker_spread"]["all_served"] is False:
            warnings.append(f"{run_['variant']} round {run_['round']}: a worker did little of the work "
                            f"({run_['worker_spread']['share']})")
    for name, row in summary.items():
        if row["errors"]:
            warnings.append(f"{LABELS[name]}: {row['errors']} errors (socket errors or non-2xx)")
    disturbed = [r for r in runs if r.get("disturbed")]
    if disturbed:
        worst = max(r["foreign_cpu_cores"] for r in disturbed)
        warnings.append(f"{len(disturbed)} of {len(runs)} runs shared the machine with other work even after "
                        f"{retries} retries (up to {worst:.2f} of a core not ours)")
    retried = sum(r.get("attempts", 1) - 1 for r in runs)
    if retried:
        warnings.append(f"{retried} disturbed run(s) were measured again (other work shared the machine)")

    result: dict[str, Any] = {
        "scenario": "workers",
        "settings": {
            "duration_s": duration,
            "connections": connections,
            "wrk_threads": WRK_THREADS,
            "rounds": rounds,
            "warmup_s": warmup,
            "check_s": check_s,
            "body_bytes": len(body_text()),
            "path": URL_PATH,
            "cores": len(usable),
            "pinning": "none: every process may run on every core",
            "order": "rotating: round k starts at the k-th of " + ", ".join(VARIANTS),
            "disturbed_retries": retries,
            "disturbed_limit_cores": FOREIGN_CPU_LIMIT,
            "min_worker_share": MIN_WORKER_SHARE,
            "min_worker_cores": MIN_WORKER_CORES,
        },
        "method": {
            "ferry": "one control plane (+ embedded Redis) configured as in the proxy scenario; two data-plane "
                     "nodes following it, --workers 1 (the node proxies itself) and --workers 2 (node + two "
                     "worker processes on one port, SO_REUSEPORT); both up for the whole run",
            "nginx": "proxy_bench's nginx proxy config with worker_processes 1, and 2 with listen ... reuseport",
            "unpinned": "no taskset for anyone: on 2 cores two proxy workers need both cores, so wrk and the "
                        "backends share them with the proxy",
            "cpu_time": "utime+stime from /proc/<pid>/stat of every process of the proxy (Ferry: the node and "
                        "its workers; nginx: master and workers) before and after each wrk run, summed, divided "
                        "by the requests wrk completed; wrk's from RUSAGE_CHILDREN; cores from /proc/stat; "
                        "context switches from /proc/<pid>/status",
            "worker_check": f"a {check_s:g} s run against each 2-worker proxy before measuring; every worker "
                            f"must have used ≥ {MIN_WORKER_SHARE:.0%} of the workers' CPU and ≥ "
                            f"{MIN_WORKER_CORES} of a core (Ferry: else the scenario fails)",
        },
        "checks": checks,
        "affinity": affinity,
        "background": background,
        "peak": {"summary": summary, "runs": runs},
        "scaling": scaling(summary, runs),
        "warnings": warnings,
    }
    print(render(result), flush=True)
    return result

