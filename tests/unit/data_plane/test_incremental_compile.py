"""Deltas compile only what they touch (issue 14 item 3): the untouched upstreams,
services, routes and health checkers stay the very same objects, the result is the
config a whole compile of the merged snapshot gives, and a delta whose result does
not match the control plane's hash is still refused with the old config serving."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_plane import held_config
from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import ConfigCache
from data_plane.config_installer import ConfigInstaller, merge_delta
from data_plane.held_config import HeldConfig
from data_plane.incremental_compile import compile_all, compile_change
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigError, ConfigHolder, RuntimeConfig, compile_config
from ferry_shared.snapshot_format import KINDS, canonical_json, config_hash
from proto import cluster_pb2

Entity = dict[str, Any]
Key = tuple[str, str]


def shop(upstreams: int = 3, targets: int = 3) -> dict[Key, Entity]:
    """``upstreams`` upstreams with ``targets`` targets, a service and a route each."""
    out: dict[Key, Entity] = {}
    for u in range(upstreams):
        uid = f"u{u}"
        out[("upstreams", uid)] = {"id": uid, "name": f"up{u}"}
        for t in range(targets):
            tid = f"t{u}-{t}"
            out[("targets", tid)] = {
                "id": tid, "target": f"10.0.{u}.{t + 1}:80", "weight": 100, "upstream": {"id": uid},
            }
        out[("services", f"s{u}")] = {"id": f"s{u}", "name": f"svc{u}", "host": f"up{u}"}
        out[("routes", f"r{u}")] = {
            "id": f"r{u}", "paths": [f"/p{u}"], "service": {"id": f"s{u}"}, "created_at": u,
        }
    return out


def resources(entities: Mapping[Key, Entity]) -> list[tuple[str, str, bytes]]:
    return [(kind, eid, canonical_json(e)) for (kind, eid), e in sorted(entities.items())]


def snapshot(version: int, entities: Mapping[Key, Entity]) -> cluster_pb2.Snapshot:
    listed = resources(entities)
    return cluster_pb2.Snapshot(
        version=version,
        hash=config_hash(listed),
        resources=[cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in listed],
    )


def delta(
    base: cluster_pb2.Snapshot, version: int, after: Mapping[Key, Entity],
    upserts: Mapping[Key, Entity], removals: list[Key], *, digest: str | None = None,
) -> cluster_pb2.Delta:
    return cluster_pb2.Delta(
        from_version=base.version, from_hash=base.hash, version=version,
        hash=config_hash(resources(after)) if digest is None else digest,
        upserts=[cluster_pb2.Resource(kind=k, id=i, body=canonical_json(e)) for (k, i), e in upserts.items()],
        removals=[cluster_pb2.ResourceKey(kind=k, id=i) for k, i in removals],
    )


def by_kind(entities: Mapping[Key, Entity]) -> dict[str, dict[str, Entity]]:
    out: dict[str, dict[str, Entity]] = {kind: {} for kind in KINDS}
    for (kind, eid), entity in sorted(entities.items()):
        out[kind][eid] = entity
    return out


def describe(config: RuntimeConfig) -> dict[str, Any]:
    """Everything a config serves with, as comparable values (no live objects)."""
    return {
        "upstreams": [
            (
                u.id, u.name, u.algorithm, u.host_header, u.host_name, u.slots, u.slow_start,
                u.use_srv_name, u.hash_spec, u.health_settings,
                u.retry_budget.percent if u.retry_budget else None,
                tuple((a.key, a.weight) for a in u.targets), tuple(u.target_ids.items()),
                u.target_entities, type(u.balancer).__name__,
                tuple((a.key, a.weight) for a in u.balancer.addresses),
            )
            for u in config.upstreams.values()
        ],
        "services": [
            (
                s.id, s.name, s.protocol, s.host, s.port, s.path, s.retries, s.connect_timeout,
                s.write_timeout, s.read_timeout, s.address, s.host_header, s.upstream_id,
                s.enabled, s.upstream.name if s.upstream else None,
                s.balancer is (s.upstream.balancer if s.upstream else None),
            )
            for s in config.services.values()
        ],
        "router": [
            (
                c.route.id, c.source_path, c.route.paths, c.route.hosts, c.route.methods,
                c.route.regex_priority, c.route.service.id if c.route.service else None,
                c.route.service is (config.services.get(c.route.service.id) if c.route.service else None),
            )
            for c in config.router._candidates
        ],
        "uses_headers": config.router.uses_headers,
    }


# ------------------------------------------------------------------ what is reused


async def test_a_one_target_delta_recompiles_only_its_upstream_and_what_uses_it(tmp_path: Path) -> None:
    holder = ConfigHolder()
    installer = ConfigInstaller(holder, ConfigCache(tmp_path))
    before = shop()
    first = snapshot(1, before)
    await installer.install_snapshot(first)
    old = holder.current
    assert old is not None
    after = {**before, ("targets", "t0-new"): {
        "id": "t0-new", "target": "10.0.0.99:80", "weight": 100, "upstream": {"id": "u0"}}}
    await installer.install_delta(delta(first, 2, after, {("targets", "t0-new"): after[("targets", "t0-new")]}, []))
    new = holder.current
    assert new is not None and new.version == 2

    for uid in ("u1", "u2"):  # untouched: the very same compiled objects and checkers
        assert new.upstreams[uid] is old.upstreams[uid]
        assert new.upstreams[uid].health is old.upstreams[uid].health is not None
    for sid in ("s1", "s2"):
        assert new.services[sid] is old.services[sid]
    old_specs = {c.route.id: c for c in old.router._candidates}
    for c in new.router._candidates:
        if c.route.id != "r0":
            assert c is old_specs[c.route.id], "an untouched route keeps its compiled candidate"

    # The touched upstream: recompiled, a new balancer seeded from the old one, a new
    # checker; its service and route follow it.
    assert new.upstreams["u0"] is not old.upstreams["u0"]
    assert "10.0.0.99:80" in new.upstreams["u0"].target_ids
    assert new.upstreams["u0"].health is not old.upstreams["u0"].health
    assert new.services["s0"].upstream is new.upstreams["u0"]
    match = new.match(b"GET", None, b"/p0")
    assert match is not None and match.service is new.services["s0"]
    assert describe(new) == describe(compile_config(2, new.hash, by_kind_lists(after)))


async def test_a_delta_that_only_changes_a_route_keeps_every_upstream_and_service(tmp_path: Path) -> None:
    holder = ConfigHolder()
    installer = ConfigInstaller(holder, ConfigCache(tmp_path))
    before = shop()
    first = snapshot(1, before)
    await installer.install_snapshot(first)
    old = holder.current
    assert old is not None
    route = {**before[("routes", "r1")], "paths": ["/moved"]}
    after = {**before, ("routes", "r1"): route}
    await installer.install_delta(delta(first, 2, after, {("routes", "r1"): route}, []))
    new = holder.current
    assert new is not None
    assert dict(new.upstreams) == dict(old.upstreams) and all(
        new.upstreams[k] is old.upstreams[k] for k in old.upstreams)
    assert all(new.services[k] is old.services[k] for k in old.services)
    assert new.match(b"GET", None, b"/moved") is not None
    assert new.match(b"GET", None, b"/p1") is None


async def test_a_delta_that_changes_nothing_compiled_keeps_the_router(tmp_path: Path) -> None:
    holder = ConfigHolder()
    installer = ConfigInstaller(holder, ConfigCache(tmp_path))
    before = shop()
    first = snapshot(1, before)
    await installer.install_snapshot(first)
    old = holder.current
    assert old is not None
    target = {**before[("targets", "t2-0")], "weight": 5}
    after = {**before, ("targets", "t2-0"): target}
    await installer.install_delta(delta(first, 2, after, {("targets", "t2-0"): target}, []))
    new = holder.current
    assert new is not None and new.upstreams["u2"] is not old.upstreams["u2"]
    assert new.upstreams["u0"] is old.upstreams["u0"]
    assert new.services["s0"] is old.services["s0"] and new.services["s2"] is not old.services["s2"]


def by_kind_lists(entities: Mapping[Key, Entity]) -> dict[str, list[Entity]]:
    return {kind: list(of_kind.values()) for kind, of_kind in by_kind(entities).items()}


# ------------------------------------------------------------ refused deltas


async def test_a_delta_whose_result_does_not_match_the_hash_is_nacked_and_the_old_config_serves(
    tmp_path: Path,
) -> None:
    holder = ConfigHolder()
    cache = ConfigCache(tmp_path)
    client = ClusterClient("127.0.0.1:1", holder, cache, NodeIdentity(node_id="n", hostname="h", version="0"),
                           insecure=True)
    call = RecordingCall()
    before = shop()
    first = snapshot(1, before)
    await client._handle_snapshot(call, first)
    served = holder.current
    assert served is not None
    target = {**before[("targets", "t1-0")], "weight": 7}
    after = {**before, ("targets", "t1-0"): target}
    corrupted = delta(first, 2, after, {("targets", "t1-0"): target}, [], digest="0" * 64)
    await client._handle_delta(call, corrupted)
    nack = call.written[-1].nack
    assert call.written[-1].WhichOneof("message") == "nack" and nack.resync and nack.version == 2
    assert "hashes to" in nack.error_detail
    assert holder.current is served, "the old config keeps serving"
    assert served.upstreams["u1"].balancer.addresses[0].weight == 100

    # The held config was not touched: the honest delta still applies.
    await client._handle_delta(call, delta(first, 2, after, {("targets", "t1-0"): target}, []))
    assert call.written[-1].WhichOneof("message") == "ack"
    assert holder.current is not None and holder.current.version == 2
    assert holder.current.upstreams["u0"] is served.upstreams["u0"]
    await client.flush()


async def test_a_delta_the_data_plane_cannot_compile_is_nacked_and_leaves_the_base_intact(
    tmp_path: Path,
) -> None:
    holder = ConfigHolder()
    client = ClusterClient("127.0.0.1:1", holder, ConfigCache(tmp_path),
                           NodeIdentity(node_id="n", hostname="h", version="0"), insecure=True)
    call = RecordingCall()
    before = shop()
    first = snapshot(1, before)
    await client._handle_snapshot(call, first)
    served = holder.current
    # Removing a service its route still uses: the hash matches, the config is invalid.
    after = {k: v for k, v in before.items() if k != ("services", "s1")}
    await client._handle_delta(call, delta(first, 2, after, {}, [("services", "s1")]))
    nack = call.written[-1].nack
    assert call.written[-1].WhichOneof("message") == "nack" and not nack.resync
    with pytest.raises(ConfigError, match="service s1 does not exist") as refused:
        compile_config(2, "h", by_kind_lists(after))
    assert nack.error_detail == str(refused.value), "the message a whole compile gives"
    assert holder.current is served
    route = {**before[("routes", "r0")], "paths": ["/other"]}
    fixed = {**before, ("routes", "r0"): route}
    await client._handle_delta(call, delta(first, 2, fixed, {("routes", "r0"): route}, []))
    assert call.written[-1].WhichOneof("message") == "ack"
    await client.flush()


class RecordingCall:
    def __init__(self) -> None:
        self.written: list[cluster_pb2.DataPlaneMessage] = []

    async def write(self, message: cluster_pb2.DataPlaneMessage) -> None:
        self.written.append(message)


# ------------------------------------------------------------------ the wire side


def test_the_merged_config_serializes_as_protobuf_serializes_the_merged_snapshot() -> None:
    before = shop(2, 2)
    first = snapshot(3, before)
    removed = ("targets", "t0-1")
    added = {"id": "t0-9", "target": "10.9.9.9:80", "upstream": {"id": "u0"}, "note": "é"}
    after = {k: v for k, v in before.items() if k != removed} | {("targets", "t0-9"): added}
    change = delta(first, 4, after, {("targets", "t0-9"): added}, [removed])
    held, verified = HeldConfig.from_snapshot(first)
    assert verified
    merged, changes = held.merge(change)
    assert changes == {removed: None, ("targets", "t0-9"): canonical_json(added)}
    expected = snapshot(4, after)
    assert merged.encoded() == expected.SerializeToString()
    assert merge_delta(first, change) == expected
    assert len(held) == len(before), "the base is not modified"


def test_an_upsert_of_an_unchanged_body_is_no_change() -> None:
    before = shop(1, 1)
    first = snapshot(1, before)
    same = before[("targets", "t0-0")]
    held, _ = HeldConfig.from_snapshot(first)
    merged, changes = held.merge(delta(first, 2, before, {("targets", "t0-0"): same}, []))
    assert changes == {} and merged.hash == first.hash


# ---------------------------------------------------- incremental == whole compile

IDS = {"upstreams": ["u0", "u1", "u2"], "targets": ["t0", "t1", "t2", "t3", "t4"],
       "services": ["s0", "s1", "s2"], "routes": ["r0", "r1", "r2", "r3"]}
#: Upstream names: "Shop" and "shop" differ only by case (a service host "SHOP" then
#: names neither); a change may give two upstreams one name (refused).
NAMES = {"u0": "shop", "u1": "Shop", "u2": "cart"}


def entity(kind: str, eid: str, base: Mapping[Key, Entity], *, valid: bool) -> st.SearchStrategy[Entity]:
    """An entity of ``kind``: one a whole compile accepts with ``base``'s others when
    ``valid``, else mostly such, sometimes not (a bad value or a dangling reference)."""
    def pick(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
        return st.sampled_from(good) if valid else st.sampled_from(good * 4 + bad)

    upstreams = [eid for (k, eid) in base if k == "upstreams"] or IDS["upstreams"]
    services = [eid for (k, eid) in base if k == "services"]
    if kind == "upstreams":
        return st.builds(
            lambda name, algorithm, slots, host: {
                "id": eid, "name": name, "algorithm": algorithm, "slots": slots,
                **({"host_header": host} if host else {})},
            pick([NAMES[eid]], ["cart", "shop", "pay"]),
            pick(["round-robin", "least-connections", "consistent-hashing"], ["bogus"]),
            pick([100, 200], [5]), st.sampled_from([None, "api.example.com"]),
        )
    if kind == "targets":
        index = IDS["targets"].index(eid)
        return st.builds(
            lambda upstream, ip, weight: {"id": eid, "target": f"10.0.0.{ip}:80", "weight": weight,
                                          "upstream": {"id": upstream}},
            pick(upstreams, ["u9"]), pick([index + 1], [1, 2]), st.sampled_from([0, 10, 100]),
        )
    if kind == "services":
        return st.builds(
            lambda host, path, retries: {"id": eid, "host": host, "port": 80, "retries": retries,
                                         **({"path": path} if path else {})},
            st.sampled_from(["shop", "Shop", "SHOP", "cart", "pay", "example.com"]),
            pick([None, "/api"], ["bad"]), st.sampled_from([0, 5]),
        )
    return st.builds(
        lambda service, paths, created: {"id": eid, "paths": paths, "created_at": created,
                                         **({"service": {"id": service}} if service else {})},
        pick([None, *services], ["s9"]),
        pick([["/a"], ["/a", "/b"], ["~/r(?P<x>\\d+)"]], [["~/bad("], []]),
        st.integers(0, 2),
    )


@st.composite
def configs(draw: st.DrawFn) -> dict[Key, Entity]:
    """A config a whole compile accepts (kinds drawn in dependency order)."""
    out: dict[Key, Entity] = {}
    for kind, ids in IDS.items():
        for eid in ids:
            if kind == "targets" and not any(k == "upstreams" for k, _ in out):
                break
            if draw(st.integers(0, 3)) > 0:
                out[(kind, eid)] = draw(entity(kind, eid, out, valid=True))
    return out


@st.composite
def changes(draw: st.DrawFn, base: dict[Key, Entity]) -> dict[Key, Entity | None]:
    keys = [(kind, eid) for kind, ids in IDS.items() for eid in ids]
    picked = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=4, unique=True))
    return {
        key: None if key in base and draw(st.integers(0, 3)) == 0
        else draw(entity(*key, base, valid=False))
        for key in picked
    }


def whole(version: int, entities: Mapping[Key, Entity], previous: RuntimeConfig | None) -> Any:
    try:
        return describe(compile_config(version, f"h{version}", by_kind_lists(entities), previous))
    except ConfigError as exc:
        return ("refused", str(exc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_an_incremental_compile_equals_a_whole_compile_of_the_merged_config(data: st.DataObject) -> None:
    base = data.draw(configs())
    state = compile_all(1, "h1", by_kind(base), None)
    steps = data.draw(st.integers(1, 3))
    current = base
    for version in range(2, 2 + steps):
        change = data.draw(changes(current))
        after = {k: v for k, v in current.items() if k not in change} | {
            k: v for k, v in change.items() if v is not None
        }
        expected = whole(version, after, state.config)
        try:
            got: Any = compile_change(state, version, f"h{version}", change)
        except ConfigError as exc:
            assert expected == ("refused", str(exc)), "refused with the whole compile's message"
            continue  # the data plane keeps the old config and its state
        assert describe(got.config) == expected
        # Untouched upstreams keep their compiled object.
        touched_upstreams = {eid for (kind, eid) in change if kind == "upstreams"} | {
            e["upstream"]["id"] for (kind, eid), e in {**current, **{
                k: v for k, v in change.items() if v is not None}}.items()
            if kind == "targets" and (kind, eid) in change
        } | {current[(kind, eid)]["upstream"]["id"] for (kind, eid) in change
             if kind == "targets" and (kind, eid) in current}
        for uid, upstream in got.config.upstreams.items():
            if uid not in touched_upstreams and uid in state.config.upstreams:
                assert upstream is state.config.upstreams[uid]
        state, current = got, after


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 60), max_size=50, unique=True),
    st.lists(st.tuples(st.integers(0, 60), st.booleans(), st.binary(max_size=8)), min_size=1, max_size=8),
)
def test_merges_check_the_hash_config_hash_defines(initial: list[int], edits: list[Any]) -> None:
    """Resuming sha256 from a kept state gives the hash of the whole merged config
    (with small blocks, so that a few records span many of them)."""
    with patch.object(held_config, "HASH_BLOCK", 4):
        check_merge(initial, edits)


def check_merge(initial: list[int], edits: list[Any]) -> None:
    held_entities = {("targets", f"{n:04d}"): b"x%d" % n for n in initial}
    listed = sorted((k, i, b) for (k, i), b in held_entities.items())
    first = cluster_pb2.Snapshot(version=1, hash=config_hash(listed), resources=[
        cluster_pb2.Resource(kind=k, id=i, body=b) for k, i, b in listed])
    held, verified = HeldConfig.from_snapshot(first)
    assert verified
    after = dict(held_entities)
    upserts, removals = {}, []
    for n, remove, body in edits:
        key = ("targets", f"{n:04d}")
        upserts.pop(key, None)
        if remove:
            removals.append(key)
            after.pop(key, None)
        else:
            upserts[key] = body
    after.update(upserts)
    expected = config_hash(sorted((k, i, b) for (k, i), b in after.items()))
    change = cluster_pb2.Delta(
        from_version=1, from_hash=first.hash, version=2, hash=expected,
        upserts=[cluster_pb2.Resource(kind=k, id=i, body=b) for (k, i), b in upserts.items()],
        removals=[cluster_pb2.ResourceKey(kind=k, id=i) for k, i in removals],
    )
    merged, _ = held.merge(change)
    assert merged.hash == expected
    assert merged.encoded() == cluster_pb2.Snapshot(version=2, hash=expected, resources=[
        cluster_pb2.Resource(kind=k, id=i, body=b) for (k, i), b in sorted(after.items())
    ]).SerializeToString()


async def test_a_delta_compiles_against_what_serves_when_something_else_installed_it(
    tmp_path: Path,
) -> None:
    holder = ConfigHolder()
    installer = ConfigInstaller(holder, ConfigCache(tmp_path))
    before = shop()
    first = snapshot(1, before)
    await installer.install_snapshot(first)
    elsewhere = compile_config(1, first.hash, by_kind_lists(before))
    holder.current = elsewhere  # not through the installer
    route = {**before[("routes", "r1")], "paths": ["/moved"]}
    after = {**before, ("routes", "r1"): route}
    await installer.install_delta(delta(first, 2, after, {("routes", "r1"): route}, []))
    new = holder.current
    assert new is not None and new.version == 2
    assert describe(new) == describe(compile_config(2, new.hash, by_kind_lists(after)))
    assert new.upstreams["u0"].balancer is elsewhere.upstreams["u0"].balancer, (
        "balancers carry on from the config that served")
    await installer.flush()
