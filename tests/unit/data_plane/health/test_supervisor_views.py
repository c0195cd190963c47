"""The health supervisor's full views (issue 13 theme 5): every address of every
upstream, checks on or off; DNS_ERROR rows; a re-created upstream's unhealthy addresses."""

from __future__ import annotations

import asyncio
from typing import Any

from data_plane.health.supervisor import HealthSupervisor
from data_plane.runtime import RuntimeConfig, compile_config


def entities(upstream_id: str, name: str, targets: list[str], **upstream: Any) -> dict[str, list[dict[str, Any]]]:
    return {
        "upstreams": [{"id": upstream_id, "name": name, **upstream}],
        "targets": [
            {"id": f"t{i}-{upstream_id}", "target": t, "weight": 100, "upstream": {"id": upstream_id}}
            for i, t in enumerate(targets)
        ],
        "services": [],
        "routes": [],
    }


def full_view(supervisor: HealthSupervisor) -> list[Any]:
    """The view the control plane holds after the queued reports: the last full view
    with the rows queued after it merged in, as ``DataPlaneHealthSession`` merges them."""
    view: dict[str, Any] | None = None
    while not supervisor.reports.empty():
        full, rows = supervisor.reports.get_nowait()
        if full:
            view = {}
        assert view is not None, "rows before any full view"
        for row in rows:
            prefix = f"{row.upstream_id}|{row.target}|"
            if row.state == "DNS_ERROR":
                view = {k: v for k, v in view.items() if not k.startswith(prefix)}
            else:
                view.pop(prefix, None)
            view[prefix + row.address] = row
    assert view is not None
    return list(view.values())


def config(version: int, data: dict[str, list[dict[str, Any]]], previous: RuntimeConfig | None = None) -> RuntimeConfig:
    return compile_config(version, f"h{version}", data, previous)


async def test_upstreams_without_checks_report_their_addresses_checks_off() -> None:
    supervisor = HealthSupervisor()
    try:
        supervisor.apply(config(1, entities("u1", "shop", ["10.0.0.1:80", "10.0.0.2:80"])))
        rows = full_view(supervisor)
        assert sorted((r.address, r.state) for r in rows) == [
            ("10.0.0.1:80", "HEALTHCHECKS_OFF"),
            ("10.0.0.2:80", "HEALTHCHECKS_OFF"),
        ]
    finally:
        await supervisor.stop()


async def test_a_target_dns_left_without_an_address_is_a_dns_error_row() -> None:
    supervisor = HealthSupervisor()
    supervisor.dns_errors = lambda: {"nx.test:80": "dns server error: 3 name error"}
    try:
        cfg = config(1, entities("u1", "shop", ["nx.test:80"]))
        cfg.upstreams["u1"].balancer.after_targets_changed([])  # what DNS left of it
        supervisor.apply(cfg)
        [row] = full_view(supervisor)
        assert (row.target, row.address, row.state, row.reason) == (
            "nx.test:80", "", "DNS_ERROR", "dns server error: 3 name error",
        )
    finally:
        await supervisor.stop()


async def test_an_upstream_deleted_and_added_again_keeps_its_unhealthy_addresses() -> None:
    supervisor = HealthSupervisor()
    try:
        first = config(1, entities("u1", "shop", ["10.0.0.1:80", "10.0.0.2:80"]))
        supervisor.apply(first)
        assert supervisor.override("u1", "10.0.0.2:80", "", False)
        gone = config(2, {"upstreams": [], "targets": [], "services": [], "routes": []}, first)
        supervisor.apply(gone)
        again = config(3, entities("u2", "shop", ["10.0.0.1:80", "10.0.0.2:80"]), gone)
        supervisor.apply(again)
        await asyncio.sleep(0)
        states = {r.address: r.state for r in full_view(supervisor)}
        assert states == {"10.0.0.1:80": "HEALTHCHECKS_OFF", "10.0.0.2:80": "UNHEALTHY"}
        assert not again.upstreams["u2"].balancer.is_usable(
            next(a for a in again.upstreams["u2"].balancer.addresses if a.key == "10.0.0.2:80")
        )
    finally:
        await supervisor.stop()


def two_upstreams(first: list[str], second: list[str]) -> dict[str, list[dict[str, Any]]]:
    a, b = entities("u1", "shop", first), entities("u2", "cart", second)
    return {kind: a[kind] + b[kind] for kind in a}


def queued(supervisor: HealthSupervisor) -> list[tuple[bool, list[Any]]]:
    out = []
    while not supervisor.reports.empty():
        out.append(supervisor.reports.get_nowait())
    return out


async def test_a_delta_reports_only_the_rows_it_changed_and_a_full_view_when_one_must_go() -> None:
    supervisor = HealthSupervisor()
    try:
        first = config(1, two_upstreams(["10.0.0.1:80"], ["10.0.1.1:80"]))
        supervisor.apply(first)
        assert [full for full, _ in queued(supervisor)] == [True]
        kept = supervisor.checker("u2")

        added = config(2, two_upstreams(["10.0.0.1:80", "10.0.0.2:80"], ["10.0.1.1:80"]), first)
        supervisor.apply(added)
        [(full, rows)] = queued(supervisor)
        assert not full and [(r.upstream_id, r.address) for r in rows] == [("u1", "10.0.0.2:80")]
        assert supervisor.checker("u2") is kept, "an untouched upstream keeps its checker"

        supervisor.apply(config(3, two_upstreams(["10.0.0.1:80", "10.0.0.2:80"], ["10.0.1.1:80"]), added))
        assert queued(supervisor) == [], "nothing changed, nothing reported"

        removed = config(4, two_upstreams(["10.0.0.2:80"], ["10.0.1.1:80"]), added)
        supervisor.apply(removed)
        [(full, rows)] = queued(supervisor)
        assert full, "a row that must go takes a full view"
        assert sorted(r.address for r in rows) == ["10.0.0.2:80", "10.0.1.1:80"]
    finally:
        await supervisor.stop()
