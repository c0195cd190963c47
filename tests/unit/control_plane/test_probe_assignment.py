"""Health-check sharding's pure parts: keys, rendezvous assignment, relayed reasons."""

from __future__ import annotations

import hashlib
from typing import Any

from control_plane.health import AddressReport
from control_plane.probe_assignment import (
    AssignmentUpdate,
    ProbeStream,
    VerdictUpdate,
    assign,
    probe_keys,
    relayed_reason,
    rendezvous,
    verdicts_from_entry,
)
from control_plane.snapshot import build_snapshot

U1 = "11111111-1111-4111-8111-111111111111"
U2 = "22222222-2222-4222-8222-222222222222"
U3 = "33333333-3333-4333-8333-333333333333"
NODES = [f"node-{i}" for i in range(6)]
KEYS = [f"{U1}|10.0.{i // 250}.{i % 250}:80" for i in range(600)]


def _upstream(uid: str, name: str, healthchecks: dict[str, Any]) -> dict[str, Any]:
    return {"id": uid, "name": name, "healthchecks": healthchecks}


def _target(n: int, uid: str, target: str, weight: int = 100) -> dict[str, Any]:
    return {"id": f"{n:08d}-0000-4000-8000-000000000000", "target": target, "weight": weight,
            "upstream": {"id": uid}}


def test_only_weighted_targets_of_upstreams_with_active_checks_are_keys() -> None:
    snapshot = build_snapshot(3, {
        "upstreams": [
            _upstream(U1, "active", {"active": {"healthy": {"interval": 5}, "unhealthy": {"interval": 0}}}),
            _upstream(U2, "passive", {"active": {"healthy": {"interval": 0}},
                                      "passive": {"unhealthy": {"http_failures": 3}}}),
            _upstream(U3, "unhealthy-only", {"active": {"unhealthy": {"interval": 2}}}),
        ],
        "targets": [
            _target(1, U1, "10.0.0.1:80"),
            _target(2, U1, "API.Internal:8080"),
            _target(3, U1, "10.0.0.9:80", weight=0),
            _target(4, U2, "10.0.0.2:80"),
            _target(5, U3, "[0000:0000:0000:0000:0000:0000:0000:0001]:80"),
        ],
    })
    assert probe_keys(snapshot) == tuple(sorted([
        f"{U1}|10.0.0.1:80",
        f"{U1}|api.internal:8080",  # as the DP spells it
        f"{U3}|[0000:0000:0000:0000:0000:0000:0000:0001]:80",
    ]))
    assert probe_keys(None) == ()


def test_rendezvous_picks_the_highest_hashes_whatever_the_order() -> None:
    key = KEYS[0]
    expected = sorted(NODES, key=lambda n: hashlib.sha256(f"{n}|{key}".encode()).digest(), reverse=True)
    assert rendezvous(key, NODES, 2) == tuple(expected[:2])
    assert rendezvous(key, reversed(NODES), 2) == tuple(expected[:2])
    assert rendezvous(key, NODES[:1], 3) == (NODES[0],)
    assert rendezvous(key, [], 1) == ()


def test_each_key_goes_to_exactly_k_nodes_and_load_spreads() -> None:
    for replicas in (1, 2, 3):
        assignment = assign(KEYS, NODES, replicas)
        assert all(len(set(assignment.probers[key])) == replicas for key in KEYS)
        assert set().union(*assignment.targets.values()) == set(KEYS)
        assert sum(len(keys) for keys in assignment.targets.values()) == replicas * len(KEYS)
        # Rendezvous hashing spreads load: no node gets more than twice its share.
        share = replicas * len(KEYS) / len(NODES)
        assert all(share / 2 < len(keys) < share * 2 for keys in assignment.targets.values())
    everyone = assign(KEYS, NODES[:2], 3)
    assert all(everyone.targets_of(node) == frozenset(KEYS) for node in NODES[:2])


def test_a_node_leaving_moves_only_its_own_keys_and_a_node_joining_takes_only_keys() -> None:
    for replicas in (1, 2):
        before = assign(KEYS, NODES, replicas)
        after = assign(KEYS, [n for n in NODES if n != "node-3"], replicas)
        for node in NODES:
            if node == "node-3":
                continue
            gained = after.targets_of(node) - before.targets_of(node)
            assert before.targets_of(node) <= after.targets_of(node)
            assert gained <= before.targets_of("node-3")
        # And back: node-3 joining takes keys from the others and moves nothing else.
        for node in NODES:
            if node != "node-3":
                lost = after.targets_of(node) - before.targets_of(node)
                assert before.targets_of(node) <= after.targets_of(node)
                assert lost <= before.targets_of("node-3")


def test_relayed_reasons_name_the_prober() -> None:
    assert relayed_reason("active: 2 http_failures (last status 500)", "UNHEALTHY", "dp2") == (
        "active (dp2): 2 http_failures (last status 500)"
    )
    assert relayed_reason("passive: 3 timeouts", "UNHEALTHY", "dp2") == "passive (dp2): 3 timeouts"
    assert relayed_reason("manual", "HEALTHY", "dp2") == "manual (dp2)"
    assert relayed_reason("", "HEALTHY", "dp2") == "active (dp2): healthy"
    assert relayed_reason("active (dp1): 2 successes", "HEALTHY", "dp2") == "active (dp1): 2 successes"


def test_a_verdicts_entry_decodes_and_garbage_does_not() -> None:
    entry = AddressReport(U1, "t", "10.0.0.1:80", "10.0.0.1:80", "UNHEALTHY", "active: 1 timeouts", 5.0, 100)
    fields = {
        b"origin": b"node-1", b"hostname": b"dp1", b"control_plane": b"cp",
        b"entries": (
            b'[{"upstream_id":"%s","target_id":"t","target":"10.0.0.1:80","address":"10.0.0.1:80",'
            b'"state":"UNHEALTHY","reason":"active: 1 timeouts","time":5.0,"weight":100},'
            b'{"upstream_id":"%s","target":"x:1","state":"BOGUS"}]' % (U1.encode(), U1.encode())
        ),
    }
    batch = verdicts_from_entry(fields)
    assert batch is not None
    assert (batch.origin, batch.hostname, batch.entries) == ("node-1", "dp1", (entry,))
    assert verdicts_from_entry({"origin": "x"}) is None
    assert verdicts_from_entry({"origin": "x", "entries": "not json"}) is None


def _entry(target: str) -> AddressReport:
    return AddressReport(U1, "t", target, target, "UNHEALTHY", "active (dp1): 1 timeouts", 1.0, 100)


async def test_a_stream_sends_the_newest_assignment_in_place_and_bounds_its_verdicts() -> None:
    stream = ProbeStream(None, "node-1", "dp1", maxsize=2)  # type: ignore[arg-type]
    first, second = AssignmentUpdate(("a",), 1), AssignmentUpdate(("b",), 1)
    stream._offer_assignment(first)
    stream._offer_verdicts([_entry("10.0.0.1:80")])
    stream._offer_assignment(second)
    # The hand-over queued after the first assignment still follows one.
    assert await stream.get() == second
    assert await stream.get() == VerdictUpdate((_entry("10.0.0.1:80"),))

    for i in range(3):
        stream._offer_verdicts([_entry(f"10.0.0.{i}:80")])
    assert stream.dropped == 1
    assert await stream.get() == VerdictUpdate((_entry("10.0.0.1:80"),))
    assert await stream.get() == VerdictUpdate((_entry("10.0.0.2:80"),))
