"""The data plane's status API (Kong's Status API), served by aiohttp.

``GET /status`` reports the config this DP serves and its link to the control
plane; ``GET /status/ready`` answers 200 only once a config is loaded (a
readiness probe for load balancers and Kubernetes); ``GET /upstreams/{id or
name}/health`` shows target health as this data plane sees it, in the shape of Kong's
Admin API endpoint (the control plane's endpoint merges every data plane's view).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from data_plane.cluster_client import ClusterLinkState
from data_plane.config_cache import ConfigCache
from data_plane.dns_resolver import TargetResolver
from data_plane.health_supervisor import HealthSupervisor
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import CompiledUpstream, ConfigHolder
from ferry.target_health import HEALTHCHECKS_OFF, HEALTHY, target_rule

_JSON = "application/json"


def _upstream_health(
    upstream: CompiledUpstream, dns_errors: Mapping[str, str], node_id: str
) -> dict[str, Any]:
    """Kong's ``GET /upstreams/{u}/health`` body for this data plane's view."""
    checker = upstream.health
    views = checker.view() if checker is not None else []
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
        if target.weight <= 0:
            health = HEALTHCHECKS_OFF
        elif not addresses and target.key not in dns_errors:
            health = HEALTHY  # its name is still being resolved
        else:
            health = target_rule([a["health"] for a in addresses])
        data.append(
            {
                "id": upstream.target_ids.get(target.key),
                "target": target.key,
                "weight": target.weight,
                "upstream": {"id": upstream.id},
                "health": health,
                "data": {
                    "addresses": addresses,
                    "weight": {"total": total, "available": available, "unavailable": total - available},
                },
            }
        )
    return {"data": data, "next": None, "node_id": node_id}


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
) -> web.Application:
    """``workers`` lists the node's proxy workers (``--workers N``) for ``/status``;
    ``workers_ready`` says whether each serves the config (``/status/ready`` waits);
    ``metrics`` is served as ``GET /metrics`` in Prometheus' text format; ``cache``
    is shown as ``config_cache`` (its path, and why it was not used, if it was not)."""
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
            "cluster": {
                "control_plane": control_plane,
                "connected": link.connected,
                "last_error": link.last_error,
                "last_config_at": link.last_config_at,
                "last_nack": link.last_nack,
            },
        }
        if cache is not None:
            body["config_cache"] = cache.status()
        if workers is not None:
            body["workers"] = workers()
        return web.json_response(body)

    async def ready(_: web.Request) -> web.Response:
        if holder.current is None:
            return web.json_response({"message": "no configuration loaded yet"}, status=503)
        if workers_ready is not None and not workers_ready():
            return web.json_response(
                {"message": "proxy workers are not all serving the configuration yet"}, status=503
            )
        return web.json_response({"message": "ready"})

    async def upstream_health(request: web.Request) -> web.Response:
        current = holder.current
        ref = request.match_info["upstream"]
        upstream = None
        if current is not None:
            upstream = current.upstreams.get(ref) or current.upstream_by_name(ref)
        if upstream is None:
            return web.json_response({"message": "Not found"}, status=404)
        dns_errors = resolver.dns_errors() if resolver is not None else {}
        body = _upstream_health(upstream, dns_errors, node.node_id)
        if request.query.get("balancer_health") in ("1", "true"):
            checker = upstream.health
            below = upstream.balancer.below_threshold
            return web.json_response(
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
                        },
                    }
                }
            )
        return web.json_response(body)

    async def metrics_text(_: web.Request) -> web.Response:
        assert metrics is not None
        body = generate_latest(metrics)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    if metrics is not None:
        app.router.add_get("/metrics", metrics_text)
    app.router.add_get("/status", status)
    app.router.add_get("/status/ready", ready)
    app.router.add_get("/upstreams/{upstream}/health", upstream_health)
    return app
