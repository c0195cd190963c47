"""The node side of ``--workers N``: the hub the proxy workers connect to, and the
worker processes themselves.

:class:`WorkerHub` serves :mod:`data_plane.workers.link`'s protocol on a Unix
socket: it hands every worker the snapshot the node serves and the node's
health state, shares each transition of the node's health checker with every
worker, and adopts the transitions the workers' passive checks make into the
node's checker (which reports them to the control plane and shares them with
the other workers). :class:`WorkerProcesses` starts the workers, restarts one
that dies, and stops them gracefully.

Single event loop; the processes are started from the main thread (their
parent-death signal is tied to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_plane.health.checker import HealthTransition
from data_plane.health.messages import address_health, verdict_rows
from data_plane.health.supervisor import HealthSupervisor
from data_plane.workers.link import FrameError, encode_frame, read_frame
from ferry_shared.child_process import spawn_dying_with_parent
from proto import cluster_pb2

log = logging.getLogger("ferry.data_plane.workers")


@dataclass(slots=True)
class _Worker:
    index: int
    writer: asyncio.StreamWriter
    config_version: int = 0
    config_hash: str = ""
    last_nack: str | None = None


class WorkerHub:
    """Serves the proxy workers of this node. Start with :meth:`start`."""

    def __init__(self, path: Path, health: HealthSupervisor) -> None:
        self.path = path
        self._health = health
        self._server: asyncio.AbstractServer | None = None
        self._workers: dict[int, _Worker] = {}
        self._snapshot: cluster_pb2.Snapshot | None = None
        self._snapshot_frame: bytes | None = None
        self._connections: set[asyncio.Task[None]] = set()
        health.listeners.append(self._share_transition)

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left by a node that was killed
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for worker in list(self._workers.values()):
            worker.writer.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def publish(self, snapshot: cluster_pb2.Snapshot) -> None:
        """The node serves ``snapshot`` now (its checkers already run): send it and
        the node's health state to every worker."""
        self._snapshot = snapshot
        self._snapshot_frame = encode_frame(cluster_pb2.ControlPlaneMessage(snapshot=snapshot))
        state = self._state_frame()
        for worker in self._workers.values():
            worker.writer.write(self._snapshot_frame)
            worker.writer.write(state)

    def workers(self) -> list[dict[str, Any]]:
        """What the status API shows of each connected worker."""
        return [
            {
                "index": w.index,
                "configuration_version": w.config_version or None,
                "configuration_hash": w.config_hash or None,
                "last_nack": w.last_nack,
            }
            for w in sorted(self._workers.values(), key=lambda w: w.index)
        ]

    def all_configured(self, count: int) -> bool:
        """Whether ``count`` workers are connected and each serves the node's config."""
        current = self._snapshot
        return (
            current is not None
            and len(self._workers) >= count
            and all(w.config_hash == current.hash for w in self._workers.values())
        )

    def _state_frame(self) -> bytes:
        rows = self._health.all_rows()
        return encode_frame(
            cluster_pb2.ControlPlaneMessage(
                health_verdicts=cluster_pb2.HealthVerdicts(addresses=address_health(rows))
            )
        )

    def _share_transition(self, transition: HealthTransition) -> None:
        if not self._workers:
            return
        frame = encode_frame(
            cluster_pb2.ControlPlaneMessage(
                health_verdicts=cluster_pb2.HealthVerdicts(addresses=address_health([transition]))
            )
        )
        for worker in self._workers.values():
            worker.writer.write(frame)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        worker: _Worker | None = None
        try:
            first = await read_frame(reader)
            if first is None:
                return
            hello = cluster_pb2.DataPlaneMessage.FromString(first)
            if hello.WhichOneof("message") != "hello":
                log.error("a proxy worker spoke before saying hello; closing its link")
                return
            index = int(hello.hello.labels.get("worker", "0"))
            worker = _Worker(index, writer)
            previous = self._workers.get(index)
            if previous is not None:
                previous.writer.close()
            self._workers[index] = worker
            if self._snapshot_frame is not None:
                writer.write(self._snapshot_frame)
                writer.write(self._state_frame())
            while (frame := await read_frame(reader)) is not None:
                self._handle(worker, cluster_pb2.DataPlaneMessage.FromString(frame))
        except (FrameError, ConnectionError) as exc:
            log.warning("link to proxy worker %s broke: %s", worker.index if worker else "?", exc)
        finally:
            if worker is not None and self._workers.get(worker.index) is worker:
                del self._workers[worker.index]
            writer.close()
            self._connections.discard(task)

    def _handle(self, worker: _Worker, message: cluster_pb2.DataPlaneMessage) -> None:
        kind = message.WhichOneof("message")
        if kind == "ack":
            worker.config_version = message.ack.version
            worker.config_hash = message.ack.hash
            worker.last_nack = None
        elif kind == "nack":
            worker.last_nack = message.nack.error_detail
            log.error(
                "proxy worker %d rejected config version %d: %s",
                worker.index, message.nack.version, message.nack.error_detail,
            )
        elif kind == "health":
            self._health.adopt(verdict_rows(message.health.addresses))


class WorkerProcesses:
    """Runs ``count`` worker processes; ``command(index)`` is each one's argv.

    A worker that exits while the node runs is started again (after a second when
    it lived less than five, so a worker that cannot start does not spin).
    """

    def __init__(self, count: int, command: Callable[[int], list[str]]) -> None:
        self._count = count
        self._command = command
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._started_at: dict[int, float] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pids(self) -> dict[int, int]:
        return {index: proc.pid for index, proc in self._procs.items()}

    def start(self) -> None:
        for index in range(self._count):
            self._spawn(index)
        self._watcher = asyncio.create_task(self._watch(), name="ferry-worker-watch")

    def _spawn(self, index: int) -> None:
        self._procs[index] = spawn_dying_with_parent(self._command(index))
        self._started_at[index] = time.monotonic()
        log.info("proxy worker %d started (pid %d)", index, self._procs[index].pid)

    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.2)
            for index, proc in list(self._procs.items()):
                code = proc.poll()
                if code is None or self._stopping:
                    continue
                log.error("proxy worker %d (pid %d) exited with %s; starting it again",
                          index, proc.pid, code)
                if time.monotonic() - self._started_at[index] < 5.0:
                    await asyncio.sleep(1.0)
                if not self._stopping:
                    self._spawn(index)

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker (they finish in-flight requests), SIGKILL after ``grace`` + 2 s."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace + 2.0
        for proc in self._procs.values():
            try:
                await asyncio.to_thread(proc.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)
        self._procs.clear()
