"""The control plane's ``GET /metrics`` (Admin API port): Prometheus' text format.

Prometheus collectors are synchronous and the cluster view lives in Redis, so a
scrape first gathers a :class:`ControlPlaneView` (one ``HGETALL`` of the data-plane
rows and a ``PING``, awaited by the handler), then renders it through a
:class:`ControlPlaneCollector` built for that scrape. Nothing is counted per
request except the Admin API's plain per-status counter.

Families (Kong's Prometheus plugin names where Kong has one; ``ferry_`` otherwise):

- ``kong_data_plane_last_seen{node_id,hostname,ip}``: epoch seconds of the data
  plane's last message (Kong's);
- ``kong_data_plane_config_hash{node_id,hostname,ip}``: the hash the data plane
  last acknowledged, its first 13 hex digits as a number (exact in a float64; Kong
  exports the hash as a decimal number too);
- ``kong_data_plane_version_compatible{node_id,hostname,ip,kong_version}``: 1, or
  0 for a data plane refused as incompatible (Kong's; ``kong_version`` is Ferry's);
- ``ferry_data_plane_sync_status{node_id,hostname,sync_status}``: 1 for the state
  each data plane is in (``SYNCED``, ``STALE``, ``NACKED``, ``UNKNOWN``,
  ``VERSION_INCOMPATIBLE``), 0 for the others;
- ``ferry_data_plane_config_version{node_id,hostname}``: the version it acknowledged;
- ``ferry_data_planes{sync_status}``: how many data planes are in each state;
- ``ferry_control_plane_streams``: data-plane streams open on this control plane;
- ``ferry_config_version``: the configuration version this control plane serves;
- ``kong_datastore_reachable``: 1 when Redis answered ``PING`` during the scrape;
- ``ferry_redis_errors_total{kind}``: failed Redis operations of this process
  (``connection``, ``timeout``, ``response``, ``other``; each failed attempt of a
  retried command counts);
- ``ferry_admin_api_requests_total{code}``: Admin API answers by status;
- prometheus-client's ``process_*`` and ``python_*`` families of this process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from control_plane.sync_state import SyncStatus
from ferry_shared.snapshot_format import config_hash_number

__all__ = ["ControlPlaneCollector", "ControlPlaneView", "metrics_registry"]

_SYNC_STATES: tuple[str, ...] = get_args(SyncStatus)


@dataclass(frozen=True)
class ControlPlaneView:
    """What one scrape reports, gathered before rendering (the collector cannot await).

    ``data_planes`` holds ``/clustering/data-planes`` rows, or is ``None`` when Redis
    could not be read (the per-DP families are then left out, not reported as zero).
    """

    ferry_version: str
    config_version: int
    open_streams: int
    datastore_reachable: bool
    data_planes: list[dict[str, Any]] | None
    redis_errors: Mapping[str, int] = field(default_factory=dict)
    admin_requests: Mapping[int, int] = field(default_factory=dict)


class ControlPlaneCollector(Collector):
    """Renders one :class:`ControlPlaneView`; built per scrape, never shared."""

    def __init__(self, view: ControlPlaneView) -> None:
        self._view = view

    def collect(self) -> Iterator[Metric]:
        view = self._view
        yield GaugeMetricFamily(
            "kong_datastore_reachable",
            "1 when Redis answered during this scrape, else 0",
            value=1 if view.datastore_reachable else 0,
        )
        yield GaugeMetricFamily(
            "ferry_config_version", "The configuration version this control plane serves",
            value=view.config_version,
        )
        yield GaugeMetricFamily(
            "ferry_control_plane_streams", "Data-plane streams open on this control plane",
            value=view.open_streams,
        )
        errors = CounterMetricFamily(
            "ferry_redis_errors", "Failed Redis operations of this process, by kind", labels=["kind"]
        )
        for kind in ("connection", "timeout", "response", "other"):
            errors.add_metric([kind], view.redis_errors.get(kind, 0))
        yield errors
        requests = CounterMetricFamily(
            "ferry_admin_api_requests", "Admin API answers by HTTP status", labels=["code"]
        )
        for code, count in sorted(view.admin_requests.items()):
            requests.add_metric([str(code)], count)
        yield requests
        if view.data_planes is not None:
            yield from self._data_planes(view.data_planes)

    def _data_planes(self, rows: list[dict[str, Any]]) -> Iterator[Metric]:
        node = ["node_id", "hostname", "ip"]
        last_seen = GaugeMetricFamily(
            "kong_data_plane_last_seen", "Epoch seconds of each data plane's last message",
            labels=node,
        )
        config_hash = GaugeMetricFamily(
            "kong_data_plane_config_hash",
            "The configuration hash each data plane acknowledged: its first 13 hex digits "
            "as a number (0: none yet)",
            labels=node,
        )
        compatible = GaugeMetricFamily(
            "kong_data_plane_version_compatible",
            "1 when the data plane's version is compatible with this control plane's",
            labels=[*node, "kong_version"],
        )
        sync = GaugeMetricFamily(
            "ferry_data_plane_sync_status",
            "1 for the sync state each data plane is in, 0 for the others",
            labels=["node_id", "hostname", "sync_status"],
        )
        version = GaugeMetricFamily(
            "ferry_data_plane_config_version",
            "The configuration version each data plane acknowledged (0: none yet)",
            labels=["node_id", "hostname"],
        )
        counts = dict.fromkeys(_SYNC_STATES, 0)
        for row in rows:
            ids = [str(row.get("id", "")), str(row.get("hostname", "")), str(row.get("ip", ""))]
            status = str(row.get("sync_status", "UNKNOWN"))
            counts[status] = counts.get(status, 0) + 1
            last_seen.add_metric(ids, float(row.get("last_seen", 0)))
            config_hash.add_metric(ids, config_hash_number(str(row.get("config_hash", ""))))
            compatible.add_metric(
                [*ids, str(row.get("version", ""))], 0 if status == "VERSION_INCOMPATIBLE" else 1
            )
            for state in _SYNC_STATES:
                sync.add_metric(ids[:2] + [state], 1 if state == status else 0)
            version.add_metric(ids[:2], int(row.get("config_version", 0)))
        yield last_seen
        yield config_hash
        yield compatible
        yield sync
        yield version
        totals = GaugeMetricFamily(
            "ferry_data_planes", "Data planes known to the cluster, by sync state",
            labels=["sync_status"],
        )
        for state, count in counts.items():
            totals.add_metric([state], count)
        yield totals


def metrics_registry(view: ControlPlaneView) -> CollectorRegistry:
    """A registry rendering ``view`` plus this process's ``process_*``/``python_*``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlPlaneCollector(view))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry
