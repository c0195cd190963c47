"""One proxy worker process of a ``--workers N`` data-plane node.

It proxies on the node's port (``SO_REUSEPORT``: the kernel spreads new
connections over the workers), takes its config and health state from the
node's :class:`~data_plane.workers.hub.WorkerHub` over a Unix socket, and sends
back the transitions its own passive checks make. It probes nothing itself
(the node's checker does) and resolves target names itself. When the link to
the node ends, the worker stops: the node starts a new one, or is gone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from data_plane.access_log import AccessLog
from data_plane.config_installer import ConfigInstaller
from data_plane.dns_resolver import TargetResolver, parse_nameservers
from data_plane.health.checker import HealthTransition
from data_plane.health.messages import address_health, verdict_rows
from data_plane.health.supervisor import HealthSupervisor
from data_plane.proxy import ClientTimeouts, ProxyServer
from data_plane.runtime import ConfigError, ConfigHolder
from data_plane.tls_termination import (
    ServerCertificates,
    TlsTermination,
    load_or_create_default_certificate,
)
from data_plane.workers.link import FrameError, encode_frame, read_frame
from data_plane.workers.metrics import publish_periodically, read_snapshot, snapshot_path
from ferry_shared.listen import ListenAddress
from ferry_shared.logging_setup import current_log_format
from proto import cluster_pb2

log = logging.getLogger("ferry.data_plane.workers.worker")

#: How long a new worker waits for the node's socket to accept it.
CONNECT_TIMEOUT = 10.0
#: How long a new worker waits for its first config before it listens anyway.
FIRST_CONFIG_WAIT = 10.0


class ProxyWorker:
    """Proxy + hub link of one worker. Single event loop."""

    def __init__(
        self,
        hub: Path,
        listen: Sequence[ListenAddress],
        index: int,
        *,
        via: str,
        dns_resolver: str = "",
        hostname: str = "",
        access_log: bool = False,
        client_timeouts: ClientTimeouts | None = None,
    ) -> None:
        self._hub = hub
        self._index = index
        self.holder = ConfigHolder()
        self._resolver = TargetResolver(parse_nameservers(dns_resolver) or None)
        # Named apart from the node: were a worker ever to probe, it would show.
        self._health = HealthSupervisor(f"{hostname} worker {index}")
        # The node probes; this worker only counts what its own requests see.
        self._health.assign(True, [])
        self._health.listeners.append(self._own_transition)
        self._applying_node_state = False
        self._resolver.on_change = self._health.addresses_changed
        # No disk cache: the node keeps it.
        self._installer = ConfigInstaller(self.holder, resolver=self._resolver, health=self._health)
        tls = None
        if any(entry.ssl for entry in listen):
            # The node made the default certificate in its data directory (the hub
            # socket's) before it started this worker.
            tls = TlsTermination(self._server_certificates, load_or_create_default_certificate(hub.parent))
        self._proxy = ProxyServer(
            self.holder, listen[0].host, listen[0].port, via=via, reuse_port=True,
            client_timeouts=client_timeouts, listen=listen, tls=tls,
            access_log=AccessLog(current_log_format(), component=f"data-plane-worker-{index}")
            if access_log else None,
        )
        # The node sums its workers' counts from these files (see worker_metrics).
        self._metrics_path = snapshot_path(hub.parent, index)
        previous = read_snapshot(self._metrics_path)
        if previous is not None:
            self._proxy.metrics.restore(previous)
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.finished = asyncio.Event()
        self._configured = asyncio.Event()

    async def start(self) -> None:
        """Join the node, then listen: once the node's config is applied (a worker
        restarted under load takes no connection it would answer 503), or after
        ``FIRST_CONFIG_WAIT`` s when the node has none to give yet."""
        reader, self._writer = await self._connect()
        self._writer.write(
            encode_frame(
                cluster_pb2.DataPlaneMessage(
                    hello=cluster_pb2.Hello(
                        node_id=f"worker-{self._index}",
                        labels={"worker": str(self._index), "pid": str(os.getpid())},
                    )
                )
            )
        )
        self._tasks = [
            asyncio.create_task(self._resolver.run(), name="ferry-worker-dns"),
            asyncio.create_task(self._follow(reader), name="ferry-worker-link"),
            asyncio.create_task(
                publish_periodically(
                    self._metrics_path,
                    lambda: self._proxy.metrics.snapshot(self._proxy.connections),
                ),
                name="ferry-worker-metrics",
            ),
        ]
        try:
            async with asyncio.timeout(FIRST_CONFIG_WAIT):
                await self._configured.wait()
        except TimeoutError:
            log.warning("proxy worker %d: no config from the node yet; listening anyway", self._index)
        await self._proxy.start()
        log.info("proxy worker %d serving on %s", self._index,
                 ", ".join(str(replace(entry, port=port)) for entry, port in self._proxy.bound()))

    def _server_certificates(self) -> ServerCertificates | None:
        config = self.holder.current
        return config.server_certificates if config is not None else None

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while True:
            try:
                return await asyncio.open_unix_connection(str(self._hub))
            except (FileNotFoundError, ConnectionRefusedError):
                if time.monotonic() > deadline:
                    raise OSError(f"the data-plane node's socket {self._hub} does not answer") from None
                await asyncio.sleep(0.05)

    async def stop(self, grace: float = 5.0) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._resolver.stop()
        await self._health.stop()
        await self._proxy.stop(grace)
        if self._writer is not None:
            self._writer.close()

    async def _follow(self, reader: asyncio.StreamReader) -> None:
        try:
            while (frame := await read_frame(reader)) is not None:
                message = cluster_pb2.ControlPlaneMessage.FromString(frame)
                kind = message.WhichOneof("message")
                if kind == "snapshot":
                    await self._apply(message.snapshot)
                elif kind == "health_verdicts":
                    self._applying_node_state = True
                    try:
                        self._health.verdicts(verdict_rows(message.health_verdicts.addresses))
                    finally:
                        self._applying_node_state = False
            log.info("proxy worker %d: the node closed the link; stopping", self._index)
        except (FrameError, ConnectionError) as exc:
            log.error("proxy worker %d: link to the node broke (%s); stopping", self._index, exc)
        finally:
            self.finished.set()

    async def _apply(self, snapshot: cluster_pb2.Snapshot) -> None:
        assert self._writer is not None
        try:
            await self._installer.install_snapshot(snapshot)
        except ConfigError as exc:
            self._writer.write(
                encode_frame(
                    cluster_pb2.DataPlaneMessage(
                        nack=cluster_pb2.Nack(
                            version=snapshot.version, hash=snapshot.hash, error_detail=str(exc)
                        )
                    )
                )
            )
            return
        self._configured.set()
        self._writer.write(
            encode_frame(
                cluster_pb2.DataPlaneMessage(
                    ack=cluster_pb2.Ack(version=snapshot.version, hash=snapshot.hash)
                )
            )
        )

    def _own_transition(self, transition: HealthTransition) -> None:
        # Node state applied here is the node's already; only this worker's own
        # findings (passive checks, half-open trials) go back.
        if self._applying_node_state or self._writer is None:
            return
        self._writer.write(
            encode_frame(
                cluster_pb2.DataPlaneMessage(
                    health=cluster_pb2.HealthReport(addresses=address_health([transition]))
                )
            )
        )


async def run_worker(worker: ProxyWorker, stopping: asyncio.Event) -> None:
    """Run until ``stopping`` is set or the node's link ends, then stop gracefully."""
    await worker.start()
    try:
        ended = asyncio.ensure_future(worker.finished.wait())
        signalled = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({ended, signalled}, return_when=asyncio.FIRST_COMPLETED)
        ended.cancel()
        signalled.cancel()
    finally:
        await worker.stop()
