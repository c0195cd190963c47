"""The data plane's lifecycle: config cache, status API, proxy, cluster link.

Start order: load the disk cache (so a DP whose CP is down still serves its
last config), start the status API and the proxy, then connect to the CP. Stop
order is the reverse; in-flight requests get ``grace`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import ferry_shared
from data_plane import hot_path
from data_plane.access_log import AccessLog
from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import ConfigCache
from data_plane.config_installer import ConfigInstaller, HeldConfig
from data_plane.dns_resolver import TargetResolver, parse_nameservers
from data_plane.health.supervisor import HealthSupervisor
from data_plane.metrics_export import DataPlaneCollector, metrics_registry
from data_plane.node_identity import NodeIdentity, default_hostname, load_or_create_node_id
from data_plane.proxy import ClientTimeouts, ProxyServer
from data_plane.request_metrics import Snapshot
from data_plane.runtime import ConfigHolder
from data_plane.status_api import create_status_app
from data_plane.tls_termination import (
    ServerCertificates,
    TlsTermination,
    certificate_expiry,
    expiry_series,
    load_or_create_default_certificate,
)
from data_plane.workers.hub import WorkerHub, WorkerProcesses
from data_plane.workers.metrics import read_node_snapshot
from ferry_shared.cluster_link import require_secured_link
from ferry_shared.cluster_tls import ClusterTLS
from ferry_shared.http_site import start_site
from ferry_shared.listen import ListenAddress, parse_host_port, parse_listen_list
from ferry_shared.logging_setup import current_log_format

log = logging.getLogger("ferry.data_plane")


class DataPlaneSettings(BaseModel):
    """Validated data-plane settings (one per CLI flag)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    control_plane: str = "127.0.0.1:8005"
    #: Kong's listen list: plaintext on 8000 and TLS on 8443 by default, as Kong's.
    proxy_listen: str = "0.0.0.0:8000, 0.0.0.0:8443 ssl"
    status_listen: str = "127.0.0.1:8100"
    data_dir: Path = Path("./ferry-data")
    cluster_insecure: bool = False
    #: mTLS for the cluster link (None: plaintext, only with ``cluster_insecure``).
    cluster_tls: ClusterTLS | None = None
    hostname: str = ""
    labels: dict[str, str] = {}
    #: Kong's ``dns_resolver``: ``IP[:PORT]`` list; empty = /etc/resolv.conf's nameservers
    dns_resolver: str = ""
    #: Seconds between keep-alive pings to the CP (Kong's 30); the CP pings back at the
    #: same interval, and either side drops the stream after 1.5 silent intervals.
    cluster_ping_interval: float = Field(default=30.0, gt=0, le=3600)
    #: Proxy processes sharing the proxy port (SO_REUSEPORT); 1 = proxy in this process.
    workers: int = Field(default=1, ge=1, le=256)
    #: One log record per proxied request (``ferry.access`` logger; see access_log.py).
    access_log: bool = False
    #: nginx's client timeouts, seconds (see data_plane.proxy.ClientTimeouts).
    client_header_timeout: float = Field(default=60.0, gt=0, le=86400)
    client_body_timeout: float = Field(default=60.0, gt=0, le=86400)
    send_timeout: float = Field(default=60.0, gt=0, le=86400)

    @property
    def client_timeouts(self) -> ClientTimeouts:
        return ClientTimeouts(self.client_header_timeout, self.client_body_timeout, self.send_timeout)

    @field_validator("control_plane", "status_listen")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("proxy_listen")
    @classmethod
    def _valid_listen_list(cls, value: str) -> str:
        parse_listen_list(value)
        return value

    @field_validator("dns_resolver")
    @classmethod
    def _valid_nameservers(cls, value: str) -> str:
        parse_nameservers(value)
        return value

    @model_validator(mode="after")
    def _cluster_link_is_secured(self) -> DataPlaneSettings:
        require_secured_link(self.cluster_insecure, self.cluster_tls)
        return self


class DataPlane:
    """One data-plane process. Single event loop (uvloop in production)."""

    def __init__(self, settings: DataPlaneSettings) -> None:
        self.settings = settings
        self.holder = ConfigHolder()
        self._cache = ConfigCache(settings.data_dir)
        node_id = load_or_create_node_id(settings.data_dir)
        self.node = NodeIdentity(
            node_id=node_id,
            hostname=settings.hostname or default_hostname(),
            version=ferry_shared.__version__,
            labels=dict(settings.labels),
        )
        self.resolver = TargetResolver(parse_nameservers(settings.dns_resolver) or None)
        self.health = HealthSupervisor(self.node.hostname)
        self.resolver.on_change = self.health.addresses_changed
        self.health.dns_errors = self.resolver.dns_errors
        self.installer = ConfigInstaller(
            self.holder, self._cache, resolver=self.resolver, health=self.health,
            on_installed=self._installed,
        )
        self.client = ClusterClient(
            settings.control_plane,
            self.installer,
            node=self.node,
            insecure=settings.cluster_insecure,
            ping_interval=settings.cluster_ping_interval,
            tls=settings.cluster_tls,
        )
        self._proxy: ProxyServer | None = None
        #: The TLS listeners' certificates (with an ``ssl`` entry in ``--proxy-listen``).
        self._tls: TlsTermination | None = None
        #: With ``workers`` > 1: the hub the worker processes follow, and the processes.
        self.hub: WorkerHub | None = None
        self.worker_processes: WorkerProcesses | None = None
        self._port_reservations: list[socket.socket] = []
        self._runner: web.AppRunner | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._resolver_task: asyncio.Task[None] | None = None
        #: The first plaintext and the first TLS proxy port (0: none), once started.
        self.proxy_port = 0
        self.proxy_tls_port = 0
        #: Every proxy listener with its bound port (``127.0.0.1:8443 ssl``), once started.
        self.proxy_listeners: list[str] = []
        self.status_port = 0

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    def _request_counts(self) -> Snapshot | None:
        """What the proxy counted: this process's, or the sum of the workers' files."""
        if self.settings.workers > 1:
            return read_node_snapshot(self.settings.data_dir, self.settings.workers)
        if self._proxy is None:
            return None
        return self._proxy.metrics.snapshot(self._proxy.connections)

    def _installed(self, held: HeldConfig) -> None:
        if self.hub is not None:
            self.hub.publish(held.snapshot())

    async def _start(self) -> None:
        path = hot_path.current()
        if path.mode == "python" and not hot_path.extensions_disabled():
            log.warning("running the %s", path.describe())
        else:
            log.info("running the %s", path.describe())
        if self.settings.workers > 1:
            # Before the cache is loaded, so the workers get the cached config too.
            # Worker counts continue across a worker's restart, not across the node's.
            shutil.rmtree(self.settings.data_dir / "worker-metrics", ignore_errors=True)
            self.hub = WorkerHub(self.settings.data_dir / "workers.sock", self.health)
            await self.hub.start()
        await self.client.load_cache()
        self._resolver_task = asyncio.create_task(self.resolver.run(), name="ferry-dns-resolver")
        app = create_status_app(
            self.holder,
            self.client.state,
            self.node,
            control_plane=self.settings.control_plane,
            health=self.health,
            resolver=self.resolver,
            workers=self.hub.workers if self.hub is not None else None,
            workers_ready=(
                (lambda: self.hub is not None and self.hub.all_configured(self.settings.workers))
                if self.hub is not None
                else None
            ),
            metrics=metrics_registry(
                DataPlaneCollector(
                    self.holder, self.client.state, self._request_counts, self.resolver.dns_errors,
                    certificates=lambda: expiry_series(
                        self._server_certificates(), self._tls.default_expires_at if self._tls else None
                    ),
                )
            ),
            cache=self._cache,
            requests=self._request_counts,
            tls=self._tls_status,
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = parse_host_port(self.settings.status_listen)
        self.status_port = await start_site(self._runner, host, port)
        log.info("status API listening on %s:%d", host, self.status_port)

        listen = parse_listen_list(self.settings.proxy_listen)
        for entry in listen:
            if entry.http2:
                # Kong's flag: HTTP/2 beside HTTP/1.1 (ALPN h2 on TLS, h2c with prior
                # knowledge in plaintext); data_plane/proxy/http2.py.
                log.info("proxy listener %s speaks HTTP/2 (%s) and HTTP/1.1", entry,
                         "ALPN h2" if entry.ssl else "h2c with prior knowledge")
        tls = None
        if any(entry.ssl for entry in listen):
            default_pem = await asyncio.to_thread(load_or_create_default_certificate, self.settings.data_dir)
            tls = self._tls = TlsTermination(self._server_certificates, default_pem)
        if self.hub is not None:
            self._start_workers(listen)
        else:
            self._proxy = ProxyServer(
                self.holder, listen[0].host, listen[0].port, via=f"ferry/{ferry_shared.__version__}",
                client_timeouts=self.settings.client_timeouts,
                access_log=AccessLog(current_log_format(), component="data-plane")
                if self.settings.access_log else None,
                listen=listen,
                tls=tls,
            )
            await self._proxy.start()
            self._note_listeners([replace(entry, port=port) for entry, port in self._proxy.bound()])
            log.info("proxy listening on %s", ", ".join(self.proxy_listeners))

        self._client_task = asyncio.create_task(self.client.run(), name="ferry-cluster-client")

    def _server_certificates(self) -> ServerCertificates | None:
        config = self.holder.current
        return config.server_certificates if config is not None else None

    def _tls_status(self) -> dict[str, Any]:
        return {
            "listeners": self.proxy_listeners,
            "certificates": certificate_expiry(
                self._server_certificates(),
                self._tls.default_expires_at if self._tls is not None else None,
                time.time(),
            ) if self._tls is not None else [],
        }

    def _note_listeners(self, bound: Sequence[ListenAddress]) -> None:
        self.proxy_listeners = [str(entry) for entry in bound]
        self.proxy_port = next((entry.port for entry in bound if not entry.ssl), 0)
        self.proxy_tls_port = next((entry.port for entry in bound if entry.ssl), 0)

    def _start_workers(self, requested: Sequence[ListenAddress]) -> None:
        listen: list[ListenAddress] = []
        for entry in requested:
            if entry.port == 0:
                # Every worker must bind the same port: pick it here and hold it (bound,
                # never listening, so the kernel hands it no connection).
                family = socket.AF_INET6 if ":" in entry.host else socket.AF_INET
                reservation = socket.socket(family, socket.SOCK_STREAM)
                reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                reservation.bind((entry.host, 0))
                self._port_reservations.append(reservation)
                entry = replace(entry, port=reservation.getsockname()[1])
            listen.append(entry)
        self._note_listeners(listen)
        assert self.hub is not None
        hub_path = str(self.hub.path)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()
        listen_text = ", ".join(str(entry) for entry in listen)

        def command(index: int) -> list[str]:
            return [
                sys.executable, "-m", "ferry", "data-plane-worker",
                "--hub", hub_path,
                "--proxy-listen", listen_text,
                "--index", str(index),
                "--dns-resolver", self.settings.dns_resolver,
                "--hostname", self.node.hostname,
                "--log-level", level if level in ("debug", "info", "warning", "error") else "info",
                "--log-format", current_log_format(),
                *(["--access-log"] if self.settings.access_log else []),
                "--client-header-timeout", str(self.settings.client_header_timeout),
                "--client-body-timeout", str(self.settings.client_body_timeout),
                "--send-timeout", str(self.settings.send_timeout),
            ]

        self.worker_processes = WorkerProcesses(self.settings.workers, command)
        self.worker_processes.start()
        log.info("proxy listening on %s with %d worker processes",
                 listen_text, self.settings.workers)

    async def stop(self, grace: float = 5.0) -> None:
        if self.worker_processes is not None:
            await self.worker_processes.stop(grace)
            self.worker_processes = None
        if self.hub is not None:
            await self.hub.stop()
            self.hub = None
        for reservation in self._port_reservations:
            reservation.close()
        self._port_reservations = []
        if self._client_task is not None:
            self._client_task.cancel()
            await asyncio.gather(self._client_task, return_exceptions=True)
            self._client_task = None
        await self.installer.flush()  # the last config applied, on disk for the next start
        self.resolver.stop()
        if self._resolver_task is not None:
            self._resolver_task.cancel()
            await asyncio.gather(self._resolver_task, return_exceptions=True)
            self._resolver_task = None
        await self.health.stop()
        if self._proxy is not None:
            await self._proxy.stop(grace)
            self._proxy = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
