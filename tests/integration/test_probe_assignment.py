"""Health-check sharding on the control plane: real Redis, real CPs, real gRPC, real Admin API.

The data planes are real gRPC clients speaking the DP side of ``Cluster.Connect``
by hand (``tests/support/fake_data_planes.py``), so each test sees exactly which
``ProbeAssignment`` and ``HealthVerdicts`` every DP is sent.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from control_plane.probe_assignment import Assignment, assign
from control_plane.server import ControlPlane
from proto import cluster_pb2
from tests.support.admin import AdminClient
from tests.support.control_planes import ControlPlanes
from tests.support.fake_data_planes import CHECKED, FakeDataPlane, health
from tests.support.polling import wait_for

PASSIVE_ONLY = {"healthchecks": {"passive": {"unhealthy": {"http_failures": 3}}}}
ACTIVE_FAILURE = "active: 2 http_failures (last status 500)"


class ShardedDataPlane(FakeDataPlane):
    """A fake DP that keeps what the CP sent it after the first snapshot."""

    def __init__(self, cp: ControlPlane, hostname: str, node_id: str | None = None) -> None:
        super().__init__(cp, hostname)
        if node_id is not None:
            self.node_id = node_id
        self.assignments: list[cluster_pb2.ProbeAssignment] = []
        self.verdicts: list[cluster_pb2.AddressHealth] = []
        self.pongs = 0

    def drain(self) -> None:
        """Take every message received so far."""
        while not self.inbox.empty():
            message = self.inbox.get_nowait()
            kind = message.WhichOneof("message")
            if kind == "probe_assignment":
                self.assignments.append(message.probe_assignment)
            elif kind == "health_verdicts":
                self.verdicts.extend(message.health_verdicts.addresses)
            elif kind == "pong":
                self.pongs += 1

    @property
    def assigned(self) -> frozenset[str] | None:
        """The keys of the latest assignment (None before the first)."""
        self.drain()
        return frozenset(self.assignments[-1].targets) if self.assignments else None

    def verdicts_for(self, target: str) -> list[tuple[str, str]]:
        self.drain()
        return [(v.state, v.reason) for v in self.verdicts if v.target == target]

    async def round_trip(self) -> None:
        """Ping and wait for the Pong: everything sent before is processed by the CP."""
        self.drain()
        seen = self.pongs
        await self.ping()

        def answered() -> bool:
            self.drain()
            return self.pongs > seen

        await wait_for(answered, message=f"{self.hostname}'s pong")


DPFactory = Callable[..., Awaitable[ShardedDataPlane]]


@pytest.fixture
def data_plane_kind() -> type[ShardedDataPlane]:
    """``dps`` (tests/support/fake_data_planes.py) opens :class:`ShardedDataPlane`s here:
    ``await dps(cp, hostname)`` or ``await dps(cp, hostname, node_id)``."""
    return ShardedDataPlane


@pytest.fixture
def planes(control_planes: ControlPlanes) -> Callable[[int], Awaitable[ControlPlane]]:
    """``await planes(replicas)``: a control plane probing each target from ``replicas``
    data planes, membership refreshed every 0.1 s; stopped at teardown."""

    async def start(replicas: int) -> ControlPlane:
        return await control_planes.start(
            merge_window=0.0,
            health_report_ttl=60.0,
            health_check_replicas=replicas,
            membership_interval=0.1,
        )

    return start


async def make_upstreams(admin: AdminClient, checked_targets: int = 6) -> tuple[dict[str, Any], set[str]]:
    """``shop`` (active checks, plus a weight-0 target) and ``quiet`` (passive only); ``shop``'s keys."""
    shop = await admin.make("/upstreams", {"name": "shop", **CHECKED})
    for i in range(checked_targets):
        await admin.make("/upstreams/shop/targets", {"target": f"10.0.0.{i + 1}:80"})
    await admin.make("/upstreams/shop/targets", {"target": "10.0.0.99:80", "weight": 0})
    await admin.make("/upstreams", {"name": "quiet", **PASSIVE_ONLY})
    await admin.make("/upstreams/quiet/targets", {"target": "10.0.1.1:80"})
    return shop, {f"{shop['id']}|10.0.0.{i + 1}:80" for i in range(checked_targets)}


def unchanged(target: dict[str, Any]) -> cluster_pb2.AddressHealth:
    """HEALTHY as a DP reports a target no check has changed yet: no reason."""
    entry = health(target, "HEALTHY")
    entry.reason = ""
    return entry


def matches(planes: Iterable[ShardedDataPlane], expected: Assignment) -> Callable[[], bool]:
    """A ``wait_for`` predicate: every DP's latest assignment is the expected one."""
    planes = list(planes)

    def check() -> bool:
        return all(dp.assigned == expected.targets_of(dp.node_id) for dp in planes)

    return check


def expected_for(planes: Iterable[ShardedDataPlane], keys: set[str], replicas: int) -> Assignment:
    return assign(keys, [dp.node_id for dp in planes], replicas)


@pytest.mark.parametrize("replicas", [1, 2])
async def test_targets_are_assigned_to_k_live_data_planes_and_move_only_when_one_leaves(
    planes: Callable[[int], Awaitable[ControlPlane]], http: aiohttp.ClientSession, dps: DPFactory,
    replicas: int,
) -> None:
    cp = await planes(replicas)
    _, keys = await make_upstreams(AdminClient(http, cp))
    fleet = [await dps(cp, f"dp{i}") for i in range(4)]

    await wait_for(matches(fleet, expected_for(fleet, keys, replicas)), message="the first assignment")
    before = {dp.node_id: dp.assigned or frozenset() for dp in fleet}
    # Exactly K probers per target, all targets covered, nothing else assigned.
    for key in keys:
        assert sum(key in assigned for assigned in before.values()) == replicas
    assert frozenset().union(*before.values()) == keys
    for dp in fleet:
        latest = dp.assignments[-1]
        assert latest.sharded and latest.replicas == replicas

    # The DP with the most targets leaves: only its targets move, to the others.
    gone = max(fleet, key=lambda dp: len(before[dp.node_id]))
    assert before[gone.node_id]
    await gone.close()
    rest = [dp for dp in fleet if dp is not gone]
    await wait_for(matches(rest, expected_for(rest, keys, replicas)), message="the re-assignment")
    after = {dp.node_id: dp.assigned or frozenset() for dp in rest}
    for key in keys:
        assert sum(key in assigned for assigned in after.values()) == replicas
    for dp in rest:
        assert before[dp.node_id] <= after[dp.node_id]
        assert after[dp.node_id] - before[dp.node_id] <= before[gone.node_id]

    if replicas == 2:
        # K ≥ live DPs: every DP probes every target.
        await rest[0].close()
        await wait_for(lambda: all(dp.assigned == keys for dp in rest[1:]), message="everyone probing")


async def test_data_planes_on_different_control_planes_get_one_consistent_assignment(
    planes: Callable[[int], Awaitable[ControlPlane]], http: aiohttp.ClientSession, dps: DPFactory,
) -> None:
    first, second = await planes(1), await planes(1)
    _, keys = await make_upstreams(AdminClient(http, first), checked_targets=8)
    fleet = [await dps(first, "dp0"), await dps(first, "dp1"), await dps(second, "dp2"), await dps(second, "dp3")]
    await wait_for(matches(fleet, expected_for(fleet, keys, 1)), message="one assignment on both CPs")
    assert sorted(k for dp in fleet for k in dp.assigned or ()) == sorted(keys)

    # dp0 leaves the first CP: the second CP's DPs learn it from the live set.
    await fleet[0].close()
    rest = fleet[1:]
    await wait_for(matches(rest, expected_for(rest, keys, 1)), message="the re-assignment on both CPs")

    # A DP joining the second CP takes targets from the first CP's DP too.
    rest.append(await dps(second, "dp4"))
    await wait_for(matches(rest, expected_for(rest, keys, 1)), message="the assignment with dp4")

    # A config change re-assigns: a new target, and an upstream with active checks on.
    admin = AdminClient(http, second)
    target = await admin.make("/upstreams/shop/targets", {"target": "10.0.0.50:80"})
    status, quiet = await admin.call("PATCH", "/upstreams/quiet", CHECKED)
    assert status == 200, quiet
    keys |= {f"{target['upstream']['id']}|10.0.0.50:80", f"{quiet['id']}|10.0.1.1:80"}
    await wait_for(matches(rest, expected_for(rest, keys, 1)), message="the assignment after a config change")


async def test_a_probers_active_verdict_reaches_every_other_data_plane_but_passive_ones_do_not(
    planes: Callable[[int], Awaitable[ControlPlane]], http: aiohttp.ClientSession, dps: DPFactory,
) -> None:
    first, second = await planes(1), await planes(1)
    shop, keys = await make_upstreams(AdminClient(http, first))
    fleet = [await dps(first, "dp0"), await dps(first, "dp1"), await dps(second, "dp2"), await dps(second, "dp3")]
    expected = expected_for(fleet, keys, 1)
    await wait_for(matches(fleet, expected), message="the assignment")
    targets = {t["target"]: t for t in (await AdminClient(http, first).call("GET", "/upstreams/shop/targets"))[1]["data"]}

    # Six targets over four DPs: one DP probes at least two.
    prober = max(fleet, key=lambda dp: len(expected.targets_of(dp.node_id)))
    probed, also_probed = sorted(key.split("|")[1] for key in expected.targets_of(prober.node_id))[:2]
    others = [dp for dp in fleet if dp is not prober]
    bystander = others[0]

    # Not shared: a passive verdict of the prober, and an "active" verdict of a DP
    # that does not probe that target.
    await prober.report(False, health(targets[also_probed], "UNHEALTHY", reason="passive: 3 tcp_failures"))
    await bystander.report(False, health(targets[probed], "UNHEALTHY", reason="active: 1 timeouts"))
    await bystander.round_trip()
    await prober.round_trip()
    # Shared, with the prober named: its own active verdict.
    await prober.report(False, health(targets[probed], "UNHEALTHY", reason=ACTIVE_FAILURE))
    shared = ("UNHEALTHY", f"active ({prober.hostname}): 2 http_failures (last status 500)")
    for dp in others:  # on both control planes
        await wait_for(lambda dp=dp: shared in dp.verdicts_for(probed), message=f"the verdict on {dp.hostname}")

    await prober.round_trip()
    assert prober.verdicts_for(probed) == []
    for dp in fleet:
        assert all("passive" not in reason for _, reason in dp.verdicts_for(also_probed)), dp.hostname
        assert all(bystander.hostname not in reason for _, reason in dp.verdicts_for(probed)), dp.hostname
        assert all(v.upstream_id == shop["id"] for v in dp.verdicts)


async def test_a_data_plane_that_stops_probing_gets_the_probers_current_verdicts(
    planes: Callable[[int], Awaitable[ControlPlane]], http: aiohttp.ClientSession, dps: DPFactory,
    redis_client: aioredis.Redis,
) -> None:
    cp = await planes(1)
    admin = AdminClient(http, cp)
    shop, keys = await make_upstreams(admin)
    targets = {t["target"]: t for t in (await admin.call("GET", "/upstreams/shop/targets"))[1]["data"]}
    # Node ids that split the targets between the two DPs (deterministic hashing).
    a_id, b_id = str(uuid.uuid4()), str(uuid.uuid4())
    while not all(assign(keys, [a_id, b_id], 1).targets_of(n) for n in (a_id, b_id)):
        b_id = str(uuid.uuid4())
    split = assign(keys, [a_id, b_id], 1)
    kept = sorted(k.split("|")[1] for k in split.targets_of(a_id))
    moved = sorted(k.split("|")[1] for k in split.targets_of(b_id))

    # dp-a alone probes everything, and has found one of the targets it keeps and one it will hand over failing.
    dp_a = await dps(cp, "dp-a", a_id)
    await wait_for(lambda: dp_a.assigned == keys, message="dp-a probing everything")
    await dp_a.report(
        True,
        *(unchanged(targets[t]) for t in targets if t not in (kept[0], moved[0])),
        health(targets[kept[0]], "UNHEALTHY", reason=ACTIVE_FAILURE),
        health(targets[moved[0]], "UNHEALTHY", reason=ACTIVE_FAILURE),
    )
    await dp_a.round_trip()

    # dp-b joins: it is handed dp-a's current verdicts for the targets dp-a keeps.
    dp_b = await dps(cp, "dp-b", b_id)
    await wait_for(matches([dp_a, dp_b], split), message="the split")
    failing = ("UNHEALTHY", "active (dp-a): 2 http_failures (last status 500)")
    await wait_for(lambda: dp_b.verdicts_for(kept[0]) == [failing], message="dp-b told of dp-a's failure")
    for target in kept[1:]:
        await wait_for(lambda t=target: dp_b.verdicts_for(t) == [("HEALTHY", "active (dp-a): healthy")],
                       message="dp-b told what dp-a sees")
    assert all(dp_b.verdicts_for(t) == [] for t in moved)

    # dp-a no longer probes the moved targets; once dp-b reports them, dp-a takes dp-b's view
    # (dp-a's own failure of moved[0] is stale: dp-b's probes have not found it failing).
    assert all(dp_a.verdicts_for(t) == [] for t in moved)
    await dp_b.report(True, *(unchanged(targets[t]) for t in moved))
    for target in moved:
        await wait_for(lambda t=target: dp_a.verdicts_for(t) == [("HEALTHY", "active (dp-b): healthy")],
                       message="dp-a told what dp-b sees")
    assert all(dp_a.verdicts_for(t) == [] for t in kept)
    assert await redis_client.zscore("ferry:health:live", a_id) is not None


async def test_without_replicas_nothing_is_assigned_or_shared(
    planes: Callable[[int], Awaitable[ControlPlane]], http: aiohttp.ClientSession, dps: DPFactory,
    redis_client: aioredis.Redis,
) -> None:
    cp = await planes(0)
    admin = AdminClient(http, cp)
    await make_upstreams(admin)
    target = (await admin.call("GET", "/upstreams/shop/targets/10.0.0.1:80"))[1]
    dp1, dp2 = await dps(cp, "dp1"), await dps(cp, "dp2")
    await dp1.report(False, health(target, "UNHEALTHY", reason=ACTIVE_FAILURE))
    await dp1.round_trip()
    await dp2.round_trip()
    assert dp1.assignments == dp2.assignments == []
    assert dp1.verdicts == dp2.verdicts == []
    assert not await redis_client.exists("ferry:health:live", "ferry:health:verdicts")


async def test_the_live_set_follows_streams_and_ignores_expired_members(
    planes: Callable[[int], Awaitable[ControlPlane]], http: aiohttp.ClientSession, dps: DPFactory,
    redis_client: aioredis.Redis,
) -> None:
    cp = await planes(1)
    _, keys = await make_upstreams(AdminClient(http, cp))
    # A DP another CP once saw, whose entry has expired: it is pruned, never assigned.
    await redis_client.zadd("ferry:health:live", {"long-gone": 1.0})
    dp1 = await dps(cp, "dp1")
    await wait_for(lambda: dp1.assigned == keys, message="dp1 probing everything")
    assert await redis_client.zrange("ferry:health:live", 0, -1) == [dp1.node_id]
    expiry = await redis_client.zscore("ferry:health:live", dp1.node_id)
    assert expiry is not None

    # A ping moves the expiry on; closing the stream removes the DP.
    await dp1.round_trip()
    await wait_for(
        lambda: _later(redis_client, dp1.node_id, expiry), message="the expiry to move on"
    )
    await dp1.close()
    await wait_for(lambda: _absent(redis_client, dp1.node_id), message="dp1 to leave the live set")


async def _later(redis_client: aioredis.Redis, node_id: str, expiry: float) -> bool:
    score = await redis_client.zscore("ferry:health:live", node_id)
    return score is not None and score > expiry


async def _absent(redis_client: aioredis.Redis, node_id: str) -> bool:
    return await redis_client.zscore("ferry:health:live", node_id) is None
