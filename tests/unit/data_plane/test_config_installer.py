"""The config installer: live health checkers carried across configs (the compiled
config holds none of its own), and the install path a worker and the cluster
client share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_plane.balancers import Address
from data_plane.config_cache import ConfigCache
from data_plane.config_installer import ConfigInstaller, apply_snapshot, attach_checkers
from data_plane.runtime import ConfigHolder, compile_config
from ferry_shared.snapshot_format import canonical_json, config_hash
from proto import cluster_pb2
from tests.support.picks import picked_keys

A = Address("10.0.0.1", 80)
B = Address("10.0.0.2", 80)



def test_compile_config_creates_no_checker() -> None:
    config = compile_config(1, "h1", {"upstreams": [{"id": "u1", "name": "up"}]})
    assert config.upstreams["u1"].health is None
    attach_checkers(config, None)
    checker = config.upstreams["u1"].health
    assert checker is not None
    attach_checkers(config, None)  # idempotent
    assert config.upstreams["u1"].health is checker


def test_health_survives_a_config_change_that_keeps_the_target() -> None:
    def entities(extra_target: bool) -> dict[str, Any]:
        targets = [{"id": "t-a", "target": A.key, "upstream": {"id": "u1"}}]
        if extra_target:
            targets.append({"id": "t-b", "target": B.key, "upstream": {"id": "u1"}})
        return {
            "upstreams": [{"id": "u1", "name": "up", "healthchecks": {
                "passive": {"unhealthy": {"tcp_failures": 1}, "base_ejection_time": 0}}}],
            "targets": targets,
        }

    def installed(version: int, extra: bool, previous: Any = None) -> Any:
        config = compile_config(version, f"h{version}", entities(extra), previous=previous)
        attach_checkers(config, previous)
        return config

    first = installed(1, False)
    health = first.upstreams["u1"].health
    assert health is not None
    health.report_passive(A, True, False, 0)
    second = installed(2, True, first)
    new = second.upstreams["u1"].health
    assert new is not None and new is not health
    assert new.state_of(A) == "UNHEALTHY" and new.state_of(B) == "HEALTHY"
    assert picked_keys(new) == {B.key}
    # Unchanged upstream: the very same checker (and its probe loops) carries on.
    third = installed(3, True, second)
    assert third.upstreams["u1"].health is new


def _snapshot(version: int, entities: list[tuple[str, dict[str, Any]]]) -> cluster_pb2.Snapshot:
    resources = [(kind, e["id"], canonical_json(e)) for kind, e in entities]
    return cluster_pb2.Snapshot(
        version=version,
        hash=config_hash(resources),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in resources],
    )


async def test_an_installed_config_serves_with_its_checkers_and_is_cached(tmp_path: Path) -> None:
    holder = ConfigHolder()
    published: list[int] = []
    installer = ConfigInstaller(
        holder, ConfigCache(tmp_path), on_installed=lambda s: published.append(s.version)
    )
    snapshot = _snapshot(4, [("upstreams", {"id": "u1", "name": "up"}),
                             ("targets", {"id": "t1", "target": A.key, "upstream": {"id": "u1"}})])
    await installer.install_snapshot(snapshot)
    assert holder.current is not None and holder.current.version == 4
    assert holder.current.upstreams["u1"].health is not None
    assert published == [4]
    await installer.flush()  # the disk cache follows the install
    cached = ConfigCache(tmp_path).load()
    assert cached is not None and apply_snapshot(cached, None).hash == snapshot.hash
    # A worker's installer: no cache, the same path.
    worker = ConfigInstaller(ConfigHolder())
    await worker.install_snapshot(snapshot)
    assert worker.holder.current is not None and worker.holder.current.hash == snapshot.hash


async def test_a_burst_of_installs_is_cached_once_with_the_newest_config(tmp_path: Path) -> None:
    saves: list[int] = []

    class CountingCache(ConfigCache):
        def save_encoded(self, data: bytes) -> None:
            saves.append(len(data))
            super().save_encoded(data)

    installer = ConfigInstaller(ConfigHolder(), CountingCache(tmp_path), cache_save_delay=30.0)
    snapshots = [
        _snapshot(version, [("upstreams", {"id": "u1", "name": f"up{version}"})])
        for version in (1, 2, 3)
    ]
    for snapshot in snapshots:
        await installer.install_snapshot(snapshot)
    assert saves == []  # waiting out the delay (30 s): flush writes at once
    await installer.flush()
    assert len(saves) == 1
    cached = ConfigCache(tmp_path).load()
    assert cached is not None and cached.version == 3 and cached.hash == snapshots[-1].hash
