"""The control plane's lifecycle: Redis, followers, Admin API, cluster gRPC.

``ControlPlane.start`` brings the parts up in dependency order and
``ControlPlane.stop`` takes them down in reverse, with a grace period for open
DP streams. Settings validate on construction, so a bad flag fails before any
port is bound or any child process started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import redis.asyncio as aioredis
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

import ferry_shared
from control_plane.admin_api import MAX_BODY_BYTES, create_admin_app
from control_plane.admin_tls import (
    AdminCertificate,
    AdminTLSError,
    admin_ssl_context,
    check_admin_certificate,
    ensure_default_certificate,
    start_admin_site,
)
from control_plane.admin_tokens import load_admin_tokens
from control_plane.cluster_server import ClusterServicer, add_cluster_servicer
from control_plane.config_follower import ConfigFollower
from control_plane.data_planes import DEFAULT_PURGE_DELAY, DataPlaneRegistry
from control_plane.embedded_redis import EmbeddedRedis, RedisSupervisor
from control_plane.errors import StoreUnavailable
from control_plane.health import (
    DEFAULT_HEALTH_TTL,
    OverrideBroadcaster,
    OverrideFollower,
    TargetHealthStore,
)
from control_plane.metrics import ControlPlaneView
from control_plane.probe_assignment import DEFAULT_MEMBERSHIP_INTERVAL, ProbeCoordinator
from control_plane.readiness import Readiness
from control_plane.redis_connection import (
    REDIS_ERRORS,
    create_redis_client,
    describe_redis_url,
    validate_redis_url,
)
from control_plane.snapshot import SnapshotStore
from control_plane.store import EntityStore
from ferry_shared.cluster_link import require_secured_link
from ferry_shared.cluster_tls import ClusterTLS, add_cluster_port, server_interceptors
from ferry_shared.listen import ListenAddress, format_host_port, parse_host_port, parse_listen_list

log = logging.getLogger("ferry.control_plane")


class ConfigurationError(ValueError):
    """A control-plane setting that cannot work; the message says how to fix it."""


class ControlPlaneSettings(BaseModel):
    """Validated control-plane settings (one per CLI flag)."""

    # hide_input_in_errors: a bad --redis-url may carry a password.
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    #: Kong's listen list: ``127.0.0.1:8001, 127.0.0.1:8444 ssl``; every entry serves the
    #: same Admin API, an ``ssl`` one over TLS (a host left out means 127.0.0.1).
    admin_listen: str = "127.0.0.1:8001"
    #: The ``ssl`` listeners' certificate and key (PEM files); both or neither. Neither:
    #: a self-signed default generated under ``data_dir/ssl/`` at first start.
    admin_ssl_cert: Path | None = None
    admin_ssl_cert_key: Path | None = None
    cluster_listen: str = "127.0.0.1:8005"
    data_dir: Path = Path("./ferry-data")
    redis_url: str | None = None
    redis_prefix: str = "ferry"
    cluster_insecure: bool = False
    #: mTLS for the cluster link (None: plaintext, only with ``cluster_insecure``).
    cluster_tls: ClusterTLS | None = None
    #: At most one update to DPs per this many seconds: a change after a quiet window
    #: goes out at once, changes within a window of the last update go out together.
    merge_window: float = Field(default=0.05, ge=0, le=10)
    data_plane_purge_delay: int = Field(default=DEFAULT_PURGE_DELAY, ge=1)
    #: Seconds a DP's reported target health keeps counting after its last report
    #: or ping (DPs ping every 30 s). Not the purge delay: a DP gone for days must
    #: not keep voting on the health of targets.
    health_report_ttl: float = Field(default=DEFAULT_HEALTH_TTL, gt=0, le=86400)
    #: Health-check sharding: how many DPs actively probe each target (0 = every
    #: DP probes every target). Every CP sharing a Redis must use the same value.
    health_check_replicas: int = Field(default=0, ge=0)
    #: Plaintext gRPC health service (grpc.health.v1 only) for orchestrator probes,
    #: which cannot speak the cluster port's mTLS; ``None``: not served.
    health_listen: str | None = None
    #: Admin API tokens file (see admin_tokens.py); ``None``: no access control.
    admin_tokens: Path | None = None
    #: Largest Admin API request body in bytes (413 above it).
    admin_body_limit: int = Field(default=MAX_BODY_BYTES, ge=1024, le=1024**3)

    @field_validator("cluster_listen")
    @classmethod
    def _valid_address(cls, value: str) -> str:
        parse_host_port(value)
        return value

    @field_validator("admin_listen")
    @classmethod
    def _valid_admin_listen(cls, value: str) -> str:
        parse_listen_list(value, default_host="127.0.0.1")
        return value

    @property
    def admin_listeners(self) -> tuple[ListenAddress, ...]:
        """``admin_listen`` parsed, in the order given (the first is ``ControlPlane.admin_port``)."""
        return parse_listen_list(self.admin_listen, default_host="127.0.0.1")

    @model_validator(mode="after")
    def _admin_certificate_loads(self) -> ControlPlaneSettings:
        # Kong's conf_loader wording for the missing half; the files are checked whenever
        # given (not only with an ssl listener), so a typo never waits for the day ssl is on.
        cert, key = self.admin_ssl_cert, self.admin_ssl_cert_key
        if cert is not None and key is None:
            raise AdminTLSError("--admin-ssl-cert-key must be specified")
        if key is not None and cert is None:
            raise AdminTLSError("--admin-ssl-cert must be specified")
        if cert is not None and key is not None:
            check_admin_certificate(cert, key)
        return self

    @field_validator("admin_tokens")
    @classmethod
    def _usable_tokens(cls, value: Path | None) -> Path | None:
        if value is not None:
            load_admin_tokens(value)  # AdminTokenError (a ValueError) says what is wrong
        return value

    @field_validator("health_listen")
    @classmethod
    def _valid_health_address(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        parse_host_port(value)
        return value

    @field_validator("redis_url")
    @classmethod
    def _valid_redis_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        # redis://, rediss://, unix:// or redis+sentinel://; the message never shows a password.
        return validate_redis_url(value)

    @model_validator(mode="after")
    def _cluster_link_is_secured(self) -> ControlPlaneSettings:
        require_secured_link(self.cluster_insecure, self.cluster_tls)
        return self


class ControlPlane:
    """One control-plane process. ``start`` → ``wait_stopped``/``stop``; single event loop.

    ``membership_interval`` is how often (seconds) health-check sharding re-reads
    the live data planes of every CP (tests shorten it; no CLI flag).
    """

    def __init__(
        self, settings: ControlPlaneSettings, *, membership_interval: float = DEFAULT_MEMBERSHIP_INTERVAL
    ) -> None:
        self.settings = settings
        self._membership_interval = membership_interval
        self.node_id = str(uuid.uuid4())
        self.snapshots = SnapshotStore()
        self._embedded: EmbeddedRedis | None = None
        #: Restarts the embedded Redis when it dies (None with --redis-url).
        self.redis_supervisor: RedisSupervisor | None = None
        self._redis: aioredis.Redis | None = None
        self._follower: ConfigFollower | None = None
        self._registry: DataPlaneRegistry | None = None
        self._override_follower: OverrideFollower | None = None
        #: Hands manual overrides from Redis to this CP's DP streams.
        self.overrides = OverrideBroadcaster()
        #: Health-check sharding (None with ``health_check_replicas`` 0).
        self.probes: ProbeCoordinator | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health_grpc: grpc.aio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._stopped = asyncio.Event()
        #: The bound port of the first ``admin_listen`` entry; ``admin_ports`` has every one.
        self.admin_port = 0
        self.admin_ports: tuple[int, ...] = ()
        #: What the ``ssl`` Admin API listeners serve (None without one).
        self.admin_certificate: AdminCertificate | None = None
        self.cluster_port = 0
        self.health_port = 0

    async def start(self) -> None:
        settings = self.settings
        try:
            await self._start(settings)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, settings: ControlPlaneSettings) -> None:
        # Before anything starts: a bad tokens file must not leave a half-started CP.
        tokens = load_admin_tokens(settings.admin_tokens) if settings.admin_tokens else None
        redis_url = settings.redis_url
        if redis_url is None:
            self._embedded = EmbeddedRedis(settings.data_dir / "redis")
            # From this (the main) thread: see EmbeddedRedis on parent-death signals.
            self._embedded.start()
            redis_url = self._embedded.url
            log.info(
                "embedded redis-server started on %s (pid %s, data in %s, appendfsync %s)",
                redis_url, self._embedded.pid, settings.data_dir / "redis", self._embedded.appendfsync,
            )
            # Reaps it if it dies and starts it again on the same port and data.
            self.redis_supervisor = RedisSupervisor(self._embedded)
            self.redis_supervisor.start()
        else:
            log.info("using %s", describe_redis_url(redis_url))
        self._redis = create_redis_client(redis_url)
        store = EntityStore(self._redis, prefix=settings.redis_prefix)
        registry = self._registry = DataPlaneRegistry(
            self._redis, settings.redis_prefix, purge_delay=settings.data_plane_purge_delay
        )
        self._follower = ConfigFollower(
            self._redis, store, self.snapshots, merge_window=settings.merge_window
        )
        await self._follower.start()
        health_store = TargetHealthStore(
            self._redis, settings.redis_prefix, ttl=settings.health_report_ttl
        )
        self._override_follower = OverrideFollower(
            self._redis, health_store.overrides_stream_key, self.overrides
        )
        await self._override_follower.start()
        if settings.health_check_replicas > 0:
            self.probes = ProbeCoordinator(
                self._redis,
                self.snapshots,
                health_store,
                replicas=settings.health_check_replicas,
                prefix=settings.redis_prefix,
                ttl=settings.health_report_ttl,
                membership_interval=self._membership_interval,
                cp_id=self.node_id,
            )
            await self.probes.start()
            log.info(
                "health-check sharding on: each target is probed by %d data plane(s)",
                settings.health_check_replicas,
            )

        self._grpc = grpc.aio.server(interceptors=server_interceptors(settings.cluster_tls))
        servicer = ClusterServicer(
            self.snapshots,
            registry,
            cp_id=self.node_id,
            health=health_store,
            overrides=self.overrides,
            probes=self.probes,
        )
        add_cluster_servicer(servicer, self._grpc)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._grpc)
        host, port = parse_host_port(settings.cluster_listen)
        self.cluster_port = add_cluster_port(self._grpc, format_host_port(host, port), settings.cluster_tls)
        if self.cluster_port == 0:
            raise OSError(f"cannot listen for the cluster on {settings.cluster_listen}")
        await self._grpc.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        await health_servicer.set("ferry.cluster.v1.Cluster", health_pb2.HealthCheckResponse.SERVING)
        security = settings.cluster_tls.describe() if settings.cluster_tls else "insecure"
        log.info("cluster gRPC listening on %s:%d (%s)", host, self.cluster_port, security)
        if settings.health_listen:
            # The same servicer object: one SERVING/NOT_SERVING state on both ports.
            self._health_grpc = grpc.aio.server()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, self._health_grpc)
            host, port = parse_host_port(settings.health_listen)
            self.health_port = self._health_grpc.add_insecure_port(format_host_port(host, port))
            if self.health_port == 0:
                raise OSError(f"cannot listen for gRPC health checks on {settings.health_listen}")
            await self._health_grpc.start()
            log.info("gRPC health service (plaintext) listening on %s:%d", host, self.health_port)

        async def metrics_view(admin_requests: Mapping[int, int]) -> ControlPlaneView:
            reachable = await store.ping()
            try:
                rows: list[dict[str, Any]] | None = await registry.list_data_planes()
            except StoreUnavailable:
                rows, reachable = None, False
            current = self.snapshots.current
            return ControlPlaneView(
                ferry_version=ferry_shared.__version__,
                config_version=current.version if current is not None else 0,
                open_streams=servicer.open_streams,
                datastore_reachable=reachable,
                data_planes=rows,
                redis_errors=dict(REDIS_ERRORS),
                admin_requests=dict(admin_requests),
            )

        supervisor = self.redis_supervisor
        readiness = Readiness(
            store.ping,
            lambda: self.snapshots.current is not None,
            (lambda: supervisor.down_reason) if supervisor is not None else (lambda: None),
        )
        app = create_admin_app(
            store, registry, node_id=self.node_id, version=ferry_shared.__version__, health=health_store,
            tokens=tokens, max_body=settings.admin_body_limit, metrics=metrics_view,
            readiness=readiness.handler,
        )
        if tokens is not None:
            log.info("admin API access control on: %d token(s) from %s", len(tokens), settings.admin_tokens)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._start_admin_listeners(settings, self._runner)

    async def _start_admin_listeners(self, settings: ControlPlaneSettings, runner: web.AppRunner) -> None:
        """Every ``admin_listen`` entry serves ``runner``'s one app (tokens, console, OpenAPI
        alike); the ``ssl`` ones with the operator's certificate or the generated default."""
        listeners = settings.admin_listeners
        context = None
        if any(listener.ssl for listener in listeners):
            self.admin_certificate = await asyncio.to_thread(self._load_admin_certificate, settings)
            context = admin_ssl_context(self.admin_certificate)
        elif settings.admin_ssl_cert is not None:
            log.warning("--admin-ssl-cert is set but no --admin-listen entry has ssl: it is not used")
        ports: list[int] = []
        shown: list[str] = []
        for listener in listeners:
            port = await start_admin_site(runner, listener.host, listener.port,
                                          context if listener.ssl else None, listener.backlog)
            ports.append(port)
            bound = format_host_port(listener.host, port)
            shown.append(f"https://{bound} (TLS 1.2+)" if listener.ssl else f"http://{bound}")
            if listener.http2:
                log.warning("admin listener %s: http2 is ignored, the Admin API speaks HTTP/1.1", bound)
        self.admin_ports = tuple(ports)
        self.admin_port = ports[0]
        log.info("admin API listening on %s", ", ".join(shown))
        if self.admin_certificate is not None:
            log.info("admin API TLS: %s", self.admin_certificate.describe())

    @staticmethod
    def _load_admin_certificate(settings: ControlPlaneSettings) -> AdminCertificate:
        """The operator's pair (checked again: a file may have changed since the settings
        were made), or the default one under ``data_dir``. Blocking (file I/O, key
        generation): run in a thread."""
        if settings.admin_ssl_cert is None or settings.admin_ssl_cert_key is None:
            return ensure_default_certificate(settings.data_dir)
        try:
            return check_admin_certificate(settings.admin_ssl_cert, settings.admin_ssl_cert_key)
        except AdminTLSError as exc:
            # The CLI reports an OSError as a one-line start error, not a traceback.
            raise OSError(str(exc)) from None

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, close DP streams after ``grace`` seconds, stop Redis last."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._health_grpc is not None:
            await self._health_grpc.stop(0)
            self._health_grpc = None
        if self._grpc is not None:
            await self._grpc.stop(grace)
            self._grpc = None
        if self._follower is not None:
            await self._follower.stop()
            self._follower = None
        if self._override_follower is not None:
            await self._override_follower.stop()
            self._override_follower = None
        if self.probes is not None:
            # After the gRPC server: the closed streams' DPs leave the live set first.
            await self.probes.stop()
            self.probes = None
        if self._registry is not None:
            # The sync rows of the streams that just closed.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._registry.flush(), grace)
            self._registry = None
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None
        if self.redis_supervisor is not None:
            await self.redis_supervisor.stop()
            self.redis_supervisor = None
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None
        self._stopped.set()
