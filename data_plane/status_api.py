"""The data plane's status API (Kong's Status API), served by aiohttp.

``GET /status`` reports the config this DP serves and its link to the control
plane; ``GET /status/ready`` answers 200 only once a config is loaded (a
readiness probe for load balancers and Kubernetes).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from data_plane.cluster_client import ClusterLinkState
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigHolder

_JSON = "application/json"


def create_status_app(
    holder: ConfigHolder, link: ClusterLinkState, node: NodeIdentity, *, control_plane: str
) -> web.Application:
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
        return web.json_response(body)

    async def ready(_: web.Request) -> web.Response:
        if holder.current is None:
            return web.json_response({"message": "no configuration loaded yet"}, status=503)
        return web.json_response({"message": "ready"})

    app = web.Application()
    app.router.add_get("/status", status)
    app.router.add_get("/status/ready", ready)
    return app
