"""A real Redis Sentinel for the tests of Ferry's Sentinel support."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any


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
