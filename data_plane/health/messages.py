"""Health rows in the cluster protocol's wire form, both ways.

Shared by the cluster client (reports to the control plane, verdicts from it)
and the ``--workers`` link (the node's state to its workers, their transitions
back).
"""

from __future__ import annotations

from collections.abc import Iterable

from data_plane.health.checker import HealthTransition
from proto import cluster_pb2


def address_health(rows: Iterable[HealthTransition]) -> list[cluster_pb2.AddressHealth]:
    """Health rows as ``AddressHealth`` messages."""
    return [
        cluster_pb2.AddressHealth(
            upstream_id=r.upstream_id,
            target_id=r.target_id,
            target=r.target,
            address=r.address,
            state=r.state,
            reason=r.reason,
            time=r.time,
            weight=r.weight,
        )
        for r in rows
    ]


def verdict_rows(
    addresses: Iterable[cluster_pb2.AddressHealth],
) -> list[tuple[str, str, str, str, str]]:
    """``AddressHealth`` messages as ``(upstream_id, target, address, state, reason)``."""
    return [(a.upstream_id, a.target, a.address, a.state, a.reason) for a in addresses]
