"""The data plane applies deltas to a copy of what it holds, or asks for a resync."""

from __future__ import annotations

import json

import pytest

from data_plane.cluster_client import DeltaDoesNotFit, apply_snapshot, merge_delta
from ferry_shared.snapshot_format import canonical_json, config_hash
from proto import cluster_pb2

UPSTREAM_A = {"id": "00000000-0000-4000-8000-00000000000a", "name": "a"}
UPSTREAM_B = {"id": "00000000-0000-4000-8000-00000000000b", "name": "b"}


def _snapshot(version: int, entities: list[dict]) -> cluster_pb2.Snapshot:
    resources = [("upstreams", e["id"], canonical_json(e)) for e in entities]
    return cluster_pb2.Snapshot(
        version=version,
        hash=config_hash(resources),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in resources],
    )


def _delta(held: cluster_pb2.Snapshot, target: cluster_pb2.Snapshot, upserts: list[dict],
           removals: list[str]) -> cluster_pb2.Delta:
    return cluster_pb2.Delta(
        from_version=held.version,
        from_hash=held.hash,
        version=target.version,
        hash=target.hash,
        upserts=[cluster_pb2.Resource(kind="upstreams", id=e["id"], body=canonical_json(e))
                 for e in upserts],
        removals=[cluster_pb2.ResourceKey(kind="upstreams", id=i) for i in removals],
    )


def test_a_delta_applied_to_the_held_config_gives_the_target_config() -> None:
    held = _snapshot(3, [UPSTREAM_A, UPSTREAM_B])
    changed = {**UPSTREAM_A, "slots": 100}
    target = _snapshot(5, [changed])
    merged = merge_delta(held, _delta(held, target, [changed], [UPSTREAM_B["id"]]))
    assert (merged.version, merged.hash) == (5, target.hash)
    assert [json.loads(r.body) for r in merged.resources] == [changed]
    config = apply_snapshot(merged, None)
    assert config.version == 5
    assert len(held.resources) == 2, "the held config is not modified"


def test_a_delta_from_another_version_asks_for_a_resync() -> None:
    held = _snapshot(3, [UPSTREAM_A])
    target = _snapshot(5, [UPSTREAM_A, UPSTREAM_B])
    delta = _delta(held, target, [UPSTREAM_B], [])
    delta.from_version = 4
    with pytest.raises(DeltaDoesNotFit, match="holds version 3"):
        merge_delta(held, delta)
    with pytest.raises(DeltaDoesNotFit, match="holds no config"):
        merge_delta(None, delta)


def test_a_delta_whose_result_hashes_differently_asks_for_a_resync() -> None:
    held = _snapshot(3, [UPSTREAM_A])
    target = _snapshot(5, [UPSTREAM_A, UPSTREAM_B])
    delta = _delta(held, target, [{**UPSTREAM_B, "name": "not-b"}], [])
    with pytest.raises(DeltaDoesNotFit, match="hashes to"):
        merge_delta(held, delta)
    other_base = _delta(held, target, [UPSTREAM_B], [])
    other_base.from_hash = "f" * 64
    with pytest.raises(DeltaDoesNotFit, match="based on config"):
        merge_delta(held, other_base)


def test_bodies_decoded_by_the_last_compile_are_reused_and_only_those_kept() -> None:
    from data_plane.cluster_client import DecodedBodies
    from data_plane.runtime import ConfigError

    decoded: DecodedBodies = {}
    first = apply_snapshot(_snapshot(1, [UPSTREAM_A, UPSTREAM_B]), None, decoded)
    body_a, body_b = canonical_json(UPSTREAM_A), canonical_json(UPSTREAM_B)
    assert set(decoded) == {body_a, body_b}
    entity_a = decoded[body_a]
    changed = {**UPSTREAM_B, "slots": 100}
    second = apply_snapshot(_snapshot(2, [UPSTREAM_A, changed]), first, decoded)
    assert decoded[body_a] is entity_a, "an unchanged body is not decoded again"
    assert set(decoded) == {body_a, canonical_json(changed)}
    assert second.upstreams[UPSTREAM_B["id"]].slots == 100
    # A config that does not compile leaves the cache as the last good compile left it.
    duplicate = {**UPSTREAM_B, "id": "00000000-0000-4000-8000-00000000000c", "name": "a"}
    with pytest.raises(ConfigError):
        apply_snapshot(_snapshot(3, [UPSTREAM_A, duplicate]), second, decoded)
    assert set(decoded) == {body_a, canonical_json(changed)}
