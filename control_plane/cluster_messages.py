"""The cluster link's wire messages on the control plane: snapshots, deltas, health
overrides and probe assignments encoded as ``ControlPlaneMessage`` (and serialized once,
to be shared by every stream), and the data planes' health reports decoded.

Pure functions over :mod:`proto.cluster_pb2`; the servicer
(:mod:`control_plane.cluster_server`) calls them.
"""

from __future__ import annotations

import logging

from control_plane.health_types import AddressReport, AssignmentUpdate, ManualOverride, ProbeUpdate
from control_plane.snapshot import Delta, Snapshot
from proto import cluster_pb2

log = logging.getLogger("ferry.control_plane.cluster")



def snapshot_message(snapshot: Snapshot) -> cluster_pb2.ControlPlaneMessage:
    """The wire form of ``snapshot``."""
    return cluster_pb2.ControlPlaneMessage(
        snapshot=cluster_pb2.Snapshot(
            version=snapshot.version,
            hash=snapshot.hash,
            resources=[
                cluster_pb2.Resource(kind=r.kind, id=r.id, body=r.body) for r in snapshot.resources
            ],
        )
    )


def snapshot_bytes(snapshot: Snapshot) -> bytes:
    """``snapshot``'s message, serialised once per snapshot and shared by every stream.

    With 10 000 targets it is about 4 MB: serialising it per stream cost each of
    a thousand data planes' first sync several milliseconds of CPU and one more
    copy in memory. Only the bytes are kept.
    """
    cached = snapshot.wire_cache.get("bytes")
    if cached is None:
        cached = snapshot_message(snapshot).SerializeToString()
        snapshot.wire_cache["bytes"] = cached
    return cached


def delta_message(delta: Delta) -> cluster_pb2.ControlPlaneMessage:
    """The wire form of ``delta``."""
    snapshot = delta.snapshot
    return cluster_pb2.ControlPlaneMessage(
        delta=cluster_pb2.Delta(
            from_version=delta.from_version,
            from_hash=delta.from_hash,
            version=snapshot.version,
            hash=snapshot.hash,
            upserts=[cluster_pb2.Resource(kind=r.kind, id=r.id, body=r.body) for r in delta.upserts],
            removals=[cluster_pb2.ResourceKey(kind=k, id=i) for k, i in delta.removals],
        )
    )


def delta_bytes(delta: Delta) -> bytes:
    """``delta``'s message, serialised once and shared by every stream at its base."""
    cached = delta.wire_cache.get("bytes")
    if cached is None:
        cached = delta_message(delta).SerializeToString()
        delta.wire_cache["bytes"] = cached
    return cached


def serialize_response(message: cluster_pb2.ControlPlaneMessage | bytes) -> bytes:
    """The servicer's response serializer: messages already serialised pass as they are."""
    if isinstance(message, bytes):
        return message
    return message.SerializeToString()


def override_message(override: ManualOverride) -> cluster_pb2.ControlPlaneMessage:
    """The wire form of a manual override."""
    return cluster_pb2.ControlPlaneMessage(
        health_override=cluster_pb2.HealthOverride(
            upstream_id=override.upstream_id,
            target=override.target,
            address=override.address,
            healthy=override.healthy,
            time=override.time,
        )
    )


def probe_message(update: ProbeUpdate) -> cluster_pb2.ControlPlaneMessage:
    """The wire form of a probe assignment or of shared verdicts."""
    if isinstance(update, AssignmentUpdate):
        return cluster_pb2.ControlPlaneMessage(
            probe_assignment=cluster_pb2.ProbeAssignment(
                sharded=True, targets=list(update.targets), replicas=update.replicas
            )
        )
    return cluster_pb2.ControlPlaneMessage(
        health_verdicts=cluster_pb2.HealthVerdicts(
            addresses=[
                cluster_pb2.AddressHealth(
                    upstream_id=e.upstream_id,
                    target_id=e.target_id,
                    target=e.target,
                    address=e.address,
                    state=e.state,
                    reason=e.reason,
                    time=e.time,
                    weight=e.weight,
                )
                for e in update.entries
            ]
        )
    )


def address_reports(report: cluster_pb2.HealthReport, node_id: str) -> list[AddressReport]:
    """The usable entries of a ``HealthReport``; unusable ones are logged and skipped."""
    entries: list[AddressReport] = []
    for item in report.addresses:
        entry = AddressReport.normalised(
            upstream_id=item.upstream_id,
            target_id=item.target_id,
            target=item.target,
            address=item.address,
            state=item.state,
            reason=item.reason,
            time=item.time,
            weight=item.weight,
        )
        if entry is None:
            log.warning(
                "data plane %s reported unusable health (upstream %r, target %r, address %r, state %r)",
                node_id, item.upstream_id, item.target, item.address, item.state,
            )
            continue
        entries.append(entry)
    return entries
