"""``GET /status/ready`` on the Admin API: Kong's readiness endpoint, for probes.

200 ``{"message": "ready"}`` when Redis answers a PING and a configuration is
loaded; otherwise 503 ``{"message": <why>}``, as Kong's ``/status/ready``
(``failed to connect to database`` ...). It needs no Admin API token (a
Kubernetes probe carries none) and says nothing an operator's token protects:
no address, no entity. Liveness is a different question (is the process
alive): ``/status`` and the gRPC health service answer it and stay up while
Redis is down, so an orchestrator takes the control plane out of its Service
without restarting it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from aiohttp import web

#: Seconds the PING may take before the answer is 503 (below a probe's timeout:
#: Kubernetes waits 1 s by default).
PING_TIMEOUT = 0.8


class Readiness:
    """What ``/status/ready`` checks, in order.

    ``down_reason`` says why Redis is known to be down without asking it (the
    embedded Redis's supervisor while it restarts it), or None. ``ping`` asks
    Redis (True when it answers; never raises). ``config_loaded`` says whether
    the config follower published a snapshot.
    """

    def __init__(
        self,
        ping: Callable[[], Awaitable[bool]],
        config_loaded: Callable[[], bool],
        down_reason: Callable[[], str | None] = lambda: None,
        *,
        ping_timeout: float = PING_TIMEOUT,
    ) -> None:
        self._ping = ping
        self._config_loaded = config_loaded
        self._down_reason = down_reason
        self._ping_timeout = ping_timeout

    async def problem(self) -> str | None:
        """None when ready; else the message of the 503."""
        reason = self._down_reason()
        if reason is not None:
            return f"failed to connect to database: {reason}"
        try:
            answered = await asyncio.wait_for(self._ping(), self._ping_timeout)
        except TimeoutError:
            return f"failed to connect to database: no answer within {self._ping_timeout:g}s"
        if not answered:
            return "failed to connect to database"
        if not self._config_loaded():
            return "no configuration available (the configuration is not loaded yet)"
        return None

    async def handler(self, request: web.Request) -> web.StreamResponse:
        problem = await self.problem()
        body = {"message": "ready" if problem is None else problem}
        return web.json_response(
            body, status=200 if problem is None else 503, dumps=lambda d: json.dumps(d, separators=(",", ":"))
        )
