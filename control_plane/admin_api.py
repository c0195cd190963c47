"""The control plane's Kong-compatible Admin API (aiohttp).

:func:`create_admin_app` builds the application. Paths, field names, defaults,
status codes and error bodies follow Kong 3.x's Admin API for ``services``,
``routes``, ``upstreams``, ``targets`` and the TLS entities (``certificates``,
``snis``, ``ca_certificates``: :mod:`control_plane.admin_certificates`);
``docs/admin-api.md`` documents it.

Errors are raised as :class:`~control_plane.errors.FerryError` anywhere below
and turned into responses only by :func:`_error_middleware`; an unexpected
exception becomes a logged 500 with Kong's generic body, never a traceback.

Why this module is at ~600 lines: it is the route table and the thin handlers of every
Kong path but the TLS entities' (``admin_certificates``); the logic is in the entity
service.
"""

from __future__ import annotations

import collections
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from control_plane.admin_certificates import certificate_routes
from control_plane.admin_openapi import (
    DECLARATIVE_CONFIG_QUERY,
    DECLARATIVE_CONFIG_REQUEST,
    DECLARATIVE_CONFIG_RESPONSES,
    DECLARATIVE_CONFIG_SCHEMA,
    HEALTH_EVENTS_RESPONSE,
    PAGING_QUERY,
    READINESS_RESPONSE,
    UPSTREAM_HEALTH_QUERY,
    UPSTREAM_HEALTH_RESPONSE,
    Handler,
    build_openapi,
)
from control_plane.admin_openapi import AdminRoute as _Route
from control_plane.admin_requests import (
    expected_version,
    flag,
    override_address,
    page_body,
    read_body,
    read_config_document,
)
from control_plane.admin_tokens import READ_METHODS, TOKEN_HEADER, AdminTokens
from control_plane.certificate_service import CertificateService
from control_plane.console_site import add_console_routes
from control_plane.declarative import (
    export_document,
)
from control_plane.entity_service import EntityService, Finder
from control_plane.errors import (
    BadRequest,
    FerryError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
)
from control_plane.health import TargetHealthStore
from control_plane.health_history import HealthEventSource, events_page
from control_plane.health_types import DataPlaneReport, ManualOverride
from control_plane.health_view import balancer_health, panic_view, targets_with_health
from control_plane.metrics import ControlPlaneView, metrics_registry
from control_plane.schemas import (
    RuleError,
    check_upstream_name,
    is_uuid,
)
from control_plane.store import EntityStore

log = logging.getLogger(__name__)

#: Largest request body accepted (a whole configuration for ``POST /config``).
MAX_BODY_BYTES = 32 * 1024 * 1024


class DataPlaneLister(Protocol):
    """Lists the data planes known to the cluster server, for ``/clustering/data-planes``."""

    async def list_data_planes(self) -> list[dict[str, Any]]:
        """Rows shaped as Kong's (``id``, ``hostname``, ``ip``, ``version``, ``sync_status`` ...)."""
        ...


class ClusterHealth(HealthEventSource, Protocol):
    """The cluster-wide health source behind ``/upstreams/{u}/health``, its history
    (``events``, from :class:`HealthEventSource`) and the overrides.

    Every method raises :class:`StoreUnavailable` when the shared store is unreachable.
    """

    async def reports(self, upstream_id: str | None = None) -> list[DataPlaneReport]:
        """What every live data plane reports about ``upstream_id``."""
        ...

    async def publish_override(self, override: ManualOverride, *, origin: str = "") -> str:
        """Send ``override`` to every data plane of every control plane; returns once stored."""
        ...


@dataclass(frozen=True)
class _Kind:
    """How the Admin API addresses one entity kind."""

    name: str  # "services": the collection, the store kind and the path segment
    param: str  # the path parameter naming one entity


_SERVICES = _Kind("services", "service")
_ROUTES = _Kind("routes", "route")
_UPSTREAMS = _Kind("upstreams", "upstream")
_TARGETS = _Kind("targets", "target")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every error to Kong's JSON body; count requests for ``/status`` and
    answers by status for ``/metrics``."""
    stats: dict[str, int] = request.app[_STATS]
    stats["total_requests"] += 1
    stats["connections_active"] += 1
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        return response
    except FerryError as exc:
        response = _json(exc.body(), exc.status)
    except web.HTTPMethodNotAllowed as exc:
        # RFC 9110 §15.5.6: a 405 lists the methods the path serves.
        response = _json(MethodNotAllowed().body(), 405)
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
    except web.HTTPNotFound:
        response = _json(NotFound().body(), 404)
    except web.HTTPRequestEntityTooLarge:
        response = _json(PayloadTooLarge(request.app[_LIMITS].max_body).body(), 413)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _json({"message": exc.reason}, exc.status)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        response = _json({"message": "An unexpected error occurred"}, 500)
    finally:
        stats["connections_active"] -= 1
        if response is not None:
            request.app[_CODES][response.status] += 1
    return response


@dataclass(frozen=True)
class _Limits:
    max_body: int
    tokens: AdminTokens | None


@web.middleware
async def _access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a body over the limit before reading it (413), then, with admin
    tokens, a call without a valid token (401) or a write by a read-only one (403).

    The console's page and assets need no token (the page asks for one). The token
    comes in ``Ferry-Admin-Token`` (or Kong's ``Kong-Admin-Token``), or as
    ``Authorization: Bearer`` for scrapers such as Prometheus.
    """
    limits = request.app[_LIMITS]
    length = request.content_length
    if length is not None and length > limits.max_body:
        raise PayloadTooLarge(limits.max_body)
    tokens = limits.tokens
    # /status/ready neither: Kubernetes' probes carry no token (control_plane/readiness.py).
    path = request.path.rstrip("/") or "/"
    if tokens is None or path in ("/console", "/status/ready") or request.path.startswith("/console/"):
        return await handler(request)
    headers = request.headers
    token = headers.get(TOKEN_HEADER) or headers.get("Kong-Admin-Token")
    if token is None:
        scheme, _, credentials = headers.get("Authorization", "").partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else None
    entry = tokens.identify(token or "")
    if entry is None:
        raise Unauthorized()
    if entry.role != "admin" and request.method not in READ_METHODS:
        verb = {"POST": "create", "DELETE": "delete"}.get(request.method, "update")
        raise Forbidden(f"{entry.name}, you do not have permissions to {verb} this resource")
    return await handler(request)


_STATS: web.AppKey[dict[str, int]] = web.AppKey("ferry_admin_stats", dict)
_CODES: web.AppKey[collections.Counter[int]] = web.AppKey("ferry_admin_codes", collections.Counter)
_LIMITS: web.AppKey[_Limits] = web.AppKey("ferry_admin_limits", _Limits)

#: Builds what ``GET /metrics`` reports from the Admin API's answer counts.
MetricsSource = Callable[[Mapping[int, int]], Awaitable[ControlPlaneView]]


def _page(request: web.Request, items: list[dict[str, Any]], base: str) -> web.Response:
    """:func:`~control_plane.admin_requests.page_body` as a response."""
    return _json(page_body(request, items, base))


# ------------------------------------------------------------------ the API


class _AdminAPI:
    """Request handlers over one :class:`~control_plane.entity_service.EntityService`."""

    def __init__(
        self,
        entities: EntityService,
        data_planes: DataPlaneLister,
        health: ClusterHealth,
        node_id: str,
        version: str,
    ) -> None:
        self.entities = entities
        self.data_planes = data_planes
        self.health = health
        self.node_id = node_id
        self.version = version

    # -- handler factories

    def collection(self, kind: _Kind) -> dict[str, Handler]:
        async def get(request: web.Request) -> web.StreamResponse:
            return _page(request, await self.entities.list_all(kind.name), f"/{kind.name}")

        async def post(request: web.Request) -> web.StreamResponse:
            return _json(await self.entities.create(kind.name, await read_body(request, kind.name)), 201)

        return {"GET": get, "POST": post}

    def entity(self, kind: _Kind) -> dict[str, Handler]:
        def finder(request: web.Request) -> Finder:
            key = request.match_info[kind.param]
            return lambda: self.entities.find(kind.name, key)

        async def get(request: web.Request) -> web.StreamResponse:
            return _json(await self.entities.require(kind.name, request.match_info[kind.param]))

        async def patch(request: web.Request) -> web.StreamResponse:
            body = await read_body(request, kind.name)
            return _json(await self.entities.update(kind.name, finder(request), body))

        async def put(request: web.Request) -> web.StreamResponse:
            body = await read_body(request, kind.name)
            key = request.match_info[kind.param]
            if kind is _UPSTREAMS and not is_uuid(key):
                # Kong checks the name in the path first, and answers with the bare
                # message ("Invalid name ('1.2.3.4'); no ip addresses allowed").
                try:
                    check_upstream_name(key)
                except RuleError as exc:
                    raise BadRequest(str(exc)) from None
            return _json(await self.entities.upsert(kind.name, key, finder(request), body))

        async def delete(request: web.Request) -> web.StreamResponse:
            await self.entities.delete(kind.name, await finder(request)())
            return web.Response(status=204)

        return {"GET": get, "PATCH": patch, "PUT": put, "DELETE": delete}

    def service_routes(self) -> dict[str, Handler]:
        async def get(request: web.Request) -> web.StreamResponse:
            key = request.match_info["service"]
            service = await self.entities.require("services", key)
            routes = await self.entities.list_children("routes", "service", service["id"])
            return _page(request, routes, f"/services/{quote(key, safe='')}/routes")

        async def post(request: web.Request) -> web.StreamResponse:
            service = await self.entities.require("services", request.match_info["service"])
            body = await read_body(request, "routes")
            body["service"] = {"id": service["id"]}
            return _json(await self.entities.create("routes", body), 201)

        return {"GET": get, "POST": post}

    def upstream_targets(self) -> dict[str, Handler]:
        async def get(request: web.Request) -> web.StreamResponse:
            key = request.match_info["upstream"]
            upstream = await self.entities.require("upstreams", key)
            targets = await self.entities.list_children("targets", "upstream", upstream["id"])
            suffix = "/all" if request.path.rstrip("/").endswith("/all") else ""
            return _page(request, targets, f"/upstreams/{quote(key, safe='')}/targets{suffix}")

        async def post(request: web.Request) -> web.StreamResponse:
            upstream = await self.entities.require("upstreams", request.match_info["upstream"])
            body = await read_body(request, "targets")
            body["upstream"] = {"id": upstream["id"]}
            return _json(await self.entities.create("targets", body), 201)

        return {"GET": get, "POST": post}

    def upstream_target(self) -> dict[str, Handler]:
        async def context(
            request: web.Request,
        ) -> tuple[dict[str, Any], str, Finder]:
            upstream = await self.entities.require("upstreams", request.match_info["upstream"])
            key = request.match_info["target"]
            return upstream, key, lambda: self.entities.find_target(upstream, key)

        async def get(request: web.Request) -> web.StreamResponse:
            _, _, find = await context(request)
            found = await find()
            if found is None:
                raise NotFound()
            return _json(found[0])

        async def patch(request: web.Request) -> web.StreamResponse:
            _, _, find = await context(request)
            return _json(await self.entities.update("targets", find, await read_body(request, "targets")))

        async def put(request: web.Request) -> web.StreamResponse:
            """Kong 3.x: a PUT of an existing target is an update (fields not given
            are kept; a ``target`` in the body renames it); otherwise it creates the
            target, named by the body's ``target`` or else by the path."""
            upstream, key, _ = await context(request)
            body = await read_body(request, "targets")
            return _json(await self.entities.put_target(upstream, key, body))

        async def delete(request: web.Request) -> web.StreamResponse:
            _, _, find = await context(request)
            await self.entities.delete("targets", await find())
            return web.Response(status=204)

        return {"GET": get, "PATCH": patch, "PUT": put, "DELETE": delete}

    # -- health

    async def upstream_health(self, request: web.Request) -> web.StreamResponse:
        """Kong's ``GET /upstreams/{u}/health``, cluster-wide (``health_view`` has the rules)."""
        key = request.match_info["upstream"]
        upstream = await self.entities.require("upstreams", key)
        targets = await self.entities.list_children("targets", "upstream", upstream["id"])
        reports = await self.health.reports(upstream["id"])
        if flag(request, "balancer_health"):
            data = balancer_health(upstream, targets, reports)
            return _json({"data": data, "next": None, "node_id": self.node_id})
        items = targets_with_health(upstream, targets, reports)
        body = page_body(request, items, f"/upstreams/{quote(key, safe='')}/health", by_id=False)
        body["node_id"] = self.node_id
        if (panic := panic_view(upstream, reports)) is not None:
            body["panic"] = panic  # Ferry's panic mode, only once it is configured
        return _json(body)

    async def upstream_health_events(self, request: web.Request) -> web.StreamResponse:
        """``GET /upstreams/{u}/health/events``: the health history, newest first, paged."""
        key = request.match_info["upstream"]
        upstream = await self.entities.require("upstreams", key)
        base = f"/upstreams/{quote(key, safe='')}/health/events"
        return _json(await events_page(request, self.health, upstream["id"], base))

    def health_override(self, healthy: bool) -> Handler:
        """``PUT`` (Kong 3.x) or ``POST`` (Kong 2.x and older) ``.../healthy|unhealthy``: 204.

        The override is in Redis when the 204 is sent; every CP's follower then
        forwards it to its connected DPs.
        """

        async def handler(request: web.Request) -> web.StreamResponse:
            upstream = await self.entities.require("upstreams", request.match_info["upstream"])
            found = await self.entities.find_target(upstream, request.match_info["target"])
            if found is None:
                raise NotFound()
            target = found[0]["target"]
            address = ""
            if "address" in request.match_info:
                address = override_address(request.match_info["address"], target)
            override = ManualOverride(upstream["id"], target, address, healthy, time.time())
            await self.health.publish_override(override, origin=self.node_id)
            return web.Response(status=204)

        return handler

    # -- declarative configuration

    async def get_config(self, request: web.Request) -> web.StreamResponse:
        """``GET /config``: the whole configuration as one document, read atomically."""
        version, entities = await self.entities.export_config()
        return _json(export_document(version, entities))

    async def post_config(self, request: web.Request) -> web.StreamResponse:
        """``POST /config``: replace the whole configuration with the document → 201.

        The document is validated whole before anything is written (400 with
        Kong's ``invalid declarative configuration`` body otherwise). The
        changes are computed against one consistent read and applied as one
        Redis script that checks the version did not move: one version bump,
        one change-stream entry per changed entity, nothing written when
        nothing changes. A concurrent write makes it re-read and recompute;
        with ``?expected_version=N`` it answers 409 instead. With
        ``?check_hash=1`` an unchanged configuration answers 304 (Kong).
        """
        document = await read_config_document(request)
        expected = expected_version(request)
        check_hash = flag(request, "check_hash")
        imported = await self.entities.import_config(
            document, expected=expected, check_hash=check_hash
        )
        if imported is None:
            return web.Response(status=304)
        new_version, desired = imported
        return _json(export_document(new_version, desired), 201)

    # -- node information

    async def root(self, request: web.Request) -> web.StreamResponse:
        return _json(
            {
                "version": self.version,
                "node_id": self.node_id,
                "hostname": socket.gethostname(),
                "tagline": "Welcome to ferry",
                "lua_version": None,
                "configuration": {
                    "role": "control_plane",
                    "database": "redis",
                    "store_prefix": self.entities.store.prefix,
                    "admin_api": "kong-3.x-compatible",
                },
                "plugins": {"available_on_server": {}, "enabled_in_cluster": []},
            }
        )

    async def status(self, request: web.Request) -> web.StreamResponse:
        reachable, configuration_version = await self.entities.current_version()
        stats = request.app[_STATS]
        return _json(
            {
                "database": {"reachable": reachable},
                "configuration_version": configuration_version,
                "server": {
                    "total_requests": stats["total_requests"],
                    "connections_active": stats["connections_active"],
                },
            }
        )

    async def data_plane_list(self, request: web.Request) -> web.StreamResponse:
        return _json({"data": await self.data_planes.list_data_planes(), "next": None})


# ------------------------------------------------------------------ routing


def _routes(api: _AdminAPI) -> list[_Route]:
    # Order matters: ".../targets/all" must be matched before ".../targets/{target}".
    tls = certificate_routes(
        CertificateService(api.entities),
        lambda name, param: api.collection(_Kind(name, param)),
        lambda name, param: api.entity(_Kind(name, param)),
        _json,
    )
    return [
        _Route("/", {"GET": api.root}, "Node information"),
        _Route("/status", {"GET": api.status}, "Node and database status"),
        _Route(
            "/clustering/data-planes",
            {"GET": api.data_plane_list},
            "Data planes connected to this control plane",
        ),
        _Route(
            "/config",
            {"GET": api.get_config, "POST": api.post_config},
            "The whole configuration as one declarative document (GET: export; "
            "POST: replace it atomically)",
            response=DECLARATIVE_CONFIG_SCHEMA,
            request_body=DECLARATIVE_CONFIG_REQUEST,
            query=DECLARATIVE_CONFIG_QUERY,
            extra_responses=DECLARATIVE_CONFIG_RESPONSES,
        ),
        _Route("/services", api.collection(_SERVICES), "Services", "Service", True),
        _Route("/services/{service}", api.entity(_SERVICES), "One service by id or name", "Service"),
        _Route(
            "/services/{service}/routes", api.service_routes(), "Routes of a service", "Route", True
        ),
        _Route("/routes", api.collection(_ROUTES), "Routes", "Route", True),
        _Route("/routes/{route}", api.entity(_ROUTES), "One route by id or name", "Route"),
        _Route("/upstreams", api.collection(_UPSTREAMS), "Upstreams", "Upstream", True),
        _Route(
            "/upstreams/{upstream}", api.entity(_UPSTREAMS), "One upstream by id or name", "Upstream"
        ),
        _Route(
            "/upstreams/{upstream}/targets/all",
            {"GET": api.upstream_targets()["GET"]},
            "Every target of an upstream, weight 0 included",
            "Target",
            True,
        ),
        _Route(
            "/upstreams/{upstream}/targets",
            api.upstream_targets(),
            "Targets of an upstream",
            "Target",
            True,
        ),
        _Route(
            "/upstreams/{upstream}/targets/{target}",
            api.upstream_target(),
            "One target by id or host:port",
            "Target",
        ),
        _Route(
            "/upstreams/{upstream}/health",
            {"GET": api.upstream_health},
            "Cluster-wide health of an upstream's targets, as its data planes report it",
            response=UPSTREAM_HEALTH_RESPONSE,
            query=UPSTREAM_HEALTH_QUERY,
        ),
        _Route(
            "/upstreams/{upstream}/health/events",
            {"GET": api.upstream_health_events},
            "Health history: every target state change any data plane reported, newest first",
            response=HEALTH_EVENTS_RESPONSE,
            query=PAGING_QUERY,
        ),
        *(
            _Route(
                f"/upstreams/{{upstream}}/targets/{{target}}{address}/{state}",
                {"PUT": handler, "POST": handler},
                f"Set {'one address' if address else 'every address'} of a target {state} "
                "on every data plane",
                no_content=True,
            )
            for address in ("", "/{address}")
            for state, handler in (
                ("healthy", api.health_override(True)),
                ("unhealthy", api.health_override(False)),
            )
        ),
        *tls,
    ]


def create_admin_app(
    store: EntityStore,
    data_planes: DataPlaneLister,
    *,
    node_id: str,
    version: str,
    health: ClusterHealth | None = None,
    tokens: AdminTokens | None = None,
    max_body: int = MAX_BODY_BYTES,
    metrics: MetricsSource | None = None,
    readiness: Handler | None = None,
) -> web.Application:
    """The Admin API application over ``store``.

    ``data_planes`` feeds ``/clustering/data-planes``; ``node_id`` and
    ``version`` are reported by ``GET /`` and ``/upstreams/{u}/health``.
    ``health`` serves the health views and overrides; by default a
    :class:`TargetHealthStore` over the store's Redis and prefix. Any method a
    path does not serve answers 405, any unknown path 404, both with Kong's
    JSON bodies. ``tokens`` turns access control on; a body over ``max_body``
    bytes gets 413. ``metrics`` serves ``GET /metrics`` (Prometheus); the console
    is served at ``/console``.
    """
    app = web.Application(
        middlewares=[_error_middleware, _access_middleware], client_max_size=max_body
    )
    app[_STATS] = {"total_requests": 0, "connections_active": 0}
    app[_CODES] = collections.Counter()
    app[_LIMITS] = _Limits(max_body, tokens)
    if health is None:
        health = TargetHealthStore(store.redis, store.prefix)
    api = _AdminAPI(EntityService(store), data_planes, health, node_id, version)
    routes = _routes(api)
    if readiness is not None:  # GET /status/ready (control_plane/readiness.py)
        routes.insert(2, _Route("/status/ready", {"GET": readiness}, "Readiness: 200 when Redis "
                                "answers and a configuration is loaded, else 503 with the reason",
                                response=READINESS_RESPONSE))
    openapi = build_openapi(routes, version)

    async def openapi_handler(request: web.Request) -> web.StreamResponse:
        return _json(openapi)

    routes.insert(2, _Route("/openapi.json", {"GET": openapi_handler}, "This document"))
    openapi["paths"]["/openapi.json"] = {
        "get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3"}}},
        "head": {"summary": "This document (HEAD)", "responses": {"200": {"description": "OpenAPI 3"}}},
    }
    if metrics is not None:
        source = metrics

        async def metrics_handler(request: web.Request) -> web.StreamResponse:
            codes = request.app[_CODES]
            view = await source(codes)
            body = generate_latest(metrics_registry(view))
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

        routes.append(
            _Route("/metrics", {"GET": metrics_handler}, "Prometheus metrics of the cluster")
        )
        openapi["paths"]["/metrics"] = {
            "get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}},
            "head": {"summary": "Prometheus metrics (HEAD)", "responses": {"200": {"description": "text"}}},
        }
    for route in routes:
        # Kong's router answers every path with a trailing slash too ("/upstreams/",
        # "/upstreams/u/targets/"): the same handlers (and 405s), no redirect.
        for path in (route.path, route.path + "/") if route.path != "/" else ("/",):
            resource = app.router.add_resource(path)
            for method, handler in route.handlers.items():
                resource.add_route(method, handler)
            if "GET" in route.handlers and "HEAD" not in route.handlers:
                # HEAD wherever GET: the same answer without its body (RFC 9110 §9.3.2).
                resource.add_route("HEAD", route.handlers["GET"])
    add_console_routes(app)
    return app
