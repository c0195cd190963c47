"""Scenario ``python-path``: the proxy's own CPU per request, without sockets, on both
hot paths (compiled and ``FERRY_NO_EXTENSIONS=1``).

The wrk scenarios measure a whole process (event loop, syscalls, the kernel's
wake-ups) on a shared machine: figures move by 10–20 % from run to run. This one
drives the proxy's protocol callbacks directly, as ``docs/performance.md``'s
"Python path" profile does: a real :class:`~data_plane.proxy.ProxyServer` with the
benchmark's configuration (route ``/bench``, round-robin over two targets, passive
health checks, request metrics), its client and pooled upstream connections on
in-memory transports, and for each request the client's request bytes and the
upstream's 16 KiB response fed with ``data_received``. What it times is exactly
the Python (or compiled) work between the syscalls, in one process with nothing
else running, so the two paths compare within a few percent.

Each path runs in its own interpreter (the path is chosen once per process, when
``data_plane`` is imported), interleaved, ``rounds`` times; the figure is the
median µs per request of the thread's CPU time.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from bench.options import BenchOptions

REQUEST = b"GET /bench HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
BODY = b"ferry bench: a fixed 16 KiB body from the nginx backends.\n" * 280
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 06 Dec 2026 05:00:00 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: %d\r\nLast-Modified: Sun, 06 Dec 2026 04:00:00 GMT\r\n"
    b"Connection: keep-alive\r\nAccept-Ranges: bytes\r\n\r\n" % len(BODY)
) + BODY
PORTS = (19001, 19002)

ENTITIES: dict[str, list[dict[str, Any]]] = {
    "upstreams": [{
        "id": "u1", "name": "bench", "algorithm": "round-robin",
        "healthchecks": {"passive": {"unhealthy": {"http_failures": 5, "tcp_failures": 5, "timeouts": 5}}},
    }],
    "targets": [
        {"id": f"t{n}", "target": f"127.0.0.1:{port}", "weight": 100, "upstream": {"id": "u1"}}
        for n, port in enumerate(PORTS)
    ],
    "services": [{"id": "s1", "name": "bench", "host": "bench", "port": 80, "protocol": "http"}],
    "routes": [{"id": "r1", "name": "bench", "paths": ["/bench"], "strip_path": False,
                "service": {"id": "s1"}}],
}


class _Transport:
    """Counts what is written; ``closed`` says whether the proxy closed it."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self._extra = {"peername": peer, "sockname": ("127.0.0.1", 8000)}
        self.written = 0
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self._extra.get(name, default)

    def write(self, data: bytes | memoryview) -> None:
        self.written += len(data)

    def writelines(self, data: Any) -> None:
        for piece in data:
            self.written += len(piece)

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        self.closed = True

    abort = close

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None: ...


async def _measure(requests: int) -> dict[str, Any]:
    """Run in the child: µs of thread CPU per request over ``requests`` requests."""
    from data_plane import hot_path, proxy
    from data_plane.config_installer import attach_checkers
    from data_plane.proxy.client import _ClientConnection
    from data_plane.proxy.upstream import _UpstreamConnection
    from data_plane.runtime import ConfigHolder, compile_config

    config = compile_config(1, "bench", ENTITIES)
    attach_checkers(config, None)  # live checkers, as the installer gives them
    server = proxy.ProxyServer(ConfigHolder(config), "127.0.0.1", 0, via="ferry/bench")
    await server.start()
    transports: list[_Transport] = []
    for port in PORTS:
        conn = _UpstreamConnection(server, f"127.0.0.1:{port}")
        transports.append(_Transport(("127.0.0.1", port)))
        conn.connection_made(cast(asyncio.BaseTransport, transports[-1]))
        server.pool.release(conn)
    client = _ClientConnection(server)
    client_transport = _Transport(("127.0.0.1", 40000))
    transports.append(client_transport)
    client.connection_made(cast(asyncio.BaseTransport, client_transport))

    flush = server.write_batch.flush

    def one() -> None:
        client.data_received(REQUEST)
        ex = client._queue[-1]
        conn = cast(_UpstreamConnection, ex.conn)  # the pooled connection the request went to
        conn.data_received(RESPONSE)
        # The end of the loop's iteration, where the proxy's queued writes go out: here
        # once per request (at load, one iteration serves tens of requests).
        flush()

    for _ in range(2000):  # warm: caches, the route, the balancer
        one()
    start_cpu = time.thread_time()
    for _ in range(requests):
        one()
    cpu = time.thread_time() - start_cpu
    written = client_transport.written
    if any(t.closed for t in transports) or written < requests * len(BODY):
        raise RuntimeError("a connection was closed or a response not relayed: not a steady loop")
    await server.stop(timeout=1.0)
    return {
        "hot_path": hot_path.current().as_json(),
        "requests": requests,
        "us_per_request": cpu / requests * 1e6,
        "client_bytes": written,
    }


def _child(requests: int) -> None:
    import uvloop

    print(json.dumps(uvloop.run(_measure(requests))))


def _run_child(python: str, requests: int, pure: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("FERRY_NO_EXTENSIONS", None)
    if pure:
        env["FERRY_NO_EXTENSIONS"] = "1"
    # The script by path with -P (nothing prepended to sys.path): the child imports
    # data_plane from that Python's install, not from whatever tree the cwd is.
    out = subprocess.run(
        [python, "-P", __file__, "--child", str(requests)],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"python-path child failed:\n{out.stderr[-3000:]}")
    return cast(dict[str, Any], json.loads(out.stdout.strip().splitlines()[-1]))


def measure_paths(python: str, *, requests: int, rounds: int) -> dict[str, Any]:
    """Both paths, interleaved ``rounds`` times; medians and the speed-up."""
    runs: dict[str, list[dict[str, Any]]] = {"compiled": [], "python": []}
    for _ in range(rounds):
        runs["compiled"].append(_run_child(python, requests, pure=False))
        runs["python"].append(_run_child(python, requests, pure=True))
    result: dict[str, Any] = {"requests_per_run": requests, "rounds": rounds}
    for name, of_path in runs.items():
        result[name] = {
            "us_per_request": round(statistics.median(r["us_per_request"] for r in of_path), 2),
            "runs_us": [round(r["us_per_request"], 2) for r in of_path],
            "hot_path": of_path[0]["hot_path"],
        }
    compiled, pure = result["compiled"]["us_per_request"], result["python"]["us_per_request"]
    result["compiled_vs_python"] = round(compiled / pure, 3) if pure else None
    return result


def render(result: dict[str, Any]) -> str:
    lines = ["Python path per request (callbacks only, no sockets; thread CPU, median):"]
    for name in ("compiled", "python"):
        row = result[name]
        mode = row["hot_path"]["mode"]
        note = "" if mode == name else f"  (ran {mode}: {row['hot_path']['reason']})"
        lines.append(f"  {name:9s} {row['us_per_request']:6.2f} µs  runs {row['runs_us']}{note}")
    lines.append(f"  compiled ÷ python: {result['compiled_vs_python']}")
    return "\n".join(lines)


def run(options: BenchOptions) -> dict[str, Any]:
    """Both paths of the data plane ``--ferry-bin`` belongs to (its venv's Python)."""
    python = str(Path(options.ferry_bin).parent / "python")
    result = measure_paths(
        python, requests=20_000 if options.quick else 200_000, rounds=1 if options.quick else 3
    )
    print(render(result), flush=True)
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]))
    else:
        print(render(measure_paths(sys.executable, requests=200_000, rounds=3)))
