"""HTTPS on the proxy port: Ferry's data plane next to nginx, the same certificate and key.

Scenario ``tls`` (issue 16). Two measurements, each in interleaved rounds (the order
rotates every round), each proxy pinned to one core with wrk and the backends on the
other, exactly as the ``proxy`` scenario (:mod:`bench.proxy_bench`, whose rig, wrk runner,
``/proc`` CPU accounting and backends this module imports):

- ``keepalive``: wrk's 50 connections stay open; TLS costs only the record layer.
  Figures: req/s and the proxy's CPU µs per request.
- ``handshake``: every request carries ``Connection: close`` (a wrk Lua script), so the
  proxy answers and closes and wrk opens a new TCP connection and does a new *full* TLS
  handshake for each request (wrk 4.1 never offers a session to resume). Figures:
  handshakes (= connections = requests) per second and CPU µs per handshake, the
  request included; ``handshake_only_us`` subtracts the keep-alive CPU per request to
  estimate the handshake alone.

Both proxies terminate TLS with one EC P-256 certificate made here (SAN ``localhost``,
``bench.test``) and talk plaintext HTTP/1.1 keep-alive to the same two nginx backends.

- ``nginx``: 1 worker, ``listen ... ssl``, ``ssl_protocols TLSv1.2 TLSv1.3``, OpenSSL's
  default ciphers and curves, session tickets on (nginx's default), upstream keepalive.
- ``ferry``: one data-plane process with ``--proxy-listen "127.0.0.1:P, 127.0.0.1:Q ssl"``,
  configured through its control plane's Admin API as Kong is:
  ``POST /certificates {"cert", "key", "snis": ["localhost", "bench.test"]}``, the
  proxy scenario's upstream, service and route (``protocols`` default: http and https).

wrk sends the URL's host as SNI, so the URL is ``https://localhost:PORT`` (localhost
resolves to 127.0.0.1 here; wrk keeps the first address that connects) and the SNI is
``localhost``: Ferry picks the configured certificate by SNI, not its default one (the
harness checks the certificate each proxy serves before measuring).

When the control plane has no ``/certificates`` endpoint yet (issue 16's certificates
entity not built), nginx is still measured and Ferry's rows say why they are missing.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import json
import socket
import ssl
import statistics
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.options import BenchOptions
from bench.procs import ManagedProcess, ProcessSet, missing_tools, pin, thread_affinities
from bench.proxy_bench import (
    BODY_BYTES,
    DISTURBED_RETRIES,
    FOREIGN_CPU_LIMIT,
    QUIET_WAIT_S,
    SETTLE_S,
    URL_PATH,
    BenchUnavailable,
    Cores,
    Rig,
    Target,
    _child_env,
    _json,
    configure_ferry,
    measure_undisturbed,
    nginx_backend_conf,
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
from ferry_shared.listen import free_port

PROXIES = ("nginx", "ferry")
PHASES = ("keepalive", "handshake")
LABELS = {"nginx": "nginx (1 worker)", "ferry": "Ferry DP, compiled"}
#: The name wrk connects to, so the SNI it sends; and the certificate's other name.
SNI = "localhost"
CERT_NAMES = (SNI, "bench.test")
REQUIRED_TOOLS = ("nginx", "wrk", "taskset")
#: The wrk script that makes every request a new connection (and so a new handshake).
CLOSE_SCRIPT = """-- written by bench/tls_bench.py: one request per connection
wrk.headers["Connection"] = "close"
"""


class FerryTlsUnavailable(BenchUnavailable):
    """Ferry's side of the scenario cannot be set up (a part of issue 16 not built yet)."""


# --------------------------------------------------------------------------- certificate


def make_certificate(directory: Path, names: Sequence[str] = CERT_NAMES) -> tuple[Path, Path]:
    """One self-signed EC P-256 leaf for ``names`` (and 127.0.0.1): ``(cert, key)`` paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [*(x509.DNSName(n) for n in names), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "bench.crt", directory / "bench.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    # nginx's master reads it as root (or as us); nobody else needs it.
    key_path.chmod(0o600)
    return cert_path, key_path


# --------------------------------------------------------------------------- configs


def nginx_tls_conf(base: Path, listen: int, backends: Sequence[int], cert: Path, key: Path) -> str:
    """nginx terminating TLS: the proxy scenario's configuration with ``ssl`` on ``listen``."""
    return nginx_proxy_conf(base, listen, backends, tls=(cert, key))


# --------------------------------------------------------------------------- https helpers


def _client_context() -> ssl.SSLContext:
    # The harness checks which certificate is served by comparing it with ours; wrk
    # does not verify either.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def https_get(url_port: int, server_name: str = SNI, timeout: float = 2.0) -> dict[str, Any]:
    """One GET of the bench path over a fresh TLS connection to 127.0.0.1 with ``server_name``
    as SNI: status, body length, backend, TLS version, cipher, and the served certificate (DER)."""
    raw = socket.create_connection(("127.0.0.1", url_port), timeout=timeout)
    tls = _client_context().wrap_socket(raw, server_hostname=server_name)
    try:
        connection = http.client.HTTPConnection(server_name, url_port, timeout=timeout)
        connection.sock = tls
        connection.request("GET", URL_PATH)
        response = connection.getresponse()
        body = response.read()
        return {
            "status": response.status,
            "bytes": len(body),
            "backend": response.getheader("X-Backend", "?"),
            "tls_version": tls.version(),
            "cipher": (tls.cipher() or ("?",))[0],
            "certificate": tls.getpeercert(binary_form=True),
        }
    finally:
        tls.close()


def check_https_target(name: str, port: int, cert_path: Path) -> dict[str, Any]:
    """A few requests on fresh TLS connections: 200, the whole body, both backends, and the
    bench certificate served for SNI ``localhost`` (not a default one)."""
    ours = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(serialization.Encoding.DER)
    seen: set[str] = set()
    answer: dict[str, Any] = {}
    for _ in range(6):
        answer = https_get(port)
        if answer["status"] != 200 or answer["bytes"] != BODY_BYTES:
            raise RuntimeError(f"{name}: GET https://{SNI}:{port}{URL_PATH} → {answer['status']}, "
                               f"{answer['bytes']} bytes")
        if answer["certificate"] != ours:
            raise RuntimeError(f"{name} served another certificate than the bench's for SNI {SNI!r}")
        seen.add(answer["backend"])
    if seen != {"a", "b"}:
        raise RuntimeError(f"{name}: answers came from backends {sorted(seen)}, expected ['a', 'b']")
    return {"backends_seen": sorted(seen), "tls_version": answer["tls_version"], "cipher": answer["cipher"],
            "certificate": "the bench certificate (SNI localhost)"}


# --------------------------------------------------------------------------- Ferry


def add_certificate(admin: str, cert: Path, key: Path, snis: Sequence[str] = CERT_NAMES) -> dict[str, Any]:
    """``POST /certificates`` as Kong's; :class:`FerryTlsUnavailable` when the control plane
    has no such endpoint yet (404/405)."""
    request = urllib.request.Request(
        f"{admin}/certificates", method="POST",
        data=_certificate_body(cert, key, snis), headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405):
            raise FerryTlsUnavailable(
                "Ferry's control plane has no /certificates endpoint yet (POST /certificates → "
                f"{exc.code}): issue 16's certificates entity is not built in this tree; nginx was "
                "measured alone"
            ) from None
        raise RuntimeError(f"POST {admin}/certificates → {exc.code}: {exc.read()[:300]!r}") from None


def _certificate_body(cert: Path, key: Path, snis: Sequence[str]) -> bytes:
    return json.dumps({"cert": cert.read_text(), "key": key.read_text(), "snis": list(snis)}).encode()


def start_ferry(
    procs: ProcessSet, options: BenchOptions, base: Path, backends: Sequence[int], cores: Cores,
    cert: Path, key: Path,
) -> tuple[ManagedProcess, int, dict[str, Any] | None]:
    """A control plane (load core) and one data plane (proxy core) with a plaintext and an
    ``ssl`` proxy listener, configured through the Admin API; returns the data plane, its
    TLS port and its ``/status`` ``hot_path`` block. Raises :class:`FerryTlsUnavailable`
    when the Admin API cannot take the certificate."""
    control_plane, admin, cluster_port = start_control_plane(procs, options, base, cores)
    ferry, env = str(options.ferry_bin), _child_env()
    add_certificate(admin, cert, key)
    configure_ferry(admin, backends)
    plain_port, tls_port, status_port = free_port(), free_port(), free_port()
    data_plane = procs.start(
        "ferry-data-plane",
        [ferry, "data-plane", "--control-plane", f"127.0.0.1:{cluster_port}",
         "--proxy-listen", f"127.0.0.1:{plain_port}, 127.0.0.1:{tls_port} ssl",
         "--status-listen", f"127.0.0.1:{status_port}", "--data-dir", str(base / "data-plane"),
         "--hostname", "bench-dp-tls", "--cluster-insecure", "--log-level", "warning"],
        log_path=base / "data-plane.log", cpu=cores.proxy, env=env,
    )

    def serves_ours() -> bool:
        try:
            check_https_target("ferry", tls_port, cert)
        except (OSError, RuntimeError, ssl.SSLError, http.client.HTTPException):
            return False
        return True

    wait_until(serves_ours, "Ferry's data plane to serve the bench route over TLS with the bench certificate",
               [control_plane, data_plane])
    hot_path = _json(f"http://127.0.0.1:{status_port}/status").get("hot_path")
    return data_plane, tls_port, hot_path


def _status_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


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
            "requests_per_s": statistics.median(rps),
            "requests_per_s_min": min(rps),
            "requests_per_s_max": max(rps),
            "p50_ms": _median([r["p50_ms"] for r in mine]),
            "p99_ms": _median([r["p99_ms"] for r in mine]),
            "proxy_cpu_us_per_request": _median([r["proxy_cpu_us_per_request"] for r in mine]),
            "proxy_cpu_fraction": _median([r["proxy_cpu_fraction"] for r in mine]),
            "proxy_core_us_per_request": _median([r["proxy_core_us_per_request"] for r in mine]),
            "errors": sum(r["errors"] for r in mine),
            "disturbed_runs": sum(1 for r in mine if r.get("disturbed")),
        }
    return summary


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def handshake_only_us(handshake_us: float | None, keepalive_us: float | None) -> float | None:
    """CPU µs of a handshake alone: a connection's CPU (handshake + one request + close)
    minus the CPU of one request on a kept-alive connection. An estimate: the
    connection's accept and close are counted in with the handshake."""
    if handshake_us is None or keepalive_us is None:
        return None
    return round(handshake_us - keepalive_us, 2)


def compute_ratios(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
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


def render(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [
        "",
        f"HTTPS on the proxy port: {s['rounds']} interleaved round(s) × {s['duration_s']:g} s, wrk -t1 "
        f"-c{s['connections']}, SNI {SNI}, one EC P-256 certificate for both, {s['body_bytes'] // 1024} KiB "
        "responses from 2 nginx keep-alive backends (plaintext);",
        f"proxy on core {s['proxy_core']}, wrk + backends on core {s['load_core']}. Medians over rounds.",
    ]
    titles = {
        "keepalive": ("Keep-alive HTTPS (TLS record layer only)", "req/s", "CPU µs/req"),
        "handshake": ("New TLS connection per request (Connection: close; full handshakes)", "hs/s",
                      "CPU µs/hs"),
    }
    for phase in PHASES:
        title, rate, cpu = titles[phase]
        lines += ["", title,
                  f"{'proxy':<22}{rate:>10}{'p50 ms':>9}{'p99 ms':>9}{cpu:>12}{'proxy CPU':>11}{'errors':>8}"]
        for name in PROXIES:
            row = result["summary"].get(phase, {}).get(name)
            if row is None:
                lines.append(f"{LABELS[name]:<22}{'not measured':>10}")
                continue
            lines.append(
                f"{row['label']:<22}{_num(row['requests_per_s'], ',.0f'):>10}{_num(row['p50_ms'], '.3f'):>9}"
                f"{_num(row['p99_ms'], '.3f'):>9}{_num(row['proxy_cpu_us_per_request'], '.1f'):>12}"
                f"{_pct(row['proxy_cpu_fraction']):>11}{row['errors']:>8}"
            )
    lines += ["", "Handshake alone (CPU µs per connection − CPU µs per keep-alive request): "
              + ", ".join(f"{LABELS[n]} {_num(v, '.1f')}" for n, v in result["handshake_only_us"].items())]
    lines += ["", "Ferry against nginx"]
    for phase in PHASES:
        r = result["ratios"][phase]
        lines.append(f"  {phase:<10} CPU efficiency {_num(r['cpu_efficiency'], '.2f')} "
                     f"(nginx µs ÷ Ferry µs), throughput {_num(r['throughput'], '.2f')}×")
    for name, check in result.get("checks", {}).items():
        lines.append(f"  {LABELS[name]}: {check['tls_version']} {check['cipher']}, {check['certificate']}")
    for warning in result["warnings"]:
        lines.append(f"  WARNING: {warning}")
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    return "—" if value is None else format(value, fmt)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.0f}%"


def _log(message: str) -> None:
    print(f"[tls] {message}", flush=True)


# --------------------------------------------------------------------------- the scenario


def run(options: BenchOptions) -> dict[str, Any]:
    missing = missing_tools(REQUIRED_TOOLS)
    if missing:
        raise BenchUnavailable(f"missing tools: {', '.join(missing)} (make bench installs them)")
    cores = pick_cores()
    base = options.work_dir / "tls"
    www = prepare_site(base)
    cert, key = make_certificate(base / "pki")
    duration, connections, rounds = options.duration, options.connections, options.rounds
    warmup = 1.0 if options.quick else 2.0
    retries = 1 if options.quick else DISTURBED_RETRIES
    warnings: list[str] = []
    unavailable: dict[str, str] = {}
    close_script = base / "connection-close.lua"
    close_script.write_text(CLOSE_SCRIPT)

    with ProcessSet() as procs:
        backend_ports = [free_port(), free_port()]
        _log(f"starting the backends (nginx, 1 worker, ports {backend_ports}) on core {cores.load}")
        backends = start_nginx(procs, "backends", base / "backends",
                               nginx_backend_conf(base / "backends", backend_ports, www), cores.load)
        wait_until(lambda: _status_ok(f"http://127.0.0.1:{backend_ports[0]}{URL_PATH}"), "the nginx backends",
                   [backends])
        nginx_port = free_port()
        _log(f"starting nginx (1 worker, TLS) on core {cores.proxy}")
        nginx = start_nginx(procs, "nginx", base / "nginx",
                            nginx_tls_conf(base / "nginx", nginx_port, backend_ports, cert, key), cores.proxy)
        wait_until(lambda: _tls_ok(nginx_port), "nginx over TLS", [nginx])
        targets = {"nginx": Target("nginx", f"https://{SNI}:{nginx_port}{URL_PATH}", nginx)}
        checks = {"nginx": check_https_target("nginx", nginx_port, cert)}
        hot_path: dict[str, Any] | None = None
        _log(f"starting Ferry: control plane (+ embedded Redis) on core {cores.load}, data plane on core "
             f"{cores.proxy}")
        try:
            data_plane, ferry_port, hot_path = start_ferry(procs, options, base / "ferry", backend_ports,
                                                           cores, cert, key)
        except FerryTlsUnavailable as exc:
            unavailable["ferry"] = str(exc)
            warnings.append(f"Ferry not measured: {exc}")
            _log(f"WARNING: {warnings[-1]}")
        else:
            targets["ferry"] = Target("ferry", f"https://{SNI}:{ferry_port}{URL_PATH}", data_plane)
            checks["ferry"] = check_https_target("ferry", ferry_port, cert)
            mode = (hot_path or {}).get("mode")
            if mode != "compiled":
                warnings.append(f"Ferry's data plane runs the {mode} hot path, not the compiled one "
                                f"({(hot_path or {}).get('reason')}): make venv rebuilds it")
        pinning: dict[str, Any] = {}
        for name, target in targets.items():
            pids = target.proxy_pids()
            pin(pids, cores.proxy)
            pinning[name] = {"pids": pids, "cpus_allowed": sorted(thread_affinities(pids))}

        rig = Rig(cores=cores, backends=backends, procs=procs)
        ours = {pid for p in procs.processes for pid in p.pids()}
        background = wait_for_quiet(ours, QUIET_WAIT_S / 6 if options.quick else QUIET_WAIT_S)

        _log(f"warm-up: {warmup:g} s per target and phase")
        for target in targets.values():
            for script in (None, close_script):
                measure_undisturbed(rig, target, retries=0, duration=warmup, connections=connections,
                                    script=script)
                time.sleep(SETTLE_S)

        runs: dict[str, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
        names = [name for name in PROXIES if name in targets]
        for round_index in range(rounds):
            for phase in PHASES:
                script = close_script if phase == "handshake" else None
                order = rotated(names, round_index)
                _log(f"{phase} round {round_index + 1}/{rounds}: {', '.join(order)}")
                for position, name in enumerate(order):
                    run_ = measure_undisturbed(rig, targets[name], retries=retries, duration=duration,
                                               connections=connections, script=script)
                    run_.update(phase=phase, round=round_index + 1, position=position)
                    runs[phase].append(run_)
                    _log(f"  {name:<6} {run_['requests_per_s']:>10,.0f} {'req' if script is None else 'hs'}/s  "
                         f"p99 {run_['p99_ms']:.3f} ms  CPU {_num(run_['proxy_cpu_us_per_request'], '.1f')} µs  "
                         f"errors {run_['errors']}")
                    time.sleep(SETTLE_S)
        for name, target in targets.items():
            if target.process is not None and not target.process.alive():
                warnings.append(f"{name} exited during the runs; see {target.process.log_path}")

    summary = {phase: summarize_phase(runs[phase]) for phase in PHASES}
    for phase, rows in summary.items():
        for name, row in rows.items():
            if row["errors"]:
                warnings.append(f"{LABELS[name]}, {phase}: {row['errors']} errors (socket errors or non-2xx)")
            if (row["proxy_cpu_fraction"] or 0) < 0.9:
                warnings.append(f"{LABELS[name]}, {phase}: used {_pct(row['proxy_cpu_fraction'])} of its core; "
                                "compare CPU µs rather than rates")
            if row["disturbed_runs"]:
                warnings.append(f"{LABELS[name]}, {phase}: {row['disturbed_runs']} run(s) disturbed by work "
                                f"not ours (> {FOREIGN_CPU_LIMIT} of a core)")
    result: dict[str, Any] = {
        "scenario": "tls",
        "settings": {
            "duration_s": duration, "connections": connections, "wrk_threads": 1, "rounds": rounds,
            "warmup_s": warmup, "body_bytes": BODY_BYTES, "path": URL_PATH, "sni": SNI,
            "proxy_core": cores.proxy, "load_core": cores.load, "disturbed_retries": retries,
        },
        "method": {
            "certificate": "one self-signed EC P-256 (SHA-256) leaf for localhost and bench.test, served by both",
            "nginx": "1 worker, listen ssl, ssl_protocols TLSv1.2 TLSv1.3, default ciphers, session tickets "
                     "on (default), no session cache; upstream keepalive 128 to the plaintext backends",
            "ferry": "one data-plane process, --proxy-listen 'plain, tls ssl'; POST /certificates with snis "
                     "[localhost, bench.test]; route /bench → service → round-robin upstream of the two "
                     "backends with passive checks (the proxy scenario's)",
            "keepalive": "wrk -t1 -c50 over TLS, connections kept open",
            "handshake": "wrk -t1 -c50 with a Lua script setting Connection: close on every request: the "
                         "proxy closes after each response, wrk reconnects and does a full TLS handshake "
                         "(wrk 4.1 does not resume sessions); 1 request = 1 connection = 1 handshake",
            "cpu_time": "utime+stime of the proxy's processes from /proc/<pid>/stat over each run ÷ requests",
            "pinning": "taskset: each proxy on the proxy core; wrk, backends, control plane on the load core",
        },
        "checks": checks,
        "hot_path": hot_path,
        "pinning": pinning,
        "background": background,
        "summary": summary,
        "runs": runs,
        "handshake_only_us": {
            name: handshake_only_us(summary["handshake"].get(name, {}).get("proxy_cpu_us_per_request"),
                                    summary["keepalive"].get(name, {}).get("proxy_cpu_us_per_request"))
            for name in PROXIES
        },
        "ratios": compute_ratios(summary),
        "unavailable": unavailable,
        "warnings": warnings,
    }
    print(render(result), flush=True)
    return result


def _tls_ok(port: int) -> bool:
    try:
        return bool(https_get(port, timeout=1.0)["status"] == 200)
    except (OSError, ssl.SSLError, http.client.HTTPException):
        return False

