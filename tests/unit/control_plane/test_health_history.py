"""Health history: the events the report scripts record in a real Redis, and how they are read.

Each test writes through :class:`TargetHealthStore` / :class:`DataPlaneHealthSession`
exactly as the cluster server does, then reads the upstream's events stream back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from control_plane.embedded_redis import EmbeddedRedis
from control_plane.health import TargetHealthStore
from control_plane.health_history import EVENTS_MAXLEN, HealthEvent
from control_plane.health_types import AddressReport

UPSTREAM = "11111111-1111-4111-8111-111111111111"
OTHER_UPSTREAM = "22222222-2222-4222-8222-222222222222"
STATES = ("HEALTHY", "UNHEALTHY", "HEALTHCHECKS_OFF")


def row(
    address: str, state: str, *, target: str = "api.internal:80", reason: str = "",
    time: float = 1.0, upstream: str = UPSTREAM,
) -> AddressReport:
    return AddressReport(upstream, f"t-{target}", target, address, state, reason, time, 100)


async def all_events(store: TargetHealthStore, upstream: str = UPSTREAM) -> list[HealthEvent]:
    events, following = await store.events(upstream, 1000)
    assert following is None
    return events


def moves(events: list[HealthEvent]) -> list[tuple[str, str, str | None, str]]:
    """(node, address, from, to) of each event, in the order read (newest first)."""
    return [(e.node_id, e.report.address, e.previous, e.report.state) for e in events]


async def hold_upstreams(client: aioredis.Redis, prefix: str, *ids: str) -> None:
    """What the entity store holds for existing upstreams (history is kept only for them)."""
    await client.hset(f"{prefix}:entities:upstreams", mapping={i: "{}" for i in ids})


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> TargetHealthStore:
    await hold_upstreams(redis_client, "ferry", UPSTREAM, OTHER_UPSTREAM)
    return TargetHealthStore(redis_client, "ferry")


async def test_a_new_row_comes_from_none_and_a_repeated_state_records_nothing(
    store: TargetHealthStore,
) -> None:
    session = store.session("dp-1", "host-1")
    assert await session.report(True, [row("10.0.0.1:80", "HEALTHY"), row("10.0.0.2:80", "HEALTHY")])
    assert await session.report(False, [row("10.0.0.1:80", "HEALTHY", reason="active: 2 successes")])
    events = await all_events(store)
    assert sorted(moves(events)) == [
        ("dp-1", "10.0.0.1:80", None, "HEALTHY"), ("dp-1", "10.0.0.2:80", None, "HEALTHY"),
    ]
    assert {e.hostname for e in events} == {"host-1"}


async def test_a_transition_records_from_to_reason_time_and_the_data_plane(
    store: TargetHealthStore,
) -> None:
    session = store.session("dp-1", "host-1")
    await session.report(True, [row("10.0.0.1:80", "HEALTHY")])
    reason = "active: 2 http_failures (last status 500)"
    await session.report(False, [row("10.0.0.1:80", "UNHEALTHY", reason=reason, time=1700000000.25)])
    newest = (await all_events(store))[0]
    api = newest.to_api()
    assert api == {
        "id": newest.id,
        "time": 1700000000.25,
        "recorded_at": int(newest.id.split("-")[0]) / 1000,
        "data_plane": {"id": "dp-1", "hostname": "host-1"},
        "target": "api.internal:80",
        "target_id": "t-api.internal:80",
        "address": "10.0.0.1:80",
        "from": "HEALTHY",
        "to": "UNHEALTHY",
        "reason": reason,
        "weight": 100,
    }


async def test_a_full_report_after_a_reconnect_records_only_the_rows_that_changed(
    store: TargetHealthStore,
) -> None:
    first = store.session("dp-1", "host-1")
    await first.report(True, [row("10.0.0.1:80", "HEALTHY"), row("10.0.0.2:80", "HEALTHY"),
                              row("10.0.0.3:80", "UNHEALTHY")])
    before = len(await all_events(store))
    # The DP reconnects (a new stream, maybe through another CP): its full view again.
    again = store.session("dp-1", "host-1")
    await again.report(True, [row("10.0.0.1:80", "HEALTHY"), row("10.0.0.2:80", "UNHEALTHY", time=5.0),
                              row("10.0.0.3:80", "HEALTHY", time=3.0)])
    events = await all_events(store)
    # Newest first; within one full report, the DP's transition times ascending.
    assert moves(events)[: len(events) - before] == [
        ("dp-1", "10.0.0.2:80", "HEALTHY", "UNHEALTHY"),
        ("dp-1", "10.0.0.3:80", "UNHEALTHY", "HEALTHY"),
    ]


async def test_each_data_plane_has_its_own_previous_state(store: TargetHealthStore) -> None:
    dp1, dp2 = store.session("dp-1", "h1"), store.session("dp-2", "h2")
    await dp1.report(True, [row("10.0.0.1:80", "UNHEALTHY")])
    await dp2.report(True, [row("10.0.0.1:80", "HEALTHY")])
    await dp1.report(False, [row("10.0.0.1:80", "HEALTHY")])
    await dp2.report(False, [row("10.0.0.1:80", "HEALTHY")])
    assert moves(await all_events(store)) == [
        ("dp-1", "10.0.0.1:80", "UNHEALTHY", "HEALTHY"),
        ("dp-2", "10.0.0.1:80", None, "HEALTHY"),
        ("dp-1", "10.0.0.1:80", None, "UNHEALTHY"),
    ]


async def test_dns_errors_come_from_the_targets_addresses_and_addresses_from_the_dns_error(
    store: TargetHealthStore,
) -> None:
    session = store.session("dp-1", "h1")
    await session.report(True, [row("10.0.0.1:80", "UNHEALTHY"), row("10.0.0.2:80", "HEALTHY")])
    await session.report(False, [row("", "DNS_ERROR", reason="dns server error")])
    await session.report(False, [row("10.0.0.1:80", "HEALTHY")])
    assert moves(await all_events(store))[:2] == [
        ("dp-1", "10.0.0.1:80", "DNS_ERROR", "HEALTHY"),
        ("dp-1", "", "HEALTHY", "DNS_ERROR"),  # Kong's rule: HEALTHY if any address was
    ]


async def test_vanished_rows_record_nothing_and_upstreams_have_separate_histories(
    store: TargetHealthStore,
) -> None:
    session = store.session("dp-1", "h1")
    await session.report(True, [row("10.0.0.1:80", "HEALTHY"), row("10.0.0.9:80", "HEALTHY", upstream=OTHER_UPSTREAM)])
    await session.report(True, [row("10.0.0.1:80", "HEALTHY")])  # the other upstream's target is gone
    assert moves(await all_events(store)) == [("dp-1", "10.0.0.1:80", None, "HEALTHY")]
    assert moves(await all_events(store, OTHER_UPSTREAM)) == [("dp-1", "10.0.0.9:80", None, "HEALTHY")]


async def test_the_history_keeps_exactly_the_newest_events_up_to_its_bound(
    store: TargetHealthStore, redis_client: aioredis.Redis
) -> None:
    session = store.session("dp-1", "h1")
    extra = 7
    flips = [row("10.0.0.1:80", STATES[i % 2], reason=f"flip {i}") for i in range(EVENTS_MAXLEN + extra)]
    await session.report(False, flips)
    assert await redis_client.xlen(store.events_key(UPSTREAM)) == EVENTS_MAXLEN
    events = await all_events(store)
    assert [e.report.reason for e in events] == [f"flip {i}" for i in reversed(range(extra, EVENTS_MAXLEN + extra))]


async def test_pages_list_every_event_once_newest_first(store: TargetHealthStore) -> None:
    session = store.session("dp-1", "h1")
    for i in range(11):
        await session.report(False, [row("10.0.0.1:80", STATES[i % 2], reason=f"r{i}")])
    expected = [f"r{i}" for i in reversed(range(11))]
    for size in (1, 3, 4, 10, 11, 12):
        seen: list[str] = []
        start: str | None = None
        while True:
            events, start = await store.events(UPSTREAM, size, start)
            assert len(events) == size or start is None
            seen += [e.report.reason for e in events]
            if start is None:
                break
        assert seen == expected, size


async def test_an_unknown_upstream_has_an_empty_history(store: TargetHealthStore) -> None:
    assert await store.events(OTHER_UPSTREAM, 100) == ([], None)


async def test_nothing_is_recorded_for_an_upstream_the_store_does_not_hold(
    store: TargetHealthStore, redis_client: aioredis.Redis
) -> None:
    deleted = "33333333-3333-4333-8333-333333333333"
    session = store.session("dp-1", "h1")
    # A DP whose configuration has not caught up with the delete yet still reports it.
    assert await session.report(True, [row("10.0.0.1:80", "HEALTHY", upstream=deleted), row("10.0.0.2:80", "HEALTHY")])
    assert await session.report(False, [row("10.0.0.1:80", "UNHEALTHY", upstream=deleted)])
    assert await redis_client.exists(store.events_key(deleted)) == 0
    assert moves(await all_events(store)) == [("dp-1", "10.0.0.2:80", None, "HEALTHY")]
    # Its health itself is still stored, as before.
    [report] = await store.reports(deleted)
    assert [(e.address, e.state) for e in report.entries] == [("10.0.0.1:80", "UNHEALTHY")]


# --------------------------------------------------------------- the from/to rule

ADDRESSES = ("10.0.0.1:80", "10.0.0.2:80")
#: One step: which DP, full or partial, and (address, state) rows.
step = st.tuples(
    st.sampled_from(("dp-1", "dp-2")),
    st.booleans(),
    st.lists(st.tuples(st.sampled_from(ADDRESSES), st.sampled_from(STATES)), max_size=3),
)


@pytest.fixture(scope="module")
def property_redis(redis_server: EmbeddedRedis) -> Iterator[str]:
    yield redis_server.url


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, max_size=12))
def test_events_are_exactly_the_state_changes_of_each_data_planes_rows(
    property_redis: str, steps: list[tuple[str, bool, list[tuple[str, str]]]]
) -> None:
    """Against a model: per DP, the rows it holds; a full report replaces them; an
    event for each row whose state differs from the one held (None when not held)."""
    prefix = f"prop-{uuid.uuid4().hex}"  # examples share the session's Redis

    async def run() -> tuple[list[tuple[str, str, str | None, str]], list[tuple[str, str, str | None, str]]]:
        client = aioredis.Redis.from_url(property_redis)
        try:
            await hold_upstreams(client, prefix, UPSTREAM)
            store = TargetHealthStore(client, prefix)
            sessions = {node: store.session(node, node) for node in ("dp-1", "dp-2")}
            model: dict[str, dict[str, str]] = {"dp-1": {}, "dp-2": {}}
            expected: list[tuple[str, str, str | None, str]] = []
            for node, full, rows in steps:
                reports = [row(a, s) for a, s in rows]
                held = model[node]
                if full:
                    reports = list({r.address: r for r in reports}.values())  # one row per address
                    for r in reports:
                        if held.get(r.address) != r.state:
                            expected.append((node, r.address, held.get(r.address), r.state))
                    model[node] = {r.address: r.state for r in reports}
                else:
                    for r in reports:
                        if held.get(r.address) != r.state:
                            expected.append((node, r.address, held.get(r.address), r.state))
                        held[r.address] = r.state
                assert await sessions[node].report(full, reports)
            events, following = await store.events(UPSTREAM, 1000)
            assert following is None
            return moves(events), expected[::-1]
        finally:
            await client.aclose()

    recorded, expected = asyncio.run(run())
    assert recorded == expected
