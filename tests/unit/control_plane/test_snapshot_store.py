import asyncio

from control_plane.snapshot import SnapshotStore, build_snapshot

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
