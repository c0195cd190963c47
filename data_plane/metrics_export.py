"""The data plane's ``GET /metrics``: Prometheus' text format, with Kong's names.

A prometheus-client :class:`~prometheus_client.registry.Collector` builds every family
at scrape time from what the proxy counted (:mod:`data_plane.request_metrics`), the
health checkers' view and the cluster link, so nothing here runs per request.

Families (Kong's Prometheus plugin names where Kong has one; ``ferry_`` otherwise):

- ``kong_http_requests_total{service,route,code,source}``: ``source`` is ``service``
  for a response from a target and ``kong`` for the proxy's own answer (no route, no
  healthy target, 502/504);
- ``kong_kong_latency_ms``, ``kong_upstream_latency_ms``, ``kong_request_latency_ms``
  ``{service,route}``: histograms with Kong's buckets;
- ``kong_upstream_target_health{upstream,target,address,state,subsystem}``: 1 for the
  state an address is in (``healthy``, ``unhealthy``, ``healthchecks_off``,
  ``dns_error``) and 0 for the three others, as Kong exports it;
- ``ferry_upstream_ejections_refused_total{upstream}``: passive or outlier ejections
  refused by ``healthchecks.max_ejection_percent`` (the address stayed in);
- ``ferry_upstream_panic{upstream}``: 1 while the upstream is in panic mode (its
  balancer ignores health, ``healthchecks.panic_threshold``), else 0; listed for the
  upstreams with a panic threshold;
- ``kong_nginx_connections_total{state}`` (``accepted``, ``active``) and
  ``kong_nginx_requests_total``;
- ``ferry_upstream_overflow_total{upstream,cap}``: tries refused by an upstream's
  overload cap (``max_requests``, ``max_pending_requests``, or ``max_connections``
  when a pending try's wait ran out), answered 503 with ``X-Ferry-Overloaded: true``;
- ``kong_control_plane_connected``, ``ferry_config_version``, ``ferry_config_hash``
  (the first 13 hex digits as a number: exact in a float64),
  ``ferry_config_last_sync_timestamp_seconds``;
- prometheus-client's ``process_*`` and ``python_*`` families of this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from data_plane.cluster_client import ClusterLinkState
from data_plane.request_metrics import (
    KONG_LATENCY_BUCKETS_MS,
    UPSTREAM_LATENCY_BUCKETS_MS,
    Snapshot,
)
from data_plane.runtime import ConfigHolder
from ferry_shared.snapshot_format import config_hash_number

__all__ = ["DataPlaneCollector", "metrics_registry"]

_STATES = ("healthy", "unhealthy", "healthchecks_off", "dns_error")
_STATE_OF = {"HEALTHY": "healthy", "UNHEALTHY": "unhealthy", "HEALTHCHECKS_OFF": "healthchecks_off"}


def _buckets(bounds: tuple[int, ...], piece: list[Any]) -> tuple[list[tuple[str, float]], float]:
    counts, total = piece
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(bounds, counts, strict=False):
        running += n
        out.append((str(bound), running))
    running += counts[-1]
    out.append(("+Inf", running))
    return out, total


class DataPlaneCollector(Collector):
    """Builds the families above. ``requests`` returns the proxy's snapshot (the sum of
    the workers' with ``--workers N``); ``dns_errors`` the targets whose name does not
    resolve (target key -> error)."""

    def __init__(
        self,
        holder: ConfigHolder,
        link: ClusterLinkState,
        requests: Callable[[], Snapshot | None],
        dns_errors: Callable[[], Mapping[str, str]] | None = None,
        certificates: Callable[[], list[tuple[str, str, float]]] | None = None,
    ) -> None:
        """``certificates``: ``(id, slot, not_after)`` of every certificate the TLS
        listeners serve (see :func:`data_plane.tls_termination.expiry_series`)."""
        self._holder = holder
        self._link = link
        self._requests = requests
        self._dns_errors = dns_errors
        self._certificates = certificates

    def collect(self) -> Iterator[Metric]:
        yield from self._request_families()
        yield from self._health_family()
        yield from self._ejections_refused_family()
        yield self._panic_family()
        yield from self._config_families()
        if self._certificates is not None:
            expiry = GaugeMetricFamily(
                "ferry_certificate_not_after_seconds",
                "End of validity (Unix seconds) of each certificate the TLS listeners serve",
                labels=["certificate", "slot"],
            )
            for cert_id, slot, not_after in self._certificates():
                expiry.add_metric([cert_id, slot], not_after)
            yield expiry

    def _request_families(self) -> Iterator[Metric]:
        snap = self._requests()
        requests = CounterMetricFamily(
            "kong_http_requests", "HTTP requests by service, route, status and source",
            labels=["service", "route", "code", "source"],
        )
        latency = {
            name: HistogramMetricFamily(f"kong_{name}_latency_ms", help_text, labels=["service", "route"])
            for name, help_text in (
                ("kong", "Time spent in the gateway before the request went to the target (ms)"),
                ("upstream", "Time from sending the request to the target's response head (ms)"),
                ("request", "Time from the request's first byte to the end of its answer (ms)"),
            )
        }
        total = 0
        for s in (snap or {}).get("series", []):
            labels = [s["service"], s["route"]]
            for code, n in s["codes"].items():
                requests.add_metric([*labels, code, "service"], n)
                total += n
            for code, n in s["local_codes"].items():
                requests.add_metric([*labels, code, "kong"], n)
                total += n
            for name, bounds in (
                ("kong", KONG_LATENCY_BUCKETS_MS),
                ("upstream", UPSTREAM_LATENCY_BUCKETS_MS),
                ("request", UPSTREAM_LATENCY_BUCKETS_MS),
            ):
                if name != "request" and not s["codes"]:
                    continue  # only local answers: no gateway or upstream latency
                buckets, sum_ms = _buckets(bounds, s[name])
                latency[name].add_metric(labels, buckets, sum_ms)
        yield requests
        yield from latency.values()
        connections = GaugeMetricFamily(
            "kong_nginx_connections_total", "Client connections by state", labels=["state"]
        )
        connections.add_metric(["accepted"], (snap or {}).get("connections_accepted", 0))
        connections.add_metric(["active"], (snap or {}).get("connections_active", 0))
        yield connections
        yield GaugeMetricFamily("kong_nginx_requests_total", "Requests answered", value=total)
        overflow = CounterMetricFamily(
            "ferry_upstream_overflow",
            "Tries refused by an upstream's overload cap (answered 503, X-Ferry-Overloaded)",
            labels=["upstream", "cap"],
        )
        for upstream, cap, n in (snap or {}).get("overflows", []):
            overflow.add_metric([upstream, cap], n)
        yield overflow

    def _health_family(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "kong_upstream_target_health",
            "Health of each target address as this data plane sees it; 1 for its state",
            labels=["upstream", "target", "address", "state", "subsystem"],
        )
        config = self._holder.current
        dns_errors = self._dns_errors() if self._dns_errors is not None else {}
        for upstream in config.upstreams.values() if config is not None else ():
            checker = upstream.health
            views = checker.view() if checker is not None else []
            seen: set[str] = set()
            for view in views:
                seen.add(view.target)
                state = _STATE_OF.get(view.state, "healthy")
                address = f"{view.address.host}:{view.address.port}"
                for s in _STATES:
                    family.add_metric([upstream.name, view.target, address, s, "http"], 1 if s == state else 0)
            for target in upstream.targets:
                if target.key in dns_errors and target.key not in seen:
                    for s in _STATES:
                        family.add_metric(
                            [upstream.name, target.key, "", s, "http"], 1 if s == "dns_error" else 0
                        )
        yield family

    def _ejections_refused_family(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "ferry_upstream_ejections_refused",
            "Passive or outlier ejections refused by healthchecks.max_ejection_percent",
            labels=["upstream"],
        )
        config = self._holder.current
        for upstream in config.upstreams.values() if config is not None else ():
            checker = upstream.health
            if checker is not None and checker.settings.max_ejection_percent < 100:
                family.add_metric([upstream.name], checker.ejections_refused)
        yield family

    def _panic_family(self) -> Metric:
        family = GaugeMetricFamily(
            "ferry_upstream_panic",
            "1 while the upstream's balancer is in panic mode (ignores health), else 0",
            labels=["upstream"],
        )
        config = self._holder.current
        for upstream in config.upstreams.values() if config is not None else ():
            checker = upstream.health
            if checker is not None and checker.settings.panic_threshold > 0:
                family.add_metric([upstream.name], 1 if checker.panic else 0)
        return family

    def _config_families(self) -> Iterator[Metric]:
        config = self._holder.current
        link = self._link
        yield GaugeMetricFamily(
            "kong_control_plane_connected", "1 while the link to the control plane is up",
            value=1 if link.connected else 0,
        )
        yield GaugeMetricFamily(
            "ferry_config_version", "Version of the configuration this data plane serves (0: none)",
            value=config.version if config is not None else 0,
        )
        yield GaugeMetricFamily(
            "ferry_config_hash",
            "The served configuration's hash: its first 13 hex digits as a number (0: none)",
            value=config_hash_number(config.hash) if config is not None else 0,
        )
        yield GaugeMetricFamily(
            "ferry_config_last_sync_timestamp_seconds",
            "Unix time the last configuration from the control plane was applied (0: never)",
            value=link.last_config_at or 0,
        )


def metrics_registry(collector: DataPlaneCollector) -> CollectorRegistry:
    """A registry with ``collector`` and this process's ``process_*``/``python_*``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
