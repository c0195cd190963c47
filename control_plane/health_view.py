"""One cluster-wide health view of an upstream, from what every live data plane reports.

Pure functions over the upstream and target entities (the Admin API's dicts) and
the :class:`~control_plane.health.DataPlaneReport` s read from Redis; they build
Kong's ``GET /upstreams/{u}/health`` shapes with Ferry's extensions. No I/O.

Rules (``docs/admin-api.md`` documents them for operators):

- An **address** is judged only by the DPs that report it: ``HEALTHY`` when each
  sees it usable (``HEALTHY``, or ``HEALTHCHECKS_OFF`` from a DP that does not
  check it), ``UNHEALTHY`` when each sees it unhealthy, ``HEALTHCHECKS_OFF`` when
  each says so, ``MIXED`` otherwise.
- A **target** follows Kong's rule over its addresses, with ``MIXED`` between
  ``HEALTHY`` and ``UNHEALTHY``: ``HEALTHY`` if any address is, else ``MIXED`` if
  any is, else ``UNHEALTHY`` if any is, else ``HEALTHCHECKS_OFF``; ``DNS_ERROR``
  when every reporting DP failed to resolve it. When some DPs cannot resolve it
  and the others can use it, it is ``MIXED``. Weight 0 → ``HEALTHCHECKS_OFF``.
- With **no report** for a target, its health is ``HEALTHCHECKS_OFF`` when the
  upstream's checks are off, else ``HEALTHY`` (nothing has been seen failing);
  an IP target lists itself as its one address, a name lists no address.
- **Weights**: an address's weight counts as *available* when its health is
  ``HEALTHY``, ``MIXED`` or ``HEALTHCHECKS_OFF`` (at least one DP sends it
  traffic), *unavailable* when ``UNHEALTHY``. An unreported name counts its
  target's weight once, as available.
- The **balancer** is healthy, as in Kong, while available weight × 100 / total
  weight > ``healthchecks.threshold`` (total 0 → unhealthy).
- ``/health`` lists targets **newest first** (``created_at`` descending), as Kong.
- Data planes report every address, checks on or off (an address of an upstream
  without checks is ``HEALTHCHECKS_OFF``), and a ``DNS_ERROR`` row for a target
  whose name they could not resolve.
- **Panic mode** (``healthchecks.panic_threshold`` > 0; off: nothing is shown): each
  DP decides it from its own view and reports the upstreams it has in panic;
  ``/health`` says ``"panic": {"threshold", "data_planes": [node ids]}`` and
  ``?balancer_health=1`` ``details.panic_threshold``, ``details.panic`` (some DP is in
  panic) and each DP's ``panic``.
- ``?balancer_health=1`` carries Kong's ``details.hosts``: per target ``{"host",
  "port", "dns", "nodeWeight", "weight", "addresses": [{"ip", "port", "weight",
  "healthy"}]}``, an address ``healthy`` when some data plane sends it traffic.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from control_plane.health_types import AddressReport, DataPlaneReport
from control_plane.schemas import RuleError, parse_host
from ferry_shared.target_health import (
    DNS_ERROR,
    HEALTHCHECKS_OFF,
    HEALTHY,
    MIXED,
    UNHEALTHY,
    target_rule,
)

__all__ = [
    "balancer_health",
    "checks_enabled",
    "panic_view",
    "combine_address",
    "newest_first",
    "target_rule",
    "targets_with_health",
]

#: Address states under which some data plane still sends the address traffic.
_AVAILABLE = frozenset({HEALTHY, MIXED, HEALTHCHECKS_OFF})


def checks_enabled(upstream: Mapping[str, Any]) -> bool:
    """Kong's test: an active interval > 0 or a passive unhealthy counter > 0; or
    Ferry's outlier detection is on."""
    checks = upstream.get("healthchecks") or {}
    if (checks.get("passive") or {}).get("outlier_detection") is not None:
        return True
    active = checks.get("active") or {}
    passive_unhealthy = (checks.get("passive") or {}).get("unhealthy") or {}
    intervals = ((active.get("healthy") or {}).get("interval"), (active.get("unhealthy") or {}).get("interval"))
    counters = (passive_unhealthy.get(k) for k in ("tcp_failures", "timeouts", "http_failures"))
    return any((v or 0) > 0 for v in intervals) or any((v or 0) > 0 for v in counters)


def panic_view(upstream: Mapping[str, Any], reports: Sequence[DataPlaneReport]) -> dict[str, Any] | None:
    """``{"threshold", "data_planes": [node ids in panic]}`` for ``/health``; None when
    the upstream has no panic threshold (Kong's body unchanged)."""
    threshold = (upstream.get("healthchecks") or {}).get("panic_threshold") or 0
    if not threshold:
        return None
    upstream_id = str(upstream["id"])
    return {
        "threshold": threshold,
        "data_planes": [r.node_id for r in reports if upstream_id in r.panic_upstreams],
    }


def combine_address(states: Sequence[str]) -> str:
    """The cluster-wide health of one address from the states its reporters give."""
    seen = set(states)
    if seen == {HEALTHCHECKS_OFF}:
        return HEALTHCHECKS_OFF
    if seen <= {HEALTHY, HEALTHCHECKS_OFF}:
        return HEALTHY
    if seen == {UNHEALTHY}:
        return UNHEALTHY
    if seen == {DNS_ERROR}:
        return DNS_ERROR
    return MIXED



def split_address(address: str) -> tuple[str, int]:
    """``10.0.0.1:80`` → ``("10.0.0.1", 80)``; ``[::1]:80`` → ``("::1", 80)``."""
    host, _, port = address.rpartition(":")
    if not host:
        return address, 0
    return host.strip("[]"), int(port) if port.isdigit() else 0


def _address_order(address: str) -> tuple[int, int, int, str]:
    ip, port = split_address(address)
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        return (2, 0, port, address)
    return (parsed.version, int(parsed), port, address)


def _is_ip_target(target: str) -> bool:
    try:
        return parse_host(target).kind != "name"
    except RuleError:
        return False


@dataclass(slots=True)
class _Weights:
    total: int = 0
    available: int = 0

    def add(self, weight: int, health: str) -> None:
        self.total += weight
        if health in _AVAILABLE:
            self.available += weight

    def to_api(self) -> dict[str, int]:
        return {"total": self.total, "available": self.available, "unavailable": self.total - self.available}


@dataclass(slots=True)
class _TargetView:
    """One target's cluster view plus each reporting DP's own view of it."""

    health: str
    addresses: list[dict[str, Any]]
    weights: _Weights
    data_planes: list[dict[str, Any]]
    #: node id → that DP's weights for this target (for per-DP balancer health).
    dp_weights: dict[str, _Weights] = field(default_factory=dict)


def _dp_row(report: DataPlaneReport, entries: list[AddressReport]) -> dict[str, Any]:
    addresses = [e for e in entries if e.address]
    latest = max(entries, key=lambda e: e.time)
    health = target_rule([e.state for e in addresses]) if addresses else DNS_ERROR
    return {
        "id": report.node_id,
        "hostname": report.hostname,
        "health": health,
        "reason": latest.reason,
        "updated_at": latest.time,
        "addresses": [
            {"address": e.address, "health": e.state, "reason": e.reason, "updated_at": e.time}
            for e in sorted(addresses, key=lambda e: _address_order(e.address))
        ],
    }


def _target_view(
    target: Mapping[str, Any], reports: Sequence[DataPlaneReport], checks_on: bool
) -> _TargetView:
    name = str(target["target"])
    upstream_id = str((target.get("upstream") or {}).get("id", ""))
    weight = int(target.get("weight", 100))
    by_dp: list[tuple[DataPlaneReport, list[AddressReport]]] = []
    for report in reports:
        mine = [e for e in report.entries if e.target == name and e.upstream_id == upstream_id]
        if mine:
            by_dp.append((report, mine))
    fallback = HEALTHCHECKS_OFF if not checks_on else HEALTHY

    # Every address some DP reported: its states and its latest weight.
    states: dict[str, list[str]] = {}
    latest: dict[str, AddressReport] = {}
    dns_failures = 0
    for _report, entries in by_dp:
        if not any(e.address for e in entries):
            dns_failures += 1
        for entry in entries:
            if not entry.address:
                continue
            states.setdefault(entry.address, []).append(entry.state)
            if entry.address not in latest or entry.time >= latest[entry.address].time:
                latest[entry.address] = entry

    weights = _Weights()
    addresses: list[dict[str, Any]] = []
    if not by_dp:
        health = HEALTHCHECKS_OFF if weight == 0 else fallback
        if _is_ip_target(name):
            ip, port = split_address(name)
            addresses.append({"ip": ip, "port": port, "weight": weight, "health": health})
        weights.add(weight, health)
    else:
        address_healths: list[str] = []
        for address in sorted(states, key=_address_order):
            health = HEALTHCHECKS_OFF if weight == 0 else combine_address(states[address])
            address_weight = 0 if weight == 0 else latest[address].weight
            ip, port = split_address(address)
            addresses.append({"ip": ip, "port": port, "weight": address_weight, "health": health})
            address_healths.append(health)
            weights.add(address_weight, health)
        if weight == 0:
            health = HEALTHCHECKS_OFF
        else:
            health = target_rule(address_healths)
            if dns_failures and health in (HEALTHY, HEALTHCHECKS_OFF):
                health = MIXED  # some DPs cannot use it at all

    view = _TargetView(health, addresses, weights, [_dp_row(r, e) for r, e in by_dp])
    for report, entries in by_dp:
        own = _Weights()
        for entry in entries:
            if entry.address:
                own.add(0 if weight == 0 else entry.weight, entry.state)
        view.dp_weights[report.node_id] = own
    return view


def _unreported_weights(target: Mapping[str, Any], checks_on: bool) -> _Weights:
    """What a DP that reported nothing about ``target`` is assumed to see."""
    own = _Weights()
    own.add(int(target.get("weight", 100)), HEALTHY if checks_on else HEALTHCHECKS_OFF)
    return own


def targets_with_health(
    upstream: Mapping[str, Any],
    targets: Sequence[Mapping[str, Any]],
    reports: Sequence[DataPlaneReport],
) -> list[dict[str, Any]]:
    """Each target entity plus ``health``, ``data`` (Kong's) and ``data_planes`` (Ferry's).

    ``reports`` are the live DPs' entries for this upstream; targets come newest
    first (Kong's order). ``data`` is ``{"host", "port", "nodeWeight", "addresses": [{"ip",
    "port", "weight", "health"}], "weight": {"total", "available",
    "unavailable"}}``; ``data_planes`` lists, per DP that reported the target,
    ``{"id", "hostname", "health", "reason", "updated_at", "addresses":
    [{"address", "health", "reason", "updated_at"}]}``.
    """
    checks_on = checks_enabled(upstream)
    items: list[dict[str, Any]] = []
    for target in newest_first(targets):
        view = _target_view(target, reports, checks_on)
        host, port = split_address(str(target["target"]))
        items.append(
            {
                **target,
                "health": view.health,
                "data": {
                    "host": host,
                    "port": port,
                    "nodeWeight": int(target.get("weight", 100)),
                    "addresses": view.addresses,
                    "weight": view.weights.to_api(),
                },
                "data_planes": view.data_planes,
            }
        )
    return items


def newest_first(targets: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Targets by ``created_at`` descending (Kong's order for ``/health``); equal
    timestamps by id, so that pages of one list agree whatever order the store gives."""
    return sorted(targets, key=lambda t: (-float(t.get("created_at") or 0), str(t.get("id") or "")))


def _dns_source(name: str, view: _TargetView) -> str:
    """Kong's ``dns`` of a host: the record type its addresses came from, the
    lookup error, or ``unknown`` before any data plane reported it."""
    try:
        kind = parse_host(name).kind
    except RuleError:
        kind = "name"
    if kind != "name":
        return "IPv6" if kind == "ipv6" else "IPv4"
    if view.health == DNS_ERROR:
        reasons = [row["reason"] for row in view.data_planes if row["health"] == DNS_ERROR and row["reason"]]
        return reasons[0] if reasons else "dns server error"
    if not view.addresses:
        return "unknown"
    return "AAAA" if all(":" in a["ip"] for a in view.addresses) else "A"


def _host_status(target: Mapping[str, Any], view: _TargetView) -> dict[str, Any]:
    """One entry of Kong's ``details.hosts``."""
    host, port = split_address(str(target["target"]))
    return {
        "host": host,
        "port": port,
        "dns": _dns_source(str(target["target"]), view),
        "nodeWeight": int(target.get("weight", 100)),
        "weight": view.weights.to_api(),
        "addresses": [
            {"ip": a["ip"], "port": a["port"], "weight": a["weight"], "healthy": a["health"] in _AVAILABLE}
            for a in view.addresses
        ],
    }


def _balanced(weights: _Weights, threshold: int | float) -> str:
    if weights.total <= 0:
        return UNHEALTHY
    return HEALTHY if weights.available * 100 / weights.total > threshold else UNHEALTHY


def balancer_health(
    upstream: Mapping[str, Any],
    targets: Sequence[Mapping[str, Any]],
    reports: Sequence[DataPlaneReport],
) -> dict[str, Any]:
    """Kong's ``?balancer_health=1`` body (``data``) for the cluster, plus each DP's own.

    ``details`` carries Kong's ``healthy``, ``weight`` and ``hosts`` and Ferry's
    ``healthy_weight``, ``total_weight``, ``threshold`` and ``data_planes``
    (node id → ``{"hostname", "balancer_health", "healthy_weight",
    "total_weight"}``), where each DP's weights come from its own report (a
    target it did not report counts as usable, as in the cluster view).
    """
    checks_on = checks_enabled(upstream)
    threshold = (upstream.get("healthchecks") or {}).get("threshold") or 0
    total = _Weights()
    per_dp: dict[str, _Weights] = {r.node_id: _Weights() for r in reports}
    hosts: list[dict[str, Any]] = []
    for target in targets:
        view = _target_view(target, reports, checks_on)
        hosts.append(_host_status(target, view))
        total.total += view.weights.total
        total.available += view.weights.available
        for report in reports:
            own = view.dp_weights.get(report.node_id) or _unreported_weights(target, checks_on)
            per_dp[report.node_id].total += own.total
            per_dp[report.node_id].available += own.available
    cluster = _balanced(total, threshold)
    panic = panic_view(upstream, reports)
    in_panic = set(panic["data_planes"]) if panic is not None else set()
    body: dict[str, Any] = {
        "id": upstream["id"],
        "health": cluster if checks_on else HEALTHCHECKS_OFF,
        "balancer_health": cluster,
        "details": {
            "healthy": cluster == HEALTHY,
            "weight": total.to_api(),
            "hosts": hosts,
            "healthy_weight": total.available,
            "total_weight": total.total,
            "threshold": threshold,
            "data_planes": {
                r.node_id: {
                    "hostname": r.hostname,
                    "balancer_health": _balanced(per_dp[r.node_id], threshold),
                    "healthy_weight": per_dp[r.node_id].available,
                    "total_weight": per_dp[r.node_id].total,
                    **({"panic": r.node_id in in_panic} if panic is not None else {}),
                }
                for r in reports
            },
        },
    }
    if panic is not None:
        body["details"]["panic_threshold"] = panic["threshold"]
        body["details"]["panic"] = bool(in_panic)
    return body
