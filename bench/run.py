"""``python -m bench.run``: run the benchmark scenarios, print them, write the results.

Scenarios (``--only``, comma-separated; all by default):

- ``proxy``: proxy throughput and latency next to nginx and HAProxy (bench/proxy_bench.py);
- ``python-path``: the proxy's own CPU per request without sockets, compiled and
  pure Python (bench/python_path.py);
- ``workers``: ``ferry data-plane --workers 1`` against ``--workers 2``, unpinned (bench/workers_bench.py);
- ``propagation``, ``scale``: config propagation and control-plane scale (bench/cluster_bench.py);
- ``failover``: failover scenarios (bench/failover_bench.py);
- ``tls``: HTTPS on the proxy port next to nginx: keep-alive and new handshakes (bench/tls_bench.py);
- ``http2``: HTTP/2 (TLS and h2c) and gRPC unary calls next to nginx, h2load (bench/h2_bench.py).

Each module exposes ``run(options: BenchOptions) -> dict``; for one scenario of a
module that has several, the runner calls ``run_<scenario>(options)`` when the module
has it. A module that does not exist yet is skipped with a message. The results, with
the machine they were measured on, go to ``bench/results/<UTC timestamp>.json`` (this
run) and ``bench/results/latest.json`` (the newest figures of every scenario measured on
this machine; see bench/results.py).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.machine import REPO, machine_info
from bench.options import BenchOptions
from bench.procs import sigterm_as_interrupt
from bench.results import RESULTS_DIR, write_results

SCENARIOS = ("proxy", "python-path", "workers", "propagation", "scale", "failover", "tls", "http2")
#: module → the scenarios its ``run(options)`` produces.
MODULES: dict[str, tuple[str, ...]] = {
    "bench.proxy_bench": ("proxy",),
    "bench.python_path": ("python-path",),
    "bench.workers_bench": ("workers",),
    "bench.cluster_bench": ("propagation", "scale"),
    "bench.failover_bench": ("failover",),
    "bench.tls_bench": ("tls",),
    "bench.h2_bench": ("http2",),
}


def parse_only(value: str | None) -> list[str]:
    """``--only proxy,scale`` → ``["proxy", "scale"]`` (in the canonical order)."""
    if not value:
        return list(SCENARIOS)
    asked = {part.strip() for part in value.split(",") if part.strip()}
    unknown = sorted(asked - set(SCENARIOS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}"
        )
    return [name for name in SCENARIOS if name in asked]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Run Ferry's benchmarks and write bench/results/<timestamp>.json and latest.json.",
    )
    parser.add_argument("--only", help=f"comma-separated scenarios: {','.join(SCENARIOS)} (default: all)")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 10; --quick: 3)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; --quick: 1)")
    parser.add_argument("--quick", action="store_true",
                        help="a short run that checks the harness (3 s runs, 1 round): not figures to quote")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help=f"where the JSON goes (default {RESULTS_DIR.relative_to(REPO)})")
    parser.add_argument("--ferry-bin", type=Path, default=None,
                        help="the ferry executable (default: the one next to this Python)")
    parser.add_argument("--keep-work-dir", action="store_true",
                        help="keep the temporary directory with configs and logs")
    return parser


def default_ferry_bin() -> Path:
    beside = Path(sys.executable).with_name("ferry")
    if beside.exists():
        return beside
    found = shutil.which("ferry")
    return Path(found) if found else REPO / ".venv" / "bin" / "ferry"


def build_options(args: argparse.Namespace, work_dir: Path) -> BenchOptions:
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if duration < 1 or rounds < 1 or args.connections < 1:
        raise SystemExit("bench.run: --duration ≥ 1, --rounds ≥ 1 and --connections ≥ 1")
    return BenchOptions(
        duration=duration,
        connections=args.connections,
        rounds=rounds,
        quick=args.quick,
        results_dir=args.results_dir,
        ferry_bin=args.ferry_bin or default_ferry_bin(),
        work_dir=work_dir,
    )


def load_module(name: str) -> ModuleType | None:
    """The scenario module, or None when its file does not exist (yet)."""
    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def _module_path(name: str) -> str:
    return name.replace(".", "/") + ".py"


def run_module(module: ModuleType, wanted: Sequence[str], provides: Sequence[str],
               options: BenchOptions) -> dict[str, Any]:
    """Run ``wanted`` scenarios of ``module``; return ``{scenario: figures}``."""
    if len(wanted) < len(provides):
        single = {name: getattr(module, f"run_{name}", None) for name in wanted}
        if all(callable(fn) for fn in single.values()):
            return {name: fn(options) for name, fn in single.items()}  # type: ignore[misc]
    figures = module.run(options)
    if len(provides) == 1:
        return {provides[0]: figures}
    if isinstance(figures, dict) and any(name in figures for name in provides):
        return {name: figures[name] for name in provides if name in figures}
    return {"+".join(provides): figures}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        selected = parse_only(args.only)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    started = datetime.now(UTC)
    work_dir = Path(tempfile.mkdtemp(prefix="ferry-bench-"))
    options = build_options(args, work_dir)
    payload: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench.run", *(argv if argv is not None else sys.argv[1:])],
        "machine": machine_info(),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "selected": selected,
        "results": {},
        "skipped": {},
        "errors": {},
    }
    m = payload["machine"]
    print(f"Machine: {m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}, {m['os']}; "
          f"nginx {m['nginx']}, HAProxy {m['haproxy']}, wrk {m['wrk']}, Python {m['python']}, "
          f"Ferry {m['ferry']} @ {(m['ferry_git']['commit'] or '?')[:12]}"
          f"{' (+ uncommitted changes)' if m['ferry_git']['dirty'] else ''}", flush=True)
    print(f"Options: {options.rounds} round(s) × {options.duration:g} s, {options.connections} connections"
          f"{' (quick: checks the harness; not figures to quote)' if options.quick else ''}; "
          f"work dir {work_dir}", flush=True)
    interrupted = False
    try:
        with sigterm_as_interrupt():
            for module_name, provides in MODULES.items():
                wanted = [name for name in provides if name in selected]
                if not wanted:
                    continue
                module = load_module(module_name)
                if module is None or not callable(getattr(module, "run", None)):
                    message = (f"skipping {', '.join(wanted)}: {_module_path(module_name)} "
                               f"{'does not exist yet' if module is None else 'has no run(options)'}")
                    print(f"\n== {message}", flush=True)
                    for name in wanted:
                        payload["skipped"][name] = message
                    continue
                print(f"\n== {', '.join(wanted)} ({_module_path(module_name)})", flush=True)
                began = time.monotonic()
                try:
                    figures = run_module(module, wanted, provides, options)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:  # one scenario's failure must not lose the others
                    traceback.print_exc()
                    unavailable = type(exc).__name__.endswith("Unavailable")
                    target = payload["skipped"] if unavailable else payload["errors"]
                    for name in wanted:
                        target[name] = f"{type(exc).__name__}: {exc}"
                    print(f"== {', '.join(wanted)}: {'skipped' if unavailable else 'FAILED'}: {exc}",
                          file=sys.stderr, flush=True)
                    continue
                payload["results"].update(figures)
                print(f"== {', '.join(wanted)}: done in {time.monotonic() - began:.0f} s", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench.run: interrupted; every process it started has been stopped; no results written",
              file=sys.stderr)
    finally:
        if args.keep_work_dir:
            print(f"work dir kept: {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    if interrupted:
        return 130
    finished = datetime.now(UTC)
    payload["finished_at"] = finished.isoformat(timespec="seconds")
    if payload["results"]:
        stamped, latest = write_results(options.results_dir, payload, finished)
        print(f"\nresults: {_relative(stamped)} (this run) and {_relative(latest)} "
              "(the newest figures of every scenario)")
    else:
        print("\nno scenario ran: no results written")
    for name, message in payload["skipped"].items():
        print(f"skipped {name}: {message}")
    for name, message in payload["errors"].items():
        print(f"FAILED {name}: {message}", file=sys.stderr)
    return 1 if payload["errors"] else 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
