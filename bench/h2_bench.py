"""HTTP/2 and gRPC on the proxy port: Ferry's data plane next to nginx (issue 17, item 5).

Scenario ``http2``. Three phases, each in interleaved rounds (the order rotates every
round), each proxy pinned to one core with the load generator and the backends on the
other, exactly as the ``proxy`` and ``tls`` scenarios (:mod:`bench.proxy_bench`, whose
rig, ``/proc`` CPU accounting and nginx backends this module imports):

- ``h2``: HTTP/2 over TLS (ALPN ``h2``), one EC P-256 certificate for both proxies
  (:func:`bench.tls_bench.make_certificate`; Ferry's through ``POST /certificates``);
- ``h2c``: cleartext HTTP/2 with prior knowledge (no ``Upgrade``);
- ``grpc``: gRPC unary calls to a grpcio backend (:mod:`bench.grpc_backend`, in its own
  process on the load core, so its CPU is never the proxy's).

``h2`` and ``h2c`` proxy to the two HTTP/1.1 nginx keep-alive backends of the other
scenarios (16 KiB responses); ``grpc`` proxies over HTTP/2 to the grpcio server.

The load is h2load (:mod:`bench.h2load`), ``-t1 -c C -m 10``: C connections (50 by
default, like wrk's in the HTTP/1.1 scenarios) each with 10 streams in flight, so 500
requests outstanding. Multiplexing is what HTTP/2 changes, so each connection carries
several streams; 10 keeps it under every server's ``SETTINGS_MAX_CONCURRENT_STREAMS``
(nginx 128, Ferry 100) so no stream is refused, and 500 outstanding requests keep one
proxy core busy without piling up a queue that only adds latency.

h2load counts a response as succeeded by its ``:status``; a gRPC call with
``grpc-status`` other than 0 in its trailers would count too. So before measuring, each
proxy is checked with one real grpcio client call *and* with the exact request h2load
sends (the same body file and headers, through ``nghttp``, which prints the trailers):
both must end in ``grpc-status: 0`` with the backend's reply.

Proxies:

- ``nginx``: 1 worker; ``listen ... ssl http2`` and ``listen ... http2`` (nginx 1.22's
  syntax) in two nginx processes with the proxy scenario's configuration
  (:func:`bench.proxy_bench.nginx_proxy_conf`); a third with ``grpc_pass grpc://`` to
  an upstream with ``keepalive`` (nginx opens an HTTP/2 connection per concurrent call to
  a gRPC upstream and keeps it for reuse; it does not multiplex calls on one).
- ``ferry``: one data-plane process with ``--proxy-listen "127.0.0.1:P http2,
  127.0.0.1:Q ssl http2, 127.0.0.1:R"`` (R, HTTP/1.1, tells when the configuration is
  applied), configured through its control plane's Admin API: the proxy scenario's
  upstream, service and route (``/bench``), the certificate, and a ``protocol: grpc``
  service with a ``protocols: ["grpc"]`` route (``/bench.Echo/``).

Ferry's HTTP/2 and gRPC are being built (issue 17): when a Ferry phase cannot run (the
listener answers the HTTP/2 preface with an error, the TLS listener does not offer h2,
the Admin API refuses ``protocol: grpc``) nginx is still measured and Ferry's row says
why in ``unavailable``.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import grpc

from bench import grpc_backend
from bench.h2_checks import (
    GRPC_HEADERS,
    check_grpc_target,
    check_h2_target,
    grpc_call,
    passes,
    probe,
)
from bench.h2load import (
    grpc_message_frame,
    h2load_command,
    parse_h2load_output,
    unsupported_protocol,
)
from bench.options import BenchOptions
from bench.procs import ManagedProcess, ProcessSet, find_tool, missing_tools, pin, thread_affinities
from bench.proxy_bench import (
    BODY_BYTES,
    DISTURBED_RETRIES,
    FOREIGN_CPU_LIMIT,
    QUIET_WAIT_S,
    SETTLE_S,
    URL_PATH,
    BenchUnavailable,
    Cores,
    LoadCommand,
    Rig,
    Target,
    _child_env,
    _http_ok,
    _json,
    _num,
    _pct,
    configure_ferry,
    measure_undisturbed,
    nginx_backend_conf,
    nginx_http_conf,
    nginx_proxy_conf,
    pick_cores,
    prepare_site,
    ratio,
    rotated,
    start_control_plane,
    start_nginx,
    wait_for_quiet,
    wait_until,
)
from bench.tls_bench import SNI, FerryTlsUnavailable, add_certificate, make_certificate
from ferry_shared.listen import free_port

PROXIES = ("nginx", "ferry")
PHASES = ("h2", "h2c", "grpc")
LABELS = {"nginx": "nginx (1 worker)", "ferry": "Ferry DP, compiled"}
PHASE_TITLES = {
    "h2": "HTTP/2 over TLS (ALPN h2), HTTP/1.1 keep-alive to the backends",
    "h2c": "h2c (HTTP/2 cleartext, prior knowledge), HTTP/1.1 keep-alive to the backends",
    "grpc": "gRPC unary calls (h2c), HTTP/2 to a grpcio backend",
}
#: The protocol h2load must have negotiated for a run of each phase to count.
PHASE_PROTOCOLS: dict[str, tuple[str, ...]] = {"h2": ("h2",), "h2c": ("h2c",), "grpc": ("h2c",)}
#: Streams in flight per connection (h2load ``-m``); the module's docstring says why 10.
STREAMS = 10
REQUIRED_TOOLS = ("nginx", "h2load", "nghttp", "taskset")
#: How long a Ferry phase may take to start working once the configuration is applied
#: before it is reported unavailable.
PROBE_TIMEOUT = 10.0


class FerryH2Unavailable(BenchUnavailable):
    """A Ferry phase of the scenario cannot run (a part of issue 17 not built yet)."""


# --------------------------------------------------------------------------- configs


def nginx_h2_conf(
    base: Path, listen: int, backends: Sequence[int], *, tls: tuple[Path, Path] | None = None
) -> str:
    """nginx with HTTP/2 downstream on ``listen`` (ALPN h2 with ``tls``, h2c without) and
    the proxy scenario's HTTP/1.1 keep-alive upstream."""
    return nginx_proxy_conf(base, listen, backends, tls=tls, http2=True)


def nginx_grpc_conf(base: Path, listen: int, grpc_port: int) -> str:
    """nginx proxying gRPC: h2c on ``listen``, ``grpc_pass`` to the grpcio backend on
    ``grpc_port`` with kept-alive upstream connections."""
    return nginx_http_conf(base, "bench/h2_bench.py: nginx proxying gRPC", f"""\
  upstream grpc_backend {{
    server 127.0.0.1:{grpc_port} max_fails=5 fail_timeout=10s;
    keepalive 128;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
  }}
  server {{
    listen 127.0.0.1:{listen} http2 backlog=4096;
    location /{grpc_backend.SERVICE}/ {{ grpc_pass grpc://grpc_backend; }}
    location / {{ return 404; }}
  }}
""")


def ferry_proxy_listen(h2c_port: int, h2_port: int, http1_port: int) -> str:
    """Ferry's ``--proxy-listen``: h2c, TLS with h2, and a plain HTTP/1.1 port."""
    return f"127.0.0.1:{h2c_port} http2, 127.0.0.1:{h2_port} ssl http2, 127.0.0.1:{http1_port}"


def configure_ferry_grpc(admin: str, grpc_port: int) -> None:
    """Kong's gRPC proxying: a ``protocol: grpc`` service to the backend and a
    ``protocols: ["grpc"]`` route on the service's path prefix. Raises
    :class:`FerryH2Unavailable` when the Admin API refuses them (400: the schema has no
    grpc protocol yet)."""
    try:
        _json(f"{admin}/services/grpc-bench", "PUT",
              {"protocol": "grpc", "host": "127.0.0.1", "port": grpc_port})
        _json(f"{admin}/routes/grpc-bench", "PUT",
              {"protocols": ["grpc"], "paths": [f"/{grpc_backend.SERVICE}/"], "strip_path": False,
               "service": {"name": "grpc-bench"}})
    except RuntimeError as exc:
        if "→ 400" in str(exc):
            raise FerryH2Unavailable(f"the Admin API refuses a gRPC service or route: {exc}") from None
        raise


# --------------------------------------------------------------------------- Ferry


def start_ferry(
    procs: ProcessSet, options: BenchOptions, base: Path, backends: Sequence[int], grpc_port: int,
    cores: Cores, cert: Path, key: Path, request_file: Path,
) -> tuple[ManagedProcess, dict[str, str], dict[str, str], dict[str, Any]]:
    """A control plane (load core) and one data plane (proxy core) serving the three
    phases; returns the data plane, the URL or port of each
    phase that works, why each other phase does not, and facts (``hot_path``, checks)."""
    control_plane, admin, cluster_port = start_control_plane(procs, options, base, cores)
    unavailable: dict[str, str] = {}
    facts: dict[str, Any] = {"checks": {}}
    try:
        add_certificate(admin, cert, key)
    except FerryTlsUnavailable as exc:
        unavailable["h2"] = str(exc)
    configure_ferry(admin, backends)
    try:
        configure_ferry_grpc(admin, grpc_port)
    except FerryH2Unavailable as exc:
        unavailable["grpc"] = str(exc)
    h2c_port, h2_port, http1_port, status_port = free_port(), free_port(), free_port(), free_port()
    data_plane = procs.start(
        "ferry-data-plane",
        [str(options.ferry_bin), "data-plane", "--control-plane", f"127.0.0.1:{cluster_port}",
         "--proxy-listen", ferry_proxy_listen(h2c_port, h2_port, http1_port),
         "--status-listen", f"127.0.0.1:{status_port}", "--data-dir", str(base / "data-plane"),
         "--hostname", "bench-dp-h2", "--cluster-insecure", "--log-level", "warning"],
        log_path=base / "data-plane.log", cpu=cores.proxy, env=_child_env(),
    )
    wait_until(lambda: _http_ok(f"http://127.0.0.1:{http1_port}{URL_PATH}"),
               "Ferry's data plane to proxy the bench route (HTTP/1.1)", [control_plane, data_plane])
    facts["hot_path"] = _json(f"http://127.0.0.1:{status_port}/status").get("hot_path")
    urls = {"h2c": f"http://127.0.0.1:{h2c_port}{URL_PATH}", "h2": f"https://{SNI}:{h2_port}{URL_PATH}",
            "grpc": f"http://127.0.0.1:{h2c_port}{grpc_backend.PATH}"}
    probes: dict[str, Callable[[], dict[str, Any]]] = {
        "h2c": lambda: check_h2_target("ferry", urls["h2c"]),
        "h2": lambda: check_h2_target("ferry", urls["h2"]),
        "grpc": lambda: check_grpc_target("ferry", h2c_port, request_file),
    }
    for phase in PHASES:
        if phase in unavailable:
            continue
        error = probe(probes[phase], PROBE_TIMEOUT)
        if error is not None:
            unavailable[phase] = (f"Ferry's data plane does not serve this phase yet (checked for "
                                  f"{PROBE_TIMEOUT:g} s): {error}")
        else:
            facts["checks"][phase] = probes[phase]()
    if not data_plane.alive():
        raise RuntimeError(f"Ferry's data plane exited; its log:\n{data_plane.log_tail()}")
    working = {phase: url for phase, url in urls.items() if phase not in unavailable}
    return data_plane, working, unavailable, facts


# --------------------------------------------------------------------------- load


def load_command(url: str, phase: str, *, duration: float, connections: int, request_file: Path) -> LoadCommand:
    """The h2load run of ``phase`` against ``url`` (gRPC: POSTs of ``request_file``)."""
    grpc_phase = phase == "grpc"
    argv = h2load_command(
        url, duration=duration, connections=connections, streams=STREAMS,
        data=request_file if grpc_phase else None, headers=GRPC_HEADERS if grpc_phase else None,
        executable=find_tool("h2load") or "h2load",
    )
    return LoadCommand("h2load", argv, parse_h2load_output)


# --------------------------------------------------------------------------- summaries


def summarize_phase(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Median of each figure per proxy over the rounds of one phase."""
    summary: dict[str, dict[str, Any]] = {}
    for name in PROXIES:
        mine = [r for r in runs if r["scenario"] == name]
        if not mine:
            continue
        rps = [r["requests_per_s"] for r in mine]
        summary[name] = {
            "label": LABELS[name],
            "runs": len(mine),
            "requests_per_s": _median(rps),
            "requests_per_s_min": min(rps),
            "requests_per_s_max": max(rps),
            "latency_mean_ms": _median([r["h2load"]["latency_mean_ms"] for r in mine]),
            "proxy_cpu_us_per_request": _median([r["proxy_cpu_us_per_request"] for r in mine]),
            "proxy_cpu_fraction": _median([r["proxy_cpu_fraction"] for r in mine]),
            "proxy_core_us_per_request": _median([r["proxy_core_us_per_request"] for r in mine]),
            "backends_cpu_us_per_request": _median([r["backends_cpu_us_per_request"] for r in mine]),
            "load_core_busy_fraction": _median([r["load_core_busy_fraction"] for r in mine]),
            "errors": sum(r["errors"] for r in mine),
            "disturbed_runs": sum(1 for r in mine if r.get("disturbed")),
        }
    return summary


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def compute_ratios(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Per phase, Ferry against nginx: ``cpu_efficiency`` = nginx's CPU µs per request ÷
    Ferry's (1.0: as efficient), ``throughput`` = Ferry's req/s ÷ nginx's; None when a
    figure is missing (Ferry unavailable)."""
    ratios: dict[str, dict[str, float | None]] = {}
    for phase in PHASES:
        rows = summary.get(phase, {})
        ferry, nginx = rows.get("ferry", {}), rows.get("nginx", {})
        ratios[phase] = {
            "cpu_efficiency": ratio(nginx.get("proxy_cpu_us_per_request"), ferry.get("proxy_cpu_us_per_request")),
            "throughput": ratio(ferry.get("requests_per_s"), nginx.get("requests_per_s")),
        }
    return ratios


def phase_warnings(summary: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[str]:
    """What a reader must know about the figures: errors, a proxy that did not fill its
    core (then compare CPU µs, not req/s), disturbed runs."""
    warnings = []
    for phase, rows in summary.items():
        for name, row in rows.items():
            where = f"{LABELS[name]}, {phase}"
            if row["errors"]:
                warnings.append(f"{where}: {row['errors']} errors (failed or reset streams, non-2xx)")
            if (row["proxy_cpu_fraction"] or 0) < 0.9:
                capped = (row.get("load_core_busy_fraction") or 0) >= 0.95
                warnings.append(
                    f"{where}: used {_pct(row['proxy_cpu_fraction'])} of its core"
                    f"{' (the load core, h2load + backends, was full)' if capped else ''}; "
                    "compare CPU µs per request rather than req/s")
            if row["disturbed_runs"]:
                warnings.append(f"{where}: {row['disturbed_runs']} run(s) disturbed by work not ours "
                                f"(> {FOREIGN_CPU_LIMIT} of a core)")
    return warnings


def render(result: Mapping[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "",
        f"HTTP/2 and gRPC on the proxy port: {s['rounds']} interleaved round(s) × {s['duration_s']:g} s, "
        f"h2load -t1 -c{s['connections']} -m{s['streams']};",
        f"proxy on core {s['proxy_core']}, h2load + backends on core {s['load_core']}. Medians over rounds.",
    ]
    for phase in PHASES:
        lines += ["", PHASE_TITLES[phase],
                  f"{'proxy':<22}{'req/s':>10}{'mean ms':>9}{'CPU µs/req':>12}{'core µs/req':>13}"
                  f"{'proxy CPU':>11}{'errors':>8}"]
        for name in PROXIES:
            row = result["summary"].get(phase, {}).get(name)
            if row is None:
                why = result["unavailable"].get(phase) if name == "ferry" else None
                lines.append(f"{LABELS[name]:<22}{'unavailable (below)' if why else 'not measured':>19}")
                continue
            lines.append(
                f"{row['label']:<22}{_num(row['requests_per_s'], ',.0f'):>10}{_num(row['latency_mean_ms'], '.2f'):>9}"
                f"{_num(row['proxy_cpu_us_per_request'], '.1f'):>12}{_num(row['proxy_core_us_per_request'], '.1f'):>13}"
                f"{_pct(row['proxy_cpu_fraction']):>11}{row['errors']:>8}"
            )
    lines += ["", "Ferry against nginx (nginx CPU µs/req ÷ Ferry's; Ferry req/s ÷ nginx's)"]
    for phase in PHASES:
        r = result["ratios"][phase]
        lines.append(f"  {phase:<5} CPU efficiency {_num(r['cpu_efficiency'], '.2f')}, "
                     f"throughput {_num(r['throughput'], '.2f')}×")
    lines.append("  gRPC: the Python backend caps calls/s on the shared load core; compare CPU µs per call.")
    for phase, why in result["unavailable"].items():
        lines.append(f"  Ferry unavailable in {phase}: {why}")
    for warning in result["warnings"]:
        lines.append(f"  WARNING: {warning}")
    return "\n".join(lines)


def _log(message: str) -> None:
    print(f"[http2] {message}", flush=True)


# --------------------------------------------------------------------------- the scenario


def run(options: BenchOptions) -> dict[str, Any]:
    missing = missing_tools(REQUIRED_TOOLS)
    if missing:
        raise BenchUnavailable(f"missing tools: {', '.join(missing)} (make bench installs them; h2load "
                               "and nghttp are Debian's nghttp2-client)")
    cores = pick_cores()
    base = options.work_dir / "http2"
    www = prepare_site(base)
    cert, key = make_certificate(base / "pki")
    request_file = base / "grpc-request.bin"
    request_file.write_bytes(grpc_message_frame(grpc_backend.REQUEST))
    duration, connections, rounds = options.duration, options.connections, options.rounds
    warmup = 1.0 if options.quick else 2.0
    retries = 1 if options.quick else DISTURBED_RETRIES
    warnings: list[str] = []

    with ProcessSet() as procs:
        backend_ports = [free_port(), free_port()]
        grpc_port = free_port()
        _log(f"starting the backends on core {cores.load}: nginx (1 worker, ports {backend_ports}) and "
             f"the grpcio server (port {grpc_port})")
        backends = start_nginx(procs, "backends", base / "backends",
                               nginx_backend_conf(base / "backends", backend_ports, www), cores.load)
        grpc_server = procs.start(
            "grpc-backend", [sys.executable, "-m", "bench.grpc_backend", "--port", str(grpc_port)],
            log_path=base / "grpc-backend.log", cpu=cores.load, env=_child_env(),
            cwd=Path(__file__).resolve().parent.parent,
        )
        wait_until(lambda: _http_ok(f"http://127.0.0.1:{backend_ports[0]}{URL_PATH}"), "the nginx backends",
                   [backends])
        wait_until(lambda: grpc_call(grpc_port, timeout=1.0)[0] == grpc.StatusCode.OK, "the grpcio backend",
                   [grpc_server])

        h2_port, h2c_port, grpc_proxy_port = free_port(), free_port(), free_port()
        _log(f"starting nginx (1 worker each: h2, h2c, gRPC) on core {cores.proxy}")
        nginx = {
            "h2": start_nginx(procs, "nginx-h2", base / "nginx-h2",
                              nginx_h2_conf(base / "nginx-h2", h2_port, backend_ports, tls=(cert, key)), cores.proxy),
            "h2c": start_nginx(procs, "nginx-h2c", base / "nginx-h2c",
                               nginx_h2_conf(base / "nginx-h2c", h2c_port, backend_ports), cores.proxy),
            "grpc": start_nginx(procs, "nginx-grpc", base / "nginx-grpc",
                                nginx_grpc_conf(base / "nginx-grpc", grpc_proxy_port, grpc_port), cores.proxy),
        }
        nginx_urls = {"h2": f"https://{SNI}:{h2_port}{URL_PATH}", "h2c": f"http://127.0.0.1:{h2c_port}{URL_PATH}",
                      "grpc": f"http://127.0.0.1:{grpc_proxy_port}{grpc_backend.PATH}"}
        checks: dict[str, dict[str, Any]] = {"nginx": {}, "ferry": {}}
        nginx_checks = {
            "h2": partial(check_h2_target, "nginx", nginx_urls["h2"]),
            "h2c": partial(check_h2_target, "nginx", nginx_urls["h2c"]),
            "grpc": partial(check_grpc_target, "nginx", grpc_proxy_port, request_file),
        }
        for phase, check in nginx_checks.items():
            wait_until(partial(passes, check), f"nginx to serve {phase}", [nginx[phase]])
            checks["nginx"][phase] = check()
        targets: dict[str, dict[str, Target]] = {
            phase: {"nginx": Target("nginx", nginx_urls[phase], nginx[phase])} for phase in PHASES
        }

        _log(f"starting Ferry: control plane (+ embedded Redis) on core {cores.load}, data plane on core "
             f"{cores.proxy}")
        try:
            data_plane, ferry_urls, unavailable, facts = start_ferry(
                procs, options, base / "ferry", backend_ports, grpc_port, cores, cert, key, request_file)
        except RuntimeError as exc:
            # nginx's figures are still worth having; the reason (with the log's tail) is kept.
            data_plane, ferry_urls, facts = None, {}, {"checks": {}}
            unavailable = {phase: f"Ferry did not start: {exc}" for phase in PHASES}
            warnings.append(f"Ferry did not start (see unavailable): {str(exc).splitlines()[0]}")
        checks["ferry"] = facts["checks"]
        for phase, why in unavailable.items():
            _log(f"Ferry not measured in {phase}: {why}")
        ferry_processes = [data_plane] if data_plane is not None else []
        for phase, url in ferry_urls.items():
            targets[phase]["ferry"] = Target("ferry", url, data_plane)
        mode = (facts.get("hot_path") or {}).get("mode")
        if ferry_urls and mode != "compiled":
            warnings.append(f"Ferry's data plane runs the {mode} hot path, not the compiled one "
                            f"({(facts.get('hot_path') or {}).get('reason')}): make venv rebuilds it")
        pinning: dict[str, Any] = {}
        for process in [*nginx.values(), *ferry_processes]:
            pids = process.pids()
            pin(pids, cores.proxy)
            pinning[process.name] = {"pids": pids, "cpus_allowed": sorted(thread_affinities(pids))}
        for process in (backends, grpc_server):
            pinning[process.name] = {"pids": process.pids(), "cpus_allowed": sorted(thread_affinities(process.pids()))}

        rigs = {phase: Rig(cores=cores, backends=grpc_server if phase == "grpc" else backends, procs=procs)
                for phase in PHASES}
        ours = {pid for p in procs.processes for pid in p.pids()}
        background = wait_for_quiet(ours, QUIET_WAIT_S / 6 if options.quick else QUIET_WAIT_S)

        def one_run(phase: str, target: Target, seconds: float, attempts: int) -> dict[str, Any]:
            load = load_command(target.url, phase, duration=seconds, connections=connections,
                                request_file=request_file)
            run_ = measure_undisturbed(rigs[phase], target, retries=attempts, duration=seconds,
                                       connections=connections, load=load)
            wrong = unsupported_protocol(run_["h2load"]["protocol"], PHASE_PROTOCOLS[phase])
            if wrong:
                raise RuntimeError(f"{target.name}, {phase}: {wrong}")
            return run_

        _log(f"warm-up: {warmup:g} s per target and phase")
        for phase in PHASES:
            for target in targets[phase].values():
                one_run(phase, target, warmup, 0)
                time.sleep(SETTLE_S)

        runs: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
        for round_index in range(rounds):
            for phase in PHASES:
                order = rotated([n for n in PROXIES if n in targets[phase]], round_index)
                _log(f"{phase} round {round_index + 1}/{rounds}: {', '.join(order)}")
                for position, name in enumerate(order):
                    run_ = one_run(phase, targets[phase][name], duration, retries)
                    run_.update(phase=phase, round=round_index + 1, position=position)
                    runs[phase].append(run_)
                    _log(f"  {name:<6} {run_['requests_per_s']:>10,.0f} req/s  "
                         f"mean {_num(run_['h2load']['latency_mean_ms'], '.2f')} ms  "
                         f"CPU {_num(run_['proxy_cpu_us_per_request'], '.1f')} µs/req  errors {run_['errors']}")
                    time.sleep(SETTLE_S)
        for process in [*nginx.values(), grpc_server, *ferry_processes]:
            if not process.alive():
                warnings.append(f"{process.name} exited during the runs; see {process.log_path}")

    summary = {phase: summarize_phase(runs[phase]) for phase in PHASES}
    warnings += phase_warnings(summary)
    result: dict[str, Any] = {
        "scenario": "http2",
        "settings": {
            "duration_s": duration, "connections": connections, "streams": STREAMS, "h2load_threads": 1,
            "rounds": rounds, "warmup_s": warmup, "body_bytes": BODY_BYTES, "path": URL_PATH,
            "grpc_path": grpc_backend.PATH, "grpc_request_bytes": request_file.stat().st_size,
            "grpc_reply_bytes": len(grpc_message_frame(grpc_backend.REPLY)), "sni": SNI,
            "proxy_core": cores.proxy, "load_core": cores.load, "disturbed_retries": retries,
        },
        "method": {
            "load": f"h2load -t1 -c{connections} -m{STREAMS} -D <duration>: {connections} connections × "
                    f"{STREAMS} streams in flight (closed loop); gRPC: -d <5-byte length prefix + serialized "
                    "request> (POST), content-type: application/grpc, te: trailers",
            "nginx": "1 worker per phase (three processes): listen ssl http2 (TLSv1.2/1.3, EC P-256) / listen "
                     "http2 with upstream keepalive 128 over HTTP/1.1 to the backends; grpc_pass grpc:// with "
                     "upstream keepalive 128 to the grpcio backend",
            "ferry": "one data-plane process, --proxy-listen 'P http2, Q ssl http2, R'; POST /certificates; "
                     "the proxy scenario's route /bench → round-robin upstream; service protocol grpc + route "
                     "protocols [grpc] paths [/bench.Echo/]",
            "backends": "nginx (1 worker, two ports, 16 KiB body) for h2/h2c; grpcio thread-pool server "
                        f"({grpc_backend.THREADS} threads, one unary method, 66-byte reply) for gRPC; both on "
                        "the load core",
            "checks": "before measuring: HTTP/2 GETs through each proxy (nghttp: status, body, both backends); "
                      "gRPC: a grpcio client call and h2load's exact request via nghttp, both grpc-status 0",
            "cpu_time": "utime+stime of the proxy's processes from /proc/<pid>/stat over each run ÷ requests done",
            "pinning": "taskset: each proxy on the proxy core; h2load, backends, control plane on the load core",
        },
        "checks": checks,
        "hot_path": facts.get("hot_path"),
        "pinning": pinning,
        "background": background,
        "summary": summary,
        "runs": runs,
        "ratios": compute_ratios(summary),
        "unavailable": unavailable,
        "warnings": warnings,
    }
    print(render(result), flush=True)
    return result

