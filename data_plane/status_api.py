"""The data plane's status API (Kong's Status API), served by aiohttp.

``GET /status`` reports the config this DP serves, its link to the control plane and
the proxy's connection and request counts (Kong's ``server`` block); ``GET
/status/ready`` answers 200 only once a config is loaded (a readiness probe for load
balancers and Kubernetes). Read-only, as a Kong data plane's, and in the shapes of
Kong's Admin API (the control plane's endpoints merge every data plane's view):

- ``GET /upstreams/{u}/targets``, ``/targets/all`` (paged: ``size``, ``offset``),
  ``/targets/{id or host:port}``: the target entities of the config this DP serves;
- ``GET /upstreams/{u}/health``: target health as this data plane sees it.

A collection path answers with or without a trailing slash. Any other method on a
served path is 405 ``{"message": "Method not allowed"}``, an unknown path 404
``{"message": "Not found"}`` (so the Admin API's ``.../healthy`` overrides are 404
here), as Kong's data plane answers.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import quote

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from data_plane import hot_path
from data_plane.balancers import parse_target
from data_plane.cluster_client import ClusterLinkState
from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import TargetResolver
from data_plane.health.supervisor import HealthSupervisor
from data_plane.node_identity import NodeIdentity
from data_plane.request_metrics import Snapshot
from data_plane.runtime import CompiledUpstream, ConfigHolder, RuntimeConfig
from ferry_shared.target_health import HEALTHCHECKS_OFF, HEALTHY, target_rule

log = logging.getLogger("ferry.data_plane.status")

_JSON = "application/json"
#: Kong's paging: ``size`` 1..1000, 100 by default.
_DEFAULT_PAGE_SIZE = 100
_MAX_PAGE_SIZE = 1000
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")
#: Kong's DAO error codes for bad paging arguments.
_CODE_INVALID_OFFSET = 7
_CODE_INVALID_SIZE = 9

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(data: Any, status: int = 200) -> web.Response:
    """Compact JSON, as Kong writes it (``"data":[]``)."""
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, separators=(",", ":")))


class _BadRequest(Exception):
    """A 400 with Kong's DAO error body."""

    def __init__(self, code: int, name: str, message: str) -> None:
        super().__init__(message)
        self.body = {"code": code, "name": name, "message": message}


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Kong's JSON bodies for unknown paths (404), unserved methods (405) and bad
    paging arguments (400)."""
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _json(exc.body, 400)
    except web.HTTPMethodNotAllowed as exc:
        response = _json({"message": "Method not allowed"}, 405)
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPNotFound:
        return _json({"message": "Not found"}, 404)
    except web.HTTPException:
        raise
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return _json({"message": "An unexpected error occurred"}, 500)


def _encode_offset(entity_id: str) -> str:
    # The control plane's token format, so one client pages both alike.
    return base64.urlsafe_b64encode(json.dumps([entity_id]).encode()).decode()


def _decode_offset(offset: str) -> str:
    def bad(reason: str) -> _BadRequest:
        return _BadRequest(
            _CODE_INVALID_OFFSET, "invalid offset", f"'{offset}' is not a valid offset: {reason}"
        )

    try:
        decoded = json.loads(base64.urlsafe_b64decode(offset.encode()))
    except (binascii.Error, ValueError, RecursionError):
        raise bad("bad base64 encoding") from None
    if not (isinstance(decoded, list) and len(decoded) == 1 and isinstance(decoded[0], str)):
        raise bad("bad offset")
    return decoded[0]


def _page_size(query: Mapping[str, str]) -> int:
    if "size" not in query:
        return _DEFAULT_PAGE_SIZE
    if not _NUMBER.fullmatch(query["size"]):
        raise _BadRequest(_CODE_INVALID_SIZE, "invalid size", "size must be a number")
    number = float(query["size"])
    if not (number.is_integer() and 1 <= number <= _MAX_PAGE_SIZE):
        raise _BadRequest(
            _CODE_INVALID_SIZE, "invalid size", f"size must be an integer between 1 and {_MAX_PAGE_SIZE}"
        )
    return int(number)


def _tagged(entity: Mapping[str, Any], raw: str) -> bool:
    """Kong's ``tags`` filter: ``a,b`` needs every tag, ``a/b`` any of them."""
    tags = entity.get("tags") or []
    if "/" in raw:
        return any(tag in tags for tag in raw.split("/") if tag)
    return all(tag in tags for tag in raw.split(",") if tag)


def _targets_page(request: web.Request, upstream: CompiledUpstream, base: str) -> dict[str, Any]:
    """One page of the upstream's target entities (by id) as ``{"data", "next"[, "offset"]}``.

    As Kong's DB-less data plane pages: a full page carries an ``offset`` (so the page
    after the last full one is empty); other query arguments and the body are ignored.
    """
    query = request.query
    size = _page_size(query)
    items = sorted(upstream.target_entities, key=lambda e: str(e.get("id")))
    tags_suffix = ""
    if query.get("tags"):
        items = [e for e in items if _tagged(e, query["tags"])]
        tags_suffix = "&tags=" + quote(query["tags"], safe=",/")
    start = 0
    if query.get("offset"):
        after = _decode_offset(query["offset"])
        start = bisect.bisect_right([str(e.get("id")) for e in items], after)
    page = items[start : start + size]
    body: dict[str, Any] = {"data": page, "next": None}
    if page and len(page) == size:
        offset = _encode_offset(str(page[-1].get("id")))
        body["next"] = f"{base}?offset={quote(offset)}{tags_suffix}"
        body["offset"] = offset
    return body


def _find_upstream(current: RuntimeConfig | None, ref: str) -> CompiledUpstream:
    upstream = None
    if current is not None:
        upstream = current.upstreams.get(ref) or current.upstream_by_name(ref)
    if upstream is None:
        raise web.HTTPNotFound()
    return upstream


def _find_target(upstream: CompiledUpstream, ref: str) -> Mapping[str, Any]:
    """A target entity by id or by ``host[:port]`` (Kong's default port 8000)."""
    wanted = ref
    if ref not in upstream.target_ids.values():
        try:
            wanted = upstream.target_ids.get(parse_target(ref, 100).key, "")
        except ValueError:
            wanted = ""
    for entity in upstream.target_entities:
        if wanted and entity.get("id") == wanted:
            return entity
    raise web.HTTPNotFound()


def _server_block(snapshot: Snapshot | None) -> dict[str, int]:
    """Kong's ``/status`` ``server`` block (nginx's stub_status counters) from the proxy's
    counts. Ferry does not tell a connection's phases apart: every open client
    connection counts as ``waiting``, none as ``reading`` or ``writing``."""
    snap = snapshot or {}
    accepted = int(snap.get("connections_accepted", 0))
    active = int(snap.get("connections_active", 0))
    total = 0
    for series in snap.get("series", []):
        total += sum(series["codes"].values()) + sum(series["local_codes"].values())
    return {
        "connections_accepted": accepted,
        "connections_handled": accepted,
        "connections_active": active,
        "connections_reading": 0,
        "connections_writing": 0,
        "connections_waiting": active,
        "total_requests": total,
    }


def _upstream_health(
    upstream: CompiledUpstream, dns_errors: Mapping[str, str], node_id: str
) -> dict[str, Any]:
    """Kong's ``GET /upstreams/{u}/health`` body for this data plane's view."""
    checker = upstream.health
    views = checker.view() if checker is not None else []
    checks_on = checker is not None and checker.settings.enabled
    by_target: dict[str, list[dict[str, Any]]] = {}
    for v in views:
        by_target.setdefault(v.target, []).append(
            {"ip": v.address.host, "port": v.address.port, "weight": v.address.weight,
             "health": v.state, "reason": v.reason or None}
        )
    data = []
    for target in upstream.targets:
        addresses = by_target.get(target.key, [])
        total = sum(a["weight"] for a in addresses)
        available = sum(a["weight"] for a in addresses if a["health"] != "UNHEALTHY")
        if target.weight <= 0 or (not checks_on and not addresses):
            health = HEALTHCHECKS_OFF  # Kong: checks off says so, resolved or not
        elif not addresses and target.key not in dns_errors:
            health = HEALTHY  # its name is still being resolved
        else:
            health = target_rule([a["health"] for a in addresses])
        data.append(
            {
                "id": upstream.target_ids.get(target.key),
                "target": target.key,
                "weight": target.weight,
                **({"failover": True} if target.failover else {}),
                "upstream": {"id": upstream.id},
                "health": health,
                "data": {
                    "addresses": addresses,
                    "weight": {"total": total, "available": available, "unavailable": total - available},
                },
            }
        )
    body: dict[str, Any] = {"data": data, "next": None, "node_id": node_id}
    if checker is not None and checker.settings.panic_threshold > 0:
        body["panic"] = checker.panic  # Ferry's panic mode, shown once it is configured
    return body


def create_status_app(
    holder: ConfigHolder,
    link: ClusterLinkState,
    node: NodeIdentity,
    *,
    control_plane: str,
    health: HealthSupervisor | None = None,
    resolver: TargetResolver | None = None,
    workers: Callable[[], list[dict[str, Any]]] | None = None,
    workers_ready: Callable[[], bool] | None = None,
    metrics: CollectorRegistry | None = None,
    cache: ConfigCache | None = None,
    requests: Callable[[], Snapshot | None] | None = None,
    tls: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """``workers`` lists the node's proxy workers (``--workers N``) for ``/status``;
    ``workers_ready`` says whether each serves the config (``/status/ready`` waits);
    ``metrics`` is served as ``GET /metrics`` in Prometheus' text format; ``cache``
    is shown as ``config_cache`` (its path, and why it was not used, if it was not);
    ``requests`` returns the proxy's counts (the workers' sum) for ``/status``'s
    ``server`` block; ``tls`` the ``tls`` block (the proxy's listeners and the expiry of
    every certificate it serves)."""
    started = time.time()

    async def status(_: web.Request) -> web.Response:
        current = holder.current
        body: dict[str, Any] = {
            "node_id": node.node_id,
            "hostname": node.hostname,
            "version": node.version,
            "uptime_seconds": round(time.time() - started, 3),
            "ready": current is not None,
            "configuration_version": current.version if current else None,
            "configuration_hash": current.hash if current else None,
            # A data plane has no database (Kong's DB-less node says reachable):
            # reachable while it holds a configuration to serve from.
            "database": {"reachable": current is not None},
            "server": _server_block(requests() if requests is not None else None),
            "cluster": {
                "control_plane": control_plane,
                "connected": link.connected,
                "last_error": link.last_error,
                "last_config_at": link.last_config_at,
                "last_nack": link.last_nack,
            },
        }
        body["hot_path"] = hot_path.current().as_json()
        if cache is not None:
            body["config_cache"] = cache.status()
        if workers is not None:
            body["workers"] = workers()
        if tls is not None:
            body["tls"] = tls()
        return _json(body)

    async def ready(_: web.Request) -> web.Response:
        if holder.current is None:
            return _json({"message": "no configuration loaded yet"}, status=503)
        if workers_ready is not None and not workers_ready():
            return _json(
                {"message": "proxy workers are not all serving the configuration yet"}, status=503
            )
        return _json({"message": "ready"})

    async def upstream_targets(request: web.Request) -> web.Response:
        ref = request.match_info["upstream"]
        upstream = _find_upstream(holder.current, ref)
        suffix = "/all" if request.path.rstrip("/").endswith("/all") else ""
        return _json(_targets_page(request, upstream, f"/upstreams/{quote(ref, safe='')}/targets{suffix}"))

    async def upstream_target(request: web.Request) -> web.Response:
        upstream = _find_upstream(holder.current, request.match_info["upstream"])
        return _json(_find_target(upstream, request.match_info["target"]))

    async def upstream_health(request: web.Request) -> web.Response:
        upstream = _find_upstream(holder.current, request.match_info["upstream"])
        dns_errors = resolver.dns_errors() if resolver is not None else {}
        body = _upstream_health(upstream, dns_errors, node.node_id)
        if request.query.get("balancer_health") in ("1", "true"):
            checker = upstream.health
            below = checker is not None and checker.below_threshold
            return _json(
                {
                    "data": {
                        "id": upstream.id,
                        "health": "UNHEALTHY" if below else (
                            "HEALTHY" if checker is not None and checker.settings.enabled
                            else "HEALTHCHECKS_OFF"
                        ),
                        "balancer_health": "UNHEALTHY" if below else "HEALTHY",
                        "details": {
                            "threshold": checker.settings.threshold if checker else 0,
                            "targets": body["data"],
                            **(
                                {
                                    "panic_threshold": checker.settings.panic_threshold,
                                    "panic": checker.panic,
                                }
                                if checker is not None and checker.settings.panic_threshold > 0
                                else {}
                            ),
                        },
                    }
                }
            )
        return _json(body)

    async def metrics_text(_: web.Request) -> web.Response:
        assert metrics is not None
        body = generate_latest(metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application(middlewares=[_errors])
    if metrics is not None:
        app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/status", status)
    app.router.add_get("/status/ready", ready)
    # Read-only, with or without a trailing slash; "/targets/all" before "/targets/{target}".
    for path, handler in (
        ("/upstreams/{upstream}/targets/all", upstream_targets),
        ("/upstreams/{upstream}/targets", upstream_targets),
        ("/upstreams/{upstream}/targets/{target}", upstream_target),
        ("/upstreams/{upstream}/health", upstream_health),
    ):
        app.router.add_get(path, handler)
        app.router.add_get(path + "/", handler)
    return app
