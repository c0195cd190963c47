"""A real ``ferry control-plane`` process recovers its embedded Redis after a SIGKILL.

The ``redis-server`` child is killed with SIGKILL; the control plane reaps it
(no zombie), answers ``/status/ready`` 503 while it is down, restarts it on the
same port and data directory with back-off, and then serves every write
acknowledged before the kill, takes new writes, and streams them to a data
plane, all without being restarted.

To see the outage deterministically (a restart takes a few milliseconds), the
test freezes the control plane (SIGSTOP) around the kill and holds Redis's port
for a while: the first restart attempts then fail and back off.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import redis

from tests.support.admin import admin
from tests.support.ferry_cluster import Cluster, wait_dp_synced
from tests.support.http import get_json, wait_http_ok
from tests.support.polling import wait_for


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _state(pid: int) -> str | None:
    """The process state letter (``Z`` for a zombie), None when no such process exists."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _redis_child(cp_pid: int) -> int | None:
    for pid in _children(cp_pid):
        if _comm(pid) == "redis-server" and _state(pid) not in (None, "Z"):
            return pid
    return None


def _redis_settings(pid: int) -> tuple[int, str, str]:
    """The port (from the process title Redis sets), data directory and appendfsync of a Redis."""
    port = int(_cmdline(pid)[0].rsplit(":", 1)[1])
    client = redis.Redis(port=port, socket_timeout=5, decode_responses=True)
    try:
        data = str(client.config_get("dir")["dir"])
        appendfsync = str(client.config_get("appendfsync")["appendfsync"])
    finally:
        client.close()
    return port, data, appendfsync


def _hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:``port`` (None while something else still holds it)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As Redis does: the CP's old connections leave the port's side in TIME_WAIT.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen(1)
    except OSError:
        sock.close()
        return None
    return sock


def _leftover_processes(text: str) -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and any(text in part for part in _cmdline(int(entry.name))):
            yield int(entry.name)


async def test_a_killed_embedded_redis_is_reaped_restarted_and_loses_no_acknowledged_write(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    cluster = Cluster(tmp_path, redis_url=None)
    held: socket.socket | None = None
    cp = cluster.start_control_plane(name="cp")
    try:
        ready_url, status_url = f"{cluster.admin}/status/ready", f"{cluster.admin}/status"
        await wait_http_ok(http, ready_url, cp)
        assert await get_json(http, ready_url, timeout=5) == (200, {"message": "ready"})
        dp = cluster.start_data_plane("dp1")
        await wait_http_ok(http, f"{dp.status}/status/ready", dp.process)

        # Writes acknowledged before the kill.
        names = [f"before-{i}" for i in range(20)]
        for name in names:
            await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": name})

        redis_pid = await wait_for(lambda: _redis_child(cp.process.pid), message="the redis-server child")
        port, data, appendfsync = _redis_settings(redis_pid)
        assert appendfsync == "always", "every acknowledged write is fsynced before the answer"

        # Freeze the CP, kill its Redis, and take Redis's port so the first restarts fail.
        cp.signal(signal.SIGSTOP)
        try:
            os.kill(redis_pid, signal.SIGKILL)
            held = await wait_for(lambda: _hold(port), timeout=10, message=f"port {port} to be free")
            assert _state(redis_pid) == "Z", "not reaped while the CP is frozen: a zombie"
        finally:
            cp.signal(signal.SIGCONT)

        # Reaped at once, down (503 with the reason; /status says the database is unreachable).
        await wait_for(lambda: _state(redis_pid) is None, timeout=10, message="the CP to reap redis-server")

        async def not_ready() -> Any:
            status, body = await get_json(http, ready_url, timeout=5)
            return body if status == 503 else None

        body = await wait_for(not_ready, timeout=10, message="/status/ready to answer 503")
        assert body["message"].startswith("failed to connect to database"), body
        status, body = await get_json(http, status_url, timeout=5)
        assert status == 200 and body["database"] == {"reachable": False}, body
        await wait_for(lambda: "restart attempt 2 failed" in cp.log(), timeout=15,
                       message="the CP to retry the restart with back-off")

        # Let it start: ready again, same port and data directory, a new process.
        held.close()
        held = None

        async def ready() -> bool:
            return await get_json(http, ready_url, timeout=5) == (200, {"message": "ready"})

        await wait_for(ready, timeout=30, message="/status/ready to answer 200 again")
        status, body = await get_json(http, status_url, timeout=5)
        assert status == 200 and body["database"] == {"reachable": True}, body
        new_pid = _redis_child(cp.process.pid)
        assert new_pid is not None and new_pid != redis_pid
        assert _redis_settings(new_pid) == (port, data, "always")
        assert cp.returncode is None, "the CP was not restarted"

        # No acknowledged write lost; writes work again and reach the data plane.
        listed = await admin(http, "GET", f"{cluster.admin}/upstreams?size=1000")
        assert sorted(u["name"] for u in listed["data"]) == sorted(names)
        await admin(http, "POST", f"{cluster.admin}/upstreams", {"name": "after"})
        synced = await wait_dp_synced(http, cluster, dp.status)
        assert synced["configuration_version"] == len(names) + 1
    finally:
        if held is not None:
            held.close()
        cp.signal(signal.SIGCONT)
        cluster.stop_all()
        for pid in _leftover_processes(str(tmp_path)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
