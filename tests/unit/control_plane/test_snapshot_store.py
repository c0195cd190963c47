import asyncio
import json

from control_plane.snapshot import SnapshotBuilder, SnapshotStore, build_snapshot

UPSTREAM = {"id": "11111111-1111-4111-8111-111111111111", "name": "demo", "slots": 10000}
TARGET = {"id": "22222222-2222-4222-8222-222222222222", "target": "127.0.0.1:8080", "weight": 100,
          "upstream": {"id": UPSTREAM["id"]}}


def test_equal_configs_give_equal_hashes_whatever_the_order():
    a = build_snapshot(1, {"upstreams": [UPSTREAM], "targets": [TARGET]})
    b = build_snapshot(1, {"targets": [TARGET], "upstreams": [dict(reversed(list(UPSTREAM.items())))]})
    assert a.hash == b.hash
    assert a.resources == b.resources


def test_a_changed_field_changes_the_hash():
    a = build_snapshot(1, {"upstreams": [UPSTREAM]})
    b = build_snapshot(1, {"upstreams": [{**UPSTREAM, "slots": 20000}]})
    assert a.hash != b.hash


def test_the_builder_from_stored_texts_equals_build_snapshot():
    other = {**TARGET, "id": "33333333-3333-4333-8333-333333333333", "target": "127.0.0.1:8081"}
    entities = {"upstreams": [UPSTREAM], "targets": [other, TARGET]}
    texts = {kind: [json.dumps(e, indent=1) for e in items] for kind, items in entities.items()}
    built = SnapshotBuilder().build(7, texts)
    assert built == build_snapshot(7, entities)
    assert [r.id for r in built.resources] == [UPSTREAM["id"], TARGET["id"], other["id"]]
    # Bytes, as Redis may answer, give the same snapshot.
    as_bytes = {kind: [t.encode() for t in items] for kind, items in texts.items()}
    assert SnapshotBuilder().build(7, as_bytes) == built


def test_the_builder_reencodes_only_changed_texts():
    builder = SnapshotBuilder()
    first = builder.build(1, {"upstreams": [json.dumps(UPSTREAM)], "targets": [json.dumps(TARGET)]})
    changed = {**UPSTREAM, "slots": 20000}
    second = builder.build(2, {"upstreams": [json.dumps(changed)], "targets": [json.dumps(TARGET)]})
    assert second.resources[1] is first.resources[1]  # the unchanged target: reused
    assert second.resources[0] is not first.resources[0]
    assert second == build_snapshot(2, {"upstreams": [changed], "targets": [TARGET]})
    third = builder.build(3, {"upstreams": [json.dumps(changed)]})  # the target was deleted
    assert third == build_snapshot(3, {"upstreams": [changed]})


def test_store_ignores_a_snapshot_older_than_the_current_one():
    store = SnapshotStore()
    assert store.set(build_snapshot(5, {"upstreams": [UPSTREAM]}))
    assert not store.set(build_snapshot(4, {}))
    assert store.current is not None and store.current.version == 5


async def test_watcher_wakes_only_when_the_version_differs():
    store = SnapshotStore()
    store.set(build_snapshot(1, {}))
    waiter = asyncio.create_task(store.wait_for_change(1, store.current.hash))  # type: ignore[union-attr]
    await asyncio.sleep(0)
    store.set(build_snapshot(1, {}))  # same version and hash: no wake-up
    await asyncio.sleep(0.01)
    assert not waiter.done()
    store.set(build_snapshot(2, {"upstreams": [UPSTREAM]}))
    snapshot = await asyncio.wait_for(waiter, 5)
    assert snapshot.version == 2


async def test_watcher_holding_an_old_version_gets_the_current_one_at_once():
    store = SnapshotStore()
    store.set(build_snapshot(3, {}))
    snapshot = await asyncio.wait_for(store.wait_for_change(0), 5)
    assert snapshot.version == 3


# ---- deltas ------------------------------------------------------------------

from control_plane.snapshot import Change  # noqa: E402


def _upstream(n: int, **extra: object) -> dict:
    return {"id": f"00000000-0000-4000-8000-{n:012d}", "name": f"u{n}", **extra}


def _key(n: int) -> tuple[str, str]:
    return ("upstreams", _upstream(n)["id"])


def _history(store: SnapshotStore, versions: int, size: int = 10) -> None:
    """Publish version 1 with ``size`` upstreams, then one changed upstream per version."""
    entities = [_upstream(n) for n in range(size)]
    store.set(build_snapshot(1, {"upstreams": entities}), [Change(1, *_key(n)) for n in range(size)],
              since=0)
    for version in range(2, versions + 1):
        n = version % size
        entities[n] = _upstream(n, slots=version)
        store.set(build_snapshot(version, {"upstreams": list(entities)}),
                  [Change(version, *_key(n))], since=version - 1)


def test_a_delta_carries_only_the_entities_changed_since_the_held_version():
    store = SnapshotStore()
    _history(store, 4)
    delta = store.delta(2)
    assert delta is not None
    assert delta.from_version == 2 and delta.snapshot.version == 4
    assert [(r.kind, r.id) for r in delta.upserts] == sorted([_key(3), _key(4)])
    assert delta.removals == ()
    assert delta.from_hash != "" and delta.from_hash != delta.snapshot.hash


def test_a_deleted_entity_travels_as_a_removal():
    store = SnapshotStore()
    _history(store, 2)
    remaining = [_upstream(n) for n in range(10) if n != 5]
    remaining[1] = _upstream(2, slots=2)
    store.set(build_snapshot(3, {"upstreams": remaining}), [Change(3, *_key(5))], since=2)
    delta = store.delta(2)
    assert delta is not None and delta.upserts == () and delta.removals == (_key(5),)


def test_a_new_far_behind_or_unknown_data_plane_gets_no_delta():
    store = SnapshotStore()
    _history(store, 4, size=2)
    assert store.delta(0) is None, "a new DP gets the full snapshot"
    assert store.delta(4) is None, "nothing to send at the current version"
    assert store.delta(9) is None, "a version the store never reached"
    assert store.delta(1) is None, "changed everything since: the full snapshot is no bigger"
    assert store.delta(3, "another-hash") is None, "the DP's version 3 is not this config's"
    assert store.delta(3) is not None


def test_unknown_history_means_full_snapshots_until_new_versions_arrive():
    store = SnapshotStore()
    store.set(build_snapshot(7, {"upstreams": [_upstream(n) for n in range(5)]}))  # since unknown
    assert store.delta(6) is None
    entities = [_upstream(n) for n in range(5)]
    entities[0] = _upstream(0, slots=1)
    store.set(build_snapshot(8, {"upstreams": entities}), [Change(8, *_key(0))], since=7)
    delta = store.delta(7)
    assert delta is not None and [(r.kind, r.id) for r in delta.upserts] == [_key(0)]
    # Changes lost (the stream was trimmed past the last entry read): the log restarts.
    entities[1] = _upstream(1, slots=2)
    store.set(build_snapshot(9, {"upstreams": entities}), [Change(9, *_key(1))], since=None)
    assert store.delta(8) is None and store.delta(7) is None


def test_the_change_log_keeps_only_the_last_history_versions():
    store = SnapshotStore(history=3)
    _history(store, 8, size=20)
    assert store.delta(4) is None
    assert store.delta(5) is not None


def test_data_planes_at_one_version_share_one_delta():
    store = SnapshotStore()
    _history(store, 5)
    assert store.delta(3) is store.delta(3)
