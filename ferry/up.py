"""``ferry up``: embedded Redis + a control plane + data planes + demo backends.

The planes run as real child processes (exactly what production runs); the
two demo backends run inside this process. The cluster link is mTLS in shared
mode, with a cluster certificate generated under ``<data-dir>/cluster/`` on
the first run (and again when it has expired). Ctrl-C (or SIGTERM) stops the data
planes, then the control plane (which stops its Redis), waiting for each and
killing what does not exit in time, so nothing is left running.

Ports: data plane *n* listens on the first data plane's ports plus
:data:`PORT_STEP` × (*n* − 1) (defaults: proxies 8000, 8010, 8020 …, status APIs
8100, 8110, 8120 …), which never meet the control plane's 8001 and 8005. Before
anything starts, :func:`port_plan` lists every port, :func:`check_port_plan`
refuses two users of one port (naming both) and a port another program holds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ferry.demo_backend import start_demo_backend
from ferry_shared.cluster_tls import ClusterTLS
from ferry_shared.listen import ListenAddress, format_host_port, parse_host_port, parse_listen_list

STOP_TIMEOUT = 10.0
START_TIMEOUT = 30.0
#: Data plane n listens on data plane 1's ports + PORT_STEP × (n − 1).
PORT_STEP = 10


class StartupFailed(RuntimeError):
    pass


class PortPlanError(ValueError):
    """Two listeners want one port, or a port is taken; the message names them."""


def _shift(address: str, offset: int) -> str:
    host, port = parse_host_port(address)
    return format_host_port(host, port + offset if port else 0)


@dataclass(frozen=True)
class Listener:
    """One address ``ferry up`` has a process listen on, and who: ``data plane 2's proxy``."""

    owner: str
    flag: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return format_host_port(self.host, self.port)

    def describe(self) -> str:
        return f"{self.owner} ({self.flag})"


def admin_url(admin_listen: str) -> str:
    """The URL ``ferry up`` polls, configures and prints for ``--admin-listen``: its first
    plaintext entry, else its first entry (``https://``); a wildcard host becomes loopback."""
    entries = parse_listen_list(admin_listen, default_host="127.0.0.1")
    entry = next((e for e in entries if not e.ssl), entries[0])
    host = "127.0.0.1" if entry.host in _WILDCARDS else entry.host
    return f"{'https' if entry.ssl else 'http'}://{format_host_port(host, entry.port)}"


def _shift_list(listen: str, offset: int) -> tuple[ListenAddress, ...]:
    """Every entry of a listen list moved by ``offset`` (port 0 stays 0)."""
    return tuple(
        replace(entry, port=entry.port + offset if entry.port else 0)
        for entry in parse_listen_list(listen, default_host="127.0.0.1")
    )


def _data_plane_listen(args: argparse.Namespace, index: int) -> tuple[str, str]:
    """``(proxy_listen, status_listen)`` of data plane ``index + 1``: every proxy entry
    (plaintext and ``ssl``) and the status address moved by ``PORT_STEP × index``."""
    proxy = ", ".join(str(entry) for entry in _shift_list(args.proxy_listen, PORT_STEP * index))
    return proxy, _shift(args.status_listen, PORT_STEP * index)


def port_plan(args: argparse.Namespace) -> list[Listener]:
    """Every address ``ferry up`` will listen on, in start order (the CP's, then each DP's)."""
    plan: list[Listener] = []

    def add(owner: str, flag: str, address: str, offset: int = 0) -> None:
        try:
            host, port = parse_host_port(_shift(address, offset))  # past 65535: refused here
        except ValueError as exc:
            raise PortPlanError(f"{owner} ({flag}): {exc}") from None
        plan.append(Listener(owner, flag, host, port))

    try:
        admin_entries = parse_listen_list(args.admin_listen, default_host="127.0.0.1")
    except ValueError as exc:
        raise PortPlanError(f"the Admin API (--admin-listen): {exc}") from None
    for entry in admin_entries:
        owner = "the Admin API over TLS" if entry.ssl else "the Admin API"
        add(owner, "--admin-listen", format_host_port(entry.host, entry.port))
    add("the cluster listener", "--cluster-listen", args.cluster_listen)
    try:
        parse_listen_list(args.proxy_listen, default_host="127.0.0.1")
    except ValueError as exc:
        raise PortPlanError(f"the proxy (--proxy-listen): {exc}") from None
    for index in range(args.data_planes):
        shift = f" + {PORT_STEP * index}" if index else ""
        for entry in parse_listen_list(args.proxy_listen, default_host="127.0.0.1"):
            what = "TLS proxy" if entry.ssl else "proxy"
            add(f"data plane {index + 1}'s {what}", "--proxy-listen" + shift,
                format_host_port(entry.host, entry.port), PORT_STEP * index)
        add(f"data plane {index + 1}'s status API", "--status-listen" + shift,
            args.status_listen, PORT_STEP * index)
    return plan


_WILDCARDS = {"", "0.0.0.0", "::", "*"}


def _overlap(a: Listener, b: Listener) -> bool:
    """Whether ``a`` and ``b`` cannot both listen (same port, and same or wildcard host)."""
    if a.port != b.port or a.port == 0:
        return False

    def norm(host: str) -> str:
        return "127.0.0.1" if host == "localhost" else host

    return a.host in _WILDCARDS or b.host in _WILDCARDS or norm(a.host) == norm(b.host)


def _port_holder(port: int) -> str:
    """``pid 1234, redis-server`` for the process listening on ``port``, when this user may see it."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return ""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name}, {name}"
        except OSError:
            continue
    return ""


def _bind_problem(listener: Listener) -> str | None:
    """None when ``listener`` could bind now; else why not."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers do: connections of an earlier run in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listener.host, listener.port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                holder = _port_holder(listener.port)
                by = f" ({holder})" if holder else ""
                return (
                    f"port {listener.port} ({listener.address}), wanted by {listener.describe()}, "
                    f"is already in use by another program{by}; stop it or choose another port"
                )
            if exc.errno == errno.EACCES:
                return (
                    f"port {listener.port} ({listener.address}), wanted by {listener.describe()}: "
                    "permission denied (ports below 1024 need privileges)"
                )
            return f"{listener.address}, wanted by {listener.describe()}: cannot listen there: {exc.strerror}"
    return None


def check_port_plan(plan: list[Listener], *, bind_test: bool = True) -> None:
    """Raise :class:`PortPlanError` naming every port two listeners want, or (``bind_test``)
    that another program holds. Port 0 (any free port) never collides."""
    problems: list[str] = []
    for i, first in enumerate(plan):
        for second in plan[i + 1:]:
            if _overlap(first, second):
                problems.append(
                    f"port {first.port} is wanted by both {first.describe()} and {second.describe()}"
                )
    if not problems and bind_test:
        problems = [p for p in map(_bind_problem, (x for x in plan if x.port)) if p is not None]
    if problems:
        raise PortPlanError("; ".join(problems))


def format_port_plan(plan: list[Listener]) -> str:
    width = max(len(listener.owner) for listener in plan)
    return "\n".join(
        [f"ferry up: ports (data plane n: data plane 1's ports + {PORT_STEP}*(n-1))"]
        + [f"  {listener.owner:<{width}}  {listener.address}" for listener in plan]
    )


async def _wait_http_ok(
    session: aiohttp.ClientSession, url: str, process: asyncio.subprocess.Process, what: str
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise StartupFailed(f"{what} exited with code {process.returncode}; see its log above")
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise StartupFailed(f"{what} did not answer {url} within {START_TIMEOUT:.0f}s")


async def _admin(session: aiohttp.ClientSession, method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    async with session.request(method, url, json=body) as response:
        payload = await response.json(content_type=None) if response.status != 204 else None
        if response.status >= 400:
            raise StartupFailed(f"{method} {url} → {response.status}: {payload}")
        return payload


async def configure_demo(session: aiohttp.ClientSession, admin: str, backend_ports: list[int]) -> None:
    """Create (or refresh) upstream ``demo`` with the backends, service ``demo``, route ``/demo``."""
    await _admin(session, "PUT", f"{admin}/upstreams/demo", {"algorithm": "round-robin"})
    targets = await _admin(session, "GET", f"{admin}/upstreams/demo/targets")
    wanted = {f"127.0.0.1:{port}" for port in backend_ports}
    for target in targets["data"]:
        if target["target"] not in wanted:  # backends of an earlier run, on other ports
            await _admin(session, "DELETE", f"{admin}/upstreams/demo/targets/{target['id']}")
    existing = {t["target"] for t in targets["data"]}
    for address in sorted(wanted - existing):
        await _admin(session, "POST", f"{admin}/upstreams/demo/targets", {"target": address, "weight": 100})
    await _admin(session, "PUT", f"{admin}/services/demo", {"host": "demo", "port": 80, "protocol": "http"})
    await _admin(session, "PUT", f"{admin}/routes/demo",
                 {"paths": ["/demo"], "strip_path": True, "service": {"name": "demo"}})


def ensure_cluster_certificate(data_dir: Path) -> tuple[Path, Path]:
    """Make sure ``data_dir/cluster`` holds a usable shared pair; return ``(cert, key)``."""
    from pydantic import ValidationError

    from ferry.cluster_certs import write_cluster_certificate

    cert, key = data_dir / "cluster" / "cluster.crt", data_dir / "cluster" / "cluster.key"
    try:
        ClusterTLS(mode="shared", cert=cert, key=key)
    except ValidationError:  # absent, expired or damaged: ferry up owns these files
        write_cluster_certificate(cert, key, force=True)
    return cert, key


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def _up(args: argparse.Namespace, cluster_cert: Path, cluster_key: Path) -> int:
    data_dir = Path(args.data_dir)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)

    processes: list[asyncio.subprocess.Process] = []
    runners: list[web.AppRunner] = []
    common = [
        "--log-level", args.log_level,
        "--log-format", args.log_format,
        "--cluster-mtls", "shared", "--cluster-cert", str(cluster_cert), "--cluster-cert-key", str(cluster_key),
    ]
    admin = admin_url(args.admin_listen)
    # A TLS-only Admin API serves the control plane's generated self-signed certificate:
    # this process talks to its own child on that address, so it does not verify it.
    connector = aiohttp.TCPConnector(ssl=False) if admin.startswith("https:") else None
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            control_plane = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "ferry", "control-plane",
                "--admin-listen", args.admin_listen,
                "--cluster-listen", args.cluster_listen,
                "--data-dir", str(data_dir / "control-plane"),
                *common,
            )
            processes.append(control_plane)
            await _wait_http_ok(session, f"{admin}/status", control_plane, "the control plane")

            ports: list[int] = []
            if not args.no_demo:
                for name in ("backend-a", "backend-b"):
                    runner, port = await start_demo_backend(name)
                    runners.append(runner)
                    ports.append(port)
                await configure_demo(session, admin, ports)

            proxies: list[str] = []
            statuses: list[str] = []
            for index in range(args.data_planes):
                proxy_listen, status_listen = _data_plane_listen(args, index)
                data_plane = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "ferry", "data-plane",
                    "--control-plane", args.cluster_listen,
                    "--proxy-listen", proxy_listen,
                    "--status-listen", status_listen,
                    "--data-dir", str(data_dir / f"data-plane-{index + 1}"),
                    "--hostname", f"ferry-dp-{index + 1}",
                    *common,
                )
                processes.append(data_plane)
                host, port = parse_host_port(status_listen)
                await _wait_http_ok(
                    session, f"http://{format_host_port(host, port)}/status/ready", data_plane,
                    f"data plane {index + 1}",
                )
                statuses.append(format_host_port(host, port))
                proxies.append(", ".join(
                    f"{'https' if entry.ssl else 'http'}://"
                    + format_host_port("127.0.0.1" if entry.host in _WILDCARDS else entry.host, entry.port)
                    for entry in parse_listen_list(proxy_listen)
                ))

            print(_banner(admin, proxies, ports, str(cluster_cert), statuses), flush=True)
            waiters = [asyncio.ensure_future(p.wait()) for p in processes]
            stop_waiter = asyncio.ensure_future(stopping.wait())
            done, _ = await asyncio.wait([stop_waiter, *waiters], return_when=asyncio.FIRST_COMPLETED)
            for waiter in (stop_waiter, *waiters):
                waiter.cancel()
            if stop_waiter not in done:
                print("ferry up: a child process exited; stopping everything", file=sys.stderr)
                return 1
            return 0
    except StartupFailed as exc:
        print(f"ferry up: {exc}", file=sys.stderr)
        return 1
    finally:
        print("ferry up: stopping…", file=sys.stderr, flush=True)
        # Data planes first (they drain requests), the control plane (and its Redis) last.
        for process in reversed(processes):
            await _stop_process(process)
        for runner in runners:
            await runner.cleanup()


def _banner(
    admin: str, proxies: list[str], backend_ports: list[int], cluster_cert: str, statuses: list[str] | None = None
) -> str:
    statuses = statuses or []
    first = proxies[0].split(", ") if proxies else ["http://127.0.0.1:8000"]
    proxy = next((url for url in first if url.startswith("http:")), first[0])
    tls_proxy = next((url for url in first if url.startswith("https:")), None)
    lines = [
        "",
        "Ferry is up.",
        f"  Admin API:     {admin}",
        *(
            f"  Data plane {i + 1}:  proxy {p}"
            + (f", status http://{statuses[i]}/status" if i < len(statuses) else "")
            for i, p in enumerate(proxies)
        ),
        f"  Cluster link:  mTLS (shared certificate {cluster_cert})",
    ]
    if backend_ports:
        lines += [
            "  Demo backends: " + ", ".join(f"127.0.0.1:{p}" for p in backend_ports)
            + " (upstream 'demo', service 'demo', route /demo)",
            "",
            "Try:",
            f"  curl -s {proxy}/demo/hello          # run it twice: backend-a and backend-b take turns",
            *(
                [f"  curl -sk {tls_proxy}/demo/hello        # TLS: the data plane's default certificate"]
                if tls_proxy else []
            ),
            f"  curl -s {admin}/upstreams/demo/targets",
            f"  curl -s {admin}/clustering/data-planes",
            f"  curl -s -X POST {admin}/services -d name=httpbin -d url=http://127.0.0.1:{backend_ports[0]}",
            f"  curl -s -X POST {admin}/services/httpbin/routes -d paths[]=/bin",
            f"  curl -s {proxy}/bin/anything",
        ]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


def run_up(args: argparse.Namespace) -> int:
    import uvloop

    if args.data_planes < 1:
        print("ferry up: --data-planes must be at least 1", file=sys.stderr)
        return 2
    # Every port, before anything starts: two users of one port, or one taken, stop here.
    try:
        plan = port_plan(args)
        check_port_plan(plan, bind_test=False)
    except ValueError as exc:
        print(f"ferry up: {exc}", file=sys.stderr)
        return 2
    try:
        check_port_plan(plan)
    except PortPlanError as exc:
        print(f"ferry up: {exc}", file=sys.stderr)
        return 1
    print(format_port_plan(plan), flush=True)
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    try:
        cluster_cert, cluster_key = ensure_cluster_certificate(Path(args.data_dir))
    except OSError as exc:
        print(f"ferry up: cannot write the cluster certificate: {exc}", file=sys.stderr)
        return 1
    return uvloop.run(_up(args, cluster_cert, cluster_key))
