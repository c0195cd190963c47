"""What the proxy counts per request, kept cheap enough to be always on.

The request path only increments plain integers: one :class:`RouteSeries` per
(service, route) pair holds the status counts and three latency histograms (bucket
counts, as Kong's Prometheus plugin has them). Recording a proxied request is one
method call with three ``bisect`` look-ups -- well under a microsecond -- instead of
prometheus-client's locked ``labels().inc()`` per series (several microseconds per
request). Prometheus' text format is produced only when ``/metrics`` is scraped, by
:mod:`data_plane.metrics_export`, from :meth:`RequestMetrics.snapshot`.

Everything here belongs to the proxy's event loop; nothing is thread-safe. A
snapshot is plain JSON-able data, so a worker process (``--workers N``) hands its
counts to the node through a file (see :mod:`data_plane.workers.metrics`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Final

from data_plane.router import RouteSpec
from data_plane.runtime import CompiledService

__all__ = [
    "KONG_LATENCY_BUCKETS_MS",
    "UPSTREAM_LATENCY_BUCKETS_MS",
    "RequestMetrics",
    "RouteSeries",
    "Snapshot",
    "merge_snapshots",
]

#: Kong's buckets for ``kong_kong_latency_ms`` (time spent in the gateway), in ms.
KONG_LATENCY_BUCKETS_MS: Final = (1, 2, 5, 7, 10, 15, 20, 30, 50, 75, 100, 200, 500, 750, 1000)
#: Kong's buckets for ``kong_upstream_latency_ms`` and ``kong_request_latency_ms``, in ms.
UPSTREAM_LATENCY_BUCKETS_MS: Final = (
    25, 50, 80, 100, 250, 400, 700, 1000, 2000, 5000, 10000, 30000, 60000,
)



def _upstream_bucket(ms: int) -> int:
    """The slot of ``ms`` in a histogram of :data:`UPSTREAM_LATENCY_BUCKETS_MS`."""
    return 0 if ms <= 25 else bisect_left(UPSTREAM_LATENCY_BUCKETS_MS, ms)


#: A :meth:`RequestMetrics.snapshot`: JSON-able, mergeable by :func:`merge_snapshots`.
Snapshot = dict[str, Any]


class RouteSeries:
    """The counts of one (service, route) label pair. Owned by :class:`RequestMetrics`.

    ``codes`` counts responses from the target by status; ``local_codes`` the answers
    the proxy gave itself (no route, no target, 502/504...), Kong's ``source="kong"``.
    Histograms are per-bucket counts (not cumulative), the last slot being +Inf, with
    their sums in ms.
    """

    __slots__ = (
        "service",
        "route",
        "codes",
        "local_codes",
        "kong",
        "kong_sum",
        "upstream",
        "upstream_sum",
        "request",
        "request_sum",
    )

    def __init__(self, service: str, route: str) -> None:
        self.service = service
        self.route = route
        self.codes: dict[int, int] = {}
        self.local_codes: dict[int, int] = {}
        self.kong = [0] * (len(KONG_LATENCY_BUCKETS_MS) + 1)
        self.kong_sum = 0
        self.upstream = [0] * (len(UPSTREAM_LATENCY_BUCKETS_MS) + 1)
        self.upstream_sum = 0
        self.request = [0] * (len(UPSTREAM_LATENCY_BUCKETS_MS) + 1)
        self.request_sum = 0

    def observe_proxied(self, status: int, kong_ms: int, upstream_ms: int, request_ms: int) -> None:
        """A response relayed from a target. Latencies in whole ms (as Kong logs them)."""
        codes = self.codes
        codes[status] = codes.get(status, 0) + 1
        # Most requests fall in the first bucket: no bisect (a call) for them.
        self.kong[0 if kong_ms <= 1 else bisect_left(KONG_LATENCY_BUCKETS_MS, kong_ms)] += 1
        self.kong_sum += kong_ms
        self.upstream[_upstream_bucket(upstream_ms)] += 1
        self.upstream_sum += upstream_ms
        self.request[_upstream_bucket(request_ms)] += 1
        self.request_sum += request_ms

    def observe_local(self, status: int, request_ms: int) -> None:
        """An answer the proxy gave itself (it has no upstream or gateway latency)."""
        codes = self.local_codes
        codes[status] = codes.get(status, 0) + 1
        self.request[_upstream_bucket(request_ms)] += 1
        self.request_sum += request_ms

    def to_json(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "route": self.route,
            "codes": {str(k): v for k, v in self.codes.items()},
            "local_codes": {str(k): v for k, v in self.local_codes.items()},
            "kong": [list(self.kong), self.kong_sum],
            "upstream": [list(self.upstream), self.upstream_sum],
            "request": [list(self.request), self.request_sum],
        }


def _labels(route: RouteSpec[CompiledService]) -> tuple[str, str]:
    """Kong's labels: the service's name (else its host) and the route's name (else id)."""
    service = route.service
    service_label = (service.name or service.host) if service is not None else ""
    return service_label, route.name or route.id


class RequestMetrics:
    """Every :class:`RouteSeries` of one proxy process, plus its connection counts.

    :meth:`for_route` is called once per routed request: a dict hit on the route id
    (whose hash Python caches), checked against the route object so that a new config
    version that renamed a route or moved it to another service gets the right series.
    Series are never dropped: counters stay monotonic across config changes, and a
    series whose route is gone simply stops growing (as in Kong).
    """

    __slots__ = ("_series", "_by_route", "unmatched", "connections_accepted", "overflows")

    def __init__(self) -> None:
        self._series: dict[tuple[str, str], RouteSeries] = {}
        self._by_route: dict[str, tuple[RouteSpec[CompiledService], RouteSeries]] = {}
        #: Requests no route matched (or unparsable ones): empty service and route labels.
        self.unmatched = self._get("", "")
        #: Client connections accepted since start (Kong's ``accepted`` state).
        self.connections_accepted = 0
        #: Tries refused by an upstream's overload caps: (upstream name, cap) -> count.
        self.overflows: dict[tuple[str, str], int] = {}

    def _get(self, service: str, route: str) -> RouteSeries:
        key = (service, route)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = RouteSeries(service, route)
        return series

    def for_route(self, route: RouteSpec[CompiledService]) -> RouteSeries:
        cached = self._by_route.get(route.id)
        if cached is not None and cached[0] is route:
            return cached[1]
        series = self._get(*_labels(route))
        self._by_route[route.id] = (route, series)
        return series

    def count_overflow(self, upstream: str, cap: str) -> None:
        """A try refused by ``upstream``'s ``cap`` (see :mod:`data_plane.overload`)."""
        key = (upstream, cap)
        self.overflows[key] = self.overflows.get(key, 0) + 1

    def restore(self, snapshot: Snapshot) -> None:
        """Continue from ``snapshot`` (a restarted worker's predecessor's counts):
        add its counts to this (fresh) object's."""
        self.connections_accepted += int(snapshot.get("connections_accepted", 0))
        for upstream, cap, n in snapshot.get("overflows", []):
            self.overflows[(upstream, cap)] = self.overflows.get((upstream, cap), 0) + int(n)
        for s in snapshot.get("series", []):
            series = self._get(s["service"], s["route"])
            for code, n in s["codes"].items():
                series.codes[int(code)] = series.codes.get(int(code), 0) + n
            for code, n in s["local_codes"].items():
                series.local_codes[int(code)] = series.local_codes.get(int(code), 0) + n
            for name in ("kong", "upstream", "request"):
                counts, total = s[name]
                mine = getattr(series, name)
                for i, n in enumerate(counts[: len(mine)]):
                    mine[i] += n
                setattr(series, f"{name}_sum", getattr(series, f"{name}_sum") + total)

    def snapshot(self, active_connections: int) -> Snapshot:
        """Everything counted so far, as JSON-able data (``overflows`` only once a
        cap refused something: ``[upstream, cap, count]`` triples)."""
        snap: Snapshot = {
            "series": [s.to_json() for s in self._series.values() if _used(s)],
            "connections_accepted": self.connections_accepted,
            "connections_active": active_connections,
        }
        if self.overflows:
            snap["overflows"] = [[u, cap, n] for (u, cap), n in self.overflows.items()]
        return snap


def _used(series: RouteSeries) -> bool:
    return bool(series.codes or series.local_codes)


def _add(into: list[Any], piece: list[Any]) -> None:
    counts, total = piece
    mine = into[0]
    for i, n in enumerate(counts):
        mine[i] += n
    into[1] += total


def merge_snapshots(snapshots: list[Snapshot]) -> Snapshot:
    """The sum of several processes' snapshots (the workers of one node)."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    accepted = active = 0
    overflows: dict[tuple[str, str], int] = {}
    for snap in snapshots:
        for upstream, cap, n in snap.get("overflows", []):
            overflows[(upstream, cap)] = overflows.get((upstream, cap), 0) + int(n)
        accepted += int(snap.get("connections_accepted", 0))
        active += int(snap.get("connections_active", 0))
        for s in snap.get("series", []):
            key = (s["service"], s["route"])
            into = merged.get(key)
            if into is None:
                merged[key] = {
                    "service": s["service"],
                    "route": s["route"],
                    "codes": dict(s["codes"]),
                    "local_codes": dict(s["local_codes"]),
                    "kong": [list(s["kong"][0]), s["kong"][1]],
                    "upstream": [list(s["upstream"][0]), s["upstream"][1]],
                    "request": [list(s["request"][0]), s["request"][1]],
                }
                continue
            for field in ("codes", "local_codes"):
                for code, n in s[field].items():
                    into[field][code] = into[field].get(code, 0) + n
            for field in ("kong", "upstream", "request"):
                _add(into[field], s[field])
    total: Snapshot = {
        "series": list(merged.values()),
        "connections_accepted": accepted,
        "connections_active": active,
    }
    if overflows:
        total["overflows"] = [[u, cap, n] for (u, cap), n in overflows.items()]
    return total
