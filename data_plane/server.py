"""The data plane's lifecycle: config cache, status API, proxy, cluster link.

Start order: load the disk cache (so a DP whose CP is down still serves its
last config), start the status API and the proxy, then connect to the CP. Stop
order is the reverse; in-flight requests get ``grace`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import ferry
from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import TargetResolver, parse_nameservers
from data_plane.health_supervisor import HealthSupervisor
from data_plane.node_identity import NodeIdentity, default_hostname, load_or_create_node_id
from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder
from data_plane.status_api import create_status_app
from ferry.cluster_link import require_secured_link
from ferry.cluster_tls import ClusterTLS
from ferry.http_site import start_site
from ferry.listen import parse_host_port

log = logging.getLogger("ferry.data_plane")


class DataPlaneSettings(BaseModel):
    """Validated data-plane settings (one per CLI flag)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    control_plane: str = "127.0.0.1:8005"
    proxy_listen: str = "0.0.0.0:8000"
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

    @field_validator("control_plane", "proxy_listen", "status_listen")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        parse_host_port(value)
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
            version=ferry.__version__,
            labels=dict(settings.labels),
        )
        self.resolver = TargetResolver(parse_nameservers(settings.dns_resolver) or None)
        self.health = HealthSupervisor(self.node.hostname)
        self.resolver.on_change = self.health.addresses_changed
        self.client = ClusterClient(
            settings.control_plane,
            self.holder,
            self._cache,
            self.node,
            insecure=settings.cluster_insecure,
            ping_interval=settings.cluster_ping_interval,
            tls=settings.cluster_tls,
            resolver=self.resolver,
            health=self.health,
        )
        self._proxy: ProxyServer | None = None
        self._runner: web.AppRunner | None = None
        self._client_task: asyncio.Task[None] | None = None
        self._resolver_task: asyncio.Task[None] | None = None
        self.proxy_port = 0
        self.status_port = 0

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        await self.client.load_cache()
        self._resolver_task = asyncio.create_task(self.resolver.run(), name="ferry-dns-resolver")
        app = create_status_app(
            self.holder,
            self.client.state,
            self.node,
            control_plane=self.settings.control_plane,
            health=self.health,
            resolver=self.resolver,
        )
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = parse_host_port(self.settings.status_listen)
        self.status_port = await start_site(self._runner, host, port)
        log.info("status API listening on %s:%d", host, self.status_port)

        host, port = parse_host_port(self.settings.proxy_listen, default_host="0.0.0.0")
        self._proxy = ProxyServer(self.holder, host, port, via=f"ferry/{ferry.__version__}")
        await self._proxy.start()
        self.proxy_port = self._proxy.port
        log.info("proxy listening on %s:%d", host, self.proxy_port)

        self._client_task = asyncio.create_task(self.client.run(), name="ferry-cluster-client")

    async def stop(self, grace: float = 5.0) -> None:
        if self._client_task is not None:
            self._client_task.cancel()
            await asyncio.gather(self._client_task, return_exceptions=True)
            self._client_task = None
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
