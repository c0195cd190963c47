"""Failover: steady load through one data plane to 3 targets; one target is killed.

Real processes: a control plane (embedded Redis), one data plane, three backends
(``python -m ferry.demo_backend``, each answering with its name in the
``X-Demo-Backend`` header). The upstream has active HTTP checks (every second,
one failure of any kind marks a target unhealthy) and passive checks (one TCP
failure or one timeout ejects a target); the service keeps Kong's default of 5
retries. A closed-loop client in this process (``connections`` concurrent
keep-alive workers, idempotent ``GET``s) runs for ``duration`` seconds; at 30 % of
it one backend gets SIGKILL.

Measured per round:

- the client-visible errors (non-2xx answers and connection errors), before and
  after the kill — goal: none;
- the time from the kill until the data plane stops trying the dead target: the
  data plane's own time of the UNHEALTHY transition (the ``updated_at`` it reports
  to the control plane, same clock as the kill), cross-checked by polling the data
  plane's ``/upstreams/{u}/health`` every 20 ms (an upper bound);
- latency before the kill, in the second after it, and after.

The outlier case (issue 18): the same load, but at 30 % of the run one backend starts
answering 30 % of requests with 500 (its ``/health`` stays 200; ``ferry.demo_backend
--fail-percent``, switched on by SIGUSR1). Each round runs twice, with passive checks
alone (Kong's counters, no active probes, which would find nothing) and with the same
plus ``outlier_detection``; the client-visible errors are reported side by side (goal:
fewer with outlier detection). 500s are not retried (Kong retries connection errors
only), so every 500 the failing target sends reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.cluster_support import (
    BenchError,
    ControlPlaneProc,
    DataPlaneProc,
    ManagedProcess,
    Processes,
    admin_call,
    cp_version,
    format_table,
    free_port,
    get_json,
    ms,
    no_leftovers,
    start_control_plane,
    start_data_plane,
    summarize,
    wait_for_quiet_machine,
    wait_http_ok,
)
from bench.options import BenchOptions

UPSTREAM = "failover"
BACKENDS = ("b1", "b2", "b3")

HEALTHCHECKS: dict[str, Any] = {
    "active": {
        "type": "http",
        "http_path": "/health",
        "timeout": 1,
        "healthy": {"interval": 1, "successes": 2},
        "unhealthy": {"interval": 1, "tcp_failures": 1, "timeouts": 1, "http_failures": 1},
    },
    "passive": {
        "type": "http",
        "unhealthy": {"tcp_failures": 1, "timeouts": 1},
    },
}

#: The outlier case's failing share (%) of the degraded backend.
FAIL_PERCENT = 30

#: Passive checks alone, as the kill case has them: one TCP failure or timeout ejects;
#: 500s count for nothing (a single application error must not eject a target).
PASSIVE_CONNECTION: dict[str, Any] = {
    "passive": {"type": "http", "unhealthy": {"tcp_failures": 1, "timeouts": 1}},
}

#: Passive checks alone with Kong's HTTP counter too: 5 consecutive 500s eject (a
#: success resets the count); Ferry's half-open breaker (30 s) for all of them.
PASSIVE_HTTP: dict[str, Any] = {
    "passive": {"type": "http", "unhealthy": {"http_failures": 5, "tcp_failures": 1, "timeouts": 1}},
}

#: The same plus outlier detection every 0.5 s. Three targets: Envoy's stdev factor of
#: 1.9 can never eject a lone deviant among three (it is sqrt(2) = 1.41 standard
#: deviations off the mean), so 1.0 here, and the failure-percentage rule at 20 %.
WITH_OUTLIER: dict[str, Any] = {
    "passive": {
        **PASSIVE_HTTP["passive"],
        "outlier_detection": {
            "interval": 0.5,
            "success_rate": {"minimum_hosts": 3, "request_volume": 50, "stdev_factor": 1000},
            "failure_percentage": {"threshold": 20, "minimum_hosts": 3, "request_volume": 50},
        },
    },
}

#: The outlier case's configurations, in the order they are run and reported.
OUTLIER_CASES: tuple[tuple[str, dict[str, Any]], ...] = (
    ("passive_connection_failures", PASSIVE_CONNECTION),
    ("passive_http_failures", PASSIVE_HTTP),
    ("with_outlier_detection", WITH_OUTLIER),
)


@dataclass(slots=True)
class Outcome:
    """One client request: when it started and ended, and what came back."""

    start: float
    end: float
    status: int | None  # None: a connection error or timeout
    backend: str | None
    error: str | None = None


def classify(outcomes: Sequence[Outcome], t_kill: float) -> dict[str, Any]:
    """Errors and traffic split at the kill (a request counts where it started)."""
    before = [o for o in outcomes if o.start < t_kill]
    after = [o for o in outcomes if o.start >= t_kill]

    def errors(group: Sequence[Outcome]) -> dict[str, int]:
        found: Counter[str] = Counter()
        for o in group:
            if o.status is None:
                found[o.error or "connection error"] += 1
            elif not 200 <= o.status < 300:
                found[f"HTTP {o.status}"] += 1
        return dict(found)

    errors_before, errors_after = errors(before), errors(after)
    return {
        "requests": len(outcomes),
        "requests_before_kill": len(before),
        "requests_after_kill": len(after),
        "errors_before_kill": errors_before,
        "errors_after_kill": errors_after,
        "client_errors": sum(errors_before.values()) + sum(errors_after.values()),
        "backends_before_kill": dict(Counter(o.backend for o in before if o.backend)),
        "backends_after_kill": dict(Counter(o.backend for o in after if o.backend)),
    }


def latency_windows(outcomes: Sequence[Outcome], t_kill: float, window: float = 1.0) -> dict[str, Any]:
    """Latency (ms) of requests started before the kill, within ``window`` s after, and later."""
    groups: dict[str, list[float]] = {"before_kill": [], "first_second_after": [], "later": []}
    for o in outcomes:
        key = ("before_kill" if o.start < t_kill
               else "first_second_after" if o.start < t_kill + window else "later")
        groups[key].append(ms(o.end - o.start))
    return {key: summarize(values) for key, values in groups.items()}


def dead_target_transition(health: dict[str, Any], target: str) -> dict[str, Any] | None:
    """The data plane's own UNHEALTHY transition of ``target`` in the CP's health view.

    ``health`` is ``GET /upstreams/{u}/health`` of the control plane: per target,
    ``data_planes[].addresses[]`` hold each address's state, reason and
    ``updated_at`` (the DP's clock). Returns ``{"time", "reason"}`` or None.
    """
    for row in health.get("data", []):
        if row.get("target") != target:
            continue
        for dp in row.get("data_planes") or []:
            for address in dp.get("addresses", []):
                if address.get("health") == "UNHEALTHY":
                    return {"time": float(address["updated_at"]), "reason": address.get("reason")}
    return None


def run(options: BenchOptions) -> dict[str, Any]:
    rounds = 1 if options.quick else max(1, options.rounds)
    duration = min(options.duration, 4.0) if options.quick else options.duration
    workers = max(1, min(options.connections, 64))
    base = Path(options.work_dir)
    base.mkdir(parents=True, exist_ok=True)
    ferry_bin = Path(options.ferry_bin)
    if not ferry_bin.is_absolute():
        ferry_bin = Path.cwd() / ferry_bin
    background = wait_for_quiet_machine(options.quick)
    results = []
    for n in range(rounds):
        work = Path(tempfile.mkdtemp(prefix=f"failover-{n}-", dir=base))
        results.append(asyncio.run(_round(work, ferry_bin, duration, workers)))
    cases: dict[str, list[dict[str, Any]]] = {case: [] for case, _ in OUTLIER_CASES}
    for n in range(rounds):
        for case, checks in OUTLIER_CASES:
            work = Path(tempfile.mkdtemp(prefix=f"failover-outlier-{n}-", dir=base))
            cases[case].append(
                asyncio.run(_round(work, ferry_bin, duration, workers, checks, degrade=True))
            )
    eject = [r["eject_ms"] for r in results if r["eject_ms"] is not None]
    summary = {
        "rounds": rounds,
        "duration_s": duration,
        "workers": workers,
        "client_errors_total": sum(r["client_errors"] for r in results),
        "requests_total": sum(r["requests"] for r in results),
        "eject_ms": summarize(eject),
        "goal": "zero client-visible errors for idempotent requests",
        "goal_met": all(r["client_errors"] == 0 for r in results),
        "per_round": results,
        "outlier_case": _outlier_summary(cases),
        "background_before": background,
    }
    _print(summary)
    return summary


def _outlier_summary(cases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"fail_percent": FAIL_PERCENT}
    for case, results in cases.items():
        out[case] = {
            "client_errors_total": sum(r["client_errors"] for r in results),
            "requests_total": sum(r["requests"] for r in results),
            "errors_after_failing_total": sum(sum(r["errors_after_kill"].values()) for r in results),
            "requests_after_failing_total": sum(r["requests_after_kill"] for r in results),
            "per_round": results,
        }
    outlier = out["with_outlier_detection"]["client_errors_total"]
    out["goal"] = "fewer client errors with outlier detection than with passive checks alone"
    out["goal_met"] = all(
        outlier < out[case]["client_errors_total"] for case, _ in OUTLIER_CASES[:-1]
    )
    return out


async def _round(
    work: Path, ferry_bin: Path, duration: float, workers: int,
    healthchecks: dict[str, Any] = HEALTHCHECKS, *, degrade: bool = False,
) -> dict[str, Any]:
    """One round: with ``degrade``, the victim starts failing ``FAIL_PERCENT`` % of
    requests at 30 % of the run instead of being killed."""
    processes = Processes(work / "logs")
    try:
        async with aiohttp.ClientSession() as http:
            backends: dict[str, tuple[ManagedProcess, int]] = {}
            for name in BACKENDS:
                port = free_port()
                fail = ["--fail-percent", str(FAIL_PERCENT)] if degrade and name == BACKENDS[0] else []
                process = processes.start(name, [sys.executable, "-m", "ferry.demo_backend",
                                                  "--name", name, "--port", str(port), *fail])
                backends[name] = (process, port)
            cp = start_control_plane(processes, ferry_bin, work / "cp", "--merge-window", "0.01")
            await wait_http_ok(http, f"{cp.admin}/status", cp.process)
            for process, port in backends.values():
                await wait_http_ok(http, f"http://127.0.0.1:{port}/health", process)
            await _configure(http, cp, [port for _, port in backends.values()], healthchecks)
            dp = start_data_plane(processes, ferry_bin, work / "dp", cp.cluster, name="dp")
            version = await cp_version(http, cp)
            await _wait_ready(http, dp, version)
            result = await _load_and_kill(http, cp, dp, backends, duration, workers, degrade)
            if dp.process.returncode is not None:
                raise BenchError(f"the data plane died:\n{dp.process.log_tail()}")
    finally:
        processes.stop_all()
    result["leftover_processes"] = no_leftovers(processes)
    return result


async def _configure(
    http: aiohttp.ClientSession, cp: ControlPlaneProc, ports: list[int], healthchecks: dict[str, Any]
) -> None:
    await admin_call(http, "PUT", f"{cp.admin}/upstreams/{UPSTREAM}",
                     {"algorithm": "round-robin", "healthchecks": healthchecks})
    for port in ports:
        await admin_call(http, "POST", f"{cp.admin}/upstreams/{UPSTREAM}/targets",
                         {"target": f"127.0.0.1:{port}"})
    await admin_call(http, "PUT", f"{cp.admin}/services/{UPSTREAM}", {"host": UPSTREAM, "port": 80})
    await admin_call(http, "PUT", f"{cp.admin}/routes/{UPSTREAM}",
                     {"paths": ["/fo"], "service": {"name": UPSTREAM}})


async def _wait_ready(http: aiohttp.ClientSession, dp: DataPlaneProc, version: int) -> None:
    await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = await get_json(http, f"{dp.status}/status")
        if (status.get("configuration_version") or 0) >= version:
            health = await get_json(http, f"{dp.status}/upstreams/{UPSTREAM}/health")
            states = [t["health"] for t in health.get("data", [])]
            if len(states) == len(BACKENDS) and all(s == "HEALTHY" for s in states):
                # Every backend answers through the proxy.
                seen = set()
                for _ in range(20):
                    async with http.get(f"{dp.proxy}/fo/warmup") as response:
                        seen.add(response.headers.get("X-Demo-Backend"))
                if seen >= set(BACKENDS):
                    return
        await asyncio.sleep(0.1)
    raise BenchError("the data plane did not get the failover config with 3 healthy targets")


async def _load_and_kill(
    http: aiohttp.ClientSession, cp: ControlPlaneProc, dp: DataPlaneProc,
    backends: dict[str, tuple[ManagedProcess, int]], duration: float, workers: int,
    degrade: bool = False,
) -> dict[str, Any]:
    victim = BACKENDS[0]
    victim_process, victim_port = backends[victim]
    victim_target = f"127.0.0.1:{victim_port}"
    outcomes: list[Outcome] = []
    stop_at = time.time() + duration
    kill_at = time.time() + duration * 0.3
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=workers, force_close=False)
    url = f"{dp.proxy}/fo/anything"

    async def worker() -> None:
        async with aiohttp.ClientSession(connector=connector, connector_owner=False) as client:
            while time.time() < stop_at:
                start = time.time()
                try:
                    async with client.get(url, timeout=timeout) as response:
                        await response.read()
                        outcomes.append(Outcome(start, time.time(), response.status,
                                                response.headers.get("X-Demo-Backend")))
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    outcomes.append(Outcome(start, time.time(), None, None, type(exc).__name__))

    seen_unhealthy: list[float] = []

    async def watch_dp() -> None:
        """Poll the DP's own view until it shows the victim UNHEALTHY (an upper bound)."""
        while time.time() < stop_at:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                health = await get_json(http, f"{dp.status}/upstreams/{UPSTREAM}/health", 2)
                for row in health.get("data", []):
                    if row["target"] == victim_target and row["health"] == "UNHEALTHY":
                        seen_unhealthy.append(time.time())
                        return
            await asyncio.sleep(0.02)

    async def killer() -> float:
        await asyncio.sleep(max(0.0, kill_at - time.time()))
        t_kill = time.time()
        if degrade:
            os.kill(victim_process.pid, signal.SIGUSR1)  # start failing FAIL_PERCENT %
        else:
            victim_process.kill()
        return t_kill

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    kill_task = asyncio.create_task(killer())
    t_kill = await kill_task
    watcher = asyncio.create_task(watch_dp())
    await asyncio.gather(*tasks)
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    await connector.close()

    # The DP's own transition time, as it reported it to the control plane.
    transition = None
    deadline = time.monotonic() + 10
    while transition is None and time.monotonic() < deadline:
        health = await get_json(http, f"{cp.admin}/upstreams/{UPSTREAM}/health")
        transition = dead_target_transition(health, victim_target)
        if transition is None:
            await asyncio.sleep(0.2)
    from_victim = [o for o in outcomes if o.backend == victim]
    result: dict[str, Any] = {
        "victim": victim,
        "event": f"fails {FAIL_PERCENT}% of requests" if degrade else "SIGKILL",
        "kill_at_s": round(t_kill - (stop_at - duration), 2),
        "rate_rps": round(len(outcomes) / duration),
        **classify(outcomes, t_kill),
        "eject_ms": round(ms(transition["time"] - t_kill), 2) if transition else None,
        "eject_reason": transition["reason"] if transition else None,
        "eject_seen_by_polling_ms": round(ms(seen_unhealthy[0] - t_kill), 1) if seen_unhealthy else None,
        "last_victim_answer_after_kill_ms": (
            round(ms(max(o.end for o in from_victim) - t_kill), 2) if from_victim else None
        ),
        "latency_ms": latency_windows(outcomes, t_kill),
    }
    return result


def _print(summary: dict[str, Any]) -> None:
    print(f"\nFailover: {summary['rounds']} round(s) of {summary['duration_s']:.0f} s, "
          f"{summary['workers']} concurrent clients, one of 3 targets SIGKILLed at 30 %")
    rows = []
    for n, r in enumerate(summary["per_round"]):
        lat = r["latency_ms"]
        rows.append([
            n + 1, r["requests"], r["rate_rps"], r["client_errors"], r["eject_ms"],
            r["eject_seen_by_polling_ms"], r["eject_reason"],
            lat["before_kill"].get("p99"), lat["first_second_after"].get("p99"),
            lat["first_second_after"].get("max"),
        ])
    print(format_table(["round", "requests", "req/s", "errors", "eject ms", "polled ms",
                        "reason", "p99 before", "p99 1s after", "max 1s after"], rows))
    print(f"goal: {summary['goal']} — {'met' if summary['goal_met'] else 'MISSED'} "
          f"({summary['client_errors_total']} errors in {summary['requests_total']} requests)")
    outlier = summary["outlier_case"]
    print(f"\nOutlier case: one of 3 targets starts answering {outlier['fail_percent']} % of "
          "requests with 500 at 30 % of each run")
    rows = []
    for case, _ in OUTLIER_CASES:
        for n, r in enumerate(outlier[case]["per_round"]):
            rows.append([case, n + 1, r["requests"], r["client_errors"], r["eject_ms"], r["eject_reason"]])
    print(format_table(["checks", "round", "requests", "errors", "eject ms", "reason"], rows))
    totals = ", ".join(
        f"{case} {outlier[case]['client_errors_total']}/{outlier[case]['requests_total']}"
        for case, _ in OUTLIER_CASES
    )
    print(f"goal: {outlier['goal']} — {'met' if outlier['goal_met'] else 'MISSED'} "
          f"(errors/requests: {totals})")
