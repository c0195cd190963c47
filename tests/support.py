"""Test helpers: poll-with-deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    *,
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns a truthy value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result  # type: ignore[misc]
        last = result  # type: ignore[assignment]
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}; last={last!r}")
        await asyncio.sleep(interval)


def processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def data_dir(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    return path


class FerryProcess:
    """A real ``ferry`` child process whose output goes to a log file.

    ``stop`` sends SIGTERM and waits, killing after a timeout; fixtures call it in
    ``finally`` so a failing test leaves no process behind.
    """

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        import os
        import subprocess
        import sys

        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        full_env = {**os.environ, **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ferry", *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout)

    def stop(self, timeout: float = 10.0) -> int:
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


class SentinelServer:
    """A real Redis Sentinel: the ``redis-server`` Ferry embeds, run with ``--sentinel``.

    It monitors one master (``service_name`` at 127.0.0.1:``master_port``, quorum 1),
    authenticates to it with ``master_password``, and asks clients for
    ``password`` when given. Sentinel rewrites its config file, so it lives in
    ``data_dir``. ``start`` blocks until the Sentinel knows the master;
    ``stop`` (SIGTERM, then SIGKILL) is safe to call twice.
    """

    def __init__(
        self,
        data_dir: Path,
        master_port: int,
        *,
        service_name: str = "mymaster",
        master_password: str | None = None,
        password: str | None = None,
    ) -> None:
        from ferry_shared.listen import free_port

        self.data_dir = data_dir
        self.master_port = master_port
        self.service_name = service_name
        self.master_password = master_password
        self.password = password
        self.port = free_port()
        self._process: Any = None

    def start(self, timeout: float = 10.0) -> None:
        import subprocess

        import redis

        from control_plane.embedded_redis import find_redis_server
        from ferry_shared.child_process import spawn_dying_with_parent

        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            "bind 127.0.0.1",
            f"port {self.port}",
            f"dir {self.data_dir.resolve()}",
            f"logfile {(self.data_dir / 'sentinel.log').resolve()}",
            f"sentinel monitor {self.service_name} 127.0.0.1 {self.master_port} 1",
            # No automatic failover while a test runs; SENTINEL FAILOVER still works.
            f"sentinel down-after-milliseconds {self.service_name} 60000",
        ]
        if self.master_password:
            lines.append(f"sentinel auth-pass {self.service_name} {self.master_password}")
        if self.password:
            lines.append(f"requirepass {self.password}")
        config = self.data_dir / "sentinel.conf"
        config.write_text("\n".join(lines) + "\n")
        self._process = spawn_dying_with_parent(  # never outlives the test run
            [find_redis_server(), str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = self.client(redis)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis sentinel exited: {self.log()[-2000:]}")
                try:
                    if client.sentinel_get_master_addr_by_name(self.service_name):
                        return
                except redis.RedisError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis sentinel did not start: {self.log()[-2000:]}")
                time.sleep(0.02)
        finally:
            client.close()

    def client(self, redis_module: Any = None) -> Any:
        """A synchronous redis-py client of this Sentinel (the caller closes it)."""
        if redis_module is None:
            import redis as redis_module
        return redis_module.Redis(
            host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2,
            decode_responses=True,
        )

    def master_address(self) -> tuple[str, int] | None:
        """What the Sentinel says the master is now (``SENTINEL get-master-addr-by-name``)."""
        client = self.client()
        try:
            found = client.sentinel_get_master_addr_by_name(self.service_name)
        finally:
            client.close()
        return (str(found[0]), int(found[1])) if found else None

    def log(self) -> str:
        try:
            return (self.data_dir / "sentinel.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        import subprocess

        proc, self._process = self._process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def start_control_plane(redis_url: str, data_dir: Path, **settings: Any) -> Any:
    """A started in-process :class:`ControlPlane` on free loopback ports over ``redis_url``.

    Plaintext cluster link, a short merge window; ``settings`` override any
    :class:`ControlPlaneSettings` field. The caller stops it (``stop(grace=...)``).
    """
    from control_plane.server import ControlPlane, ControlPlaneSettings

    options: dict[str, Any] = {
        "admin_listen": "127.0.0.1:0",
        "cluster_listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "redis_url": redis_url,
        "cluster_insecure": True,
        "merge_window": 0.01,
        **settings,
    }
    plane = ControlPlane(ControlPlaneSettings(**options))
    await plane.start()
    return plane
