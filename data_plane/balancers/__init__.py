"""Load-balancing algorithms, one module each, behind :class:`~.base.Balancer`.

:func:`create_balancer` maps an upstream's ``algorithm`` to its implementation and
refuses names it does not implement, so a config asking for an algorithm this data
plane lacks is NACKed instead of silently balanced another way.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_plane.balancers.base import (
    Address,
    Balancer,
    BalancerHandle,
    BalancerOptions,
    parse_target,
)
from data_plane.balancers.consistent_hashing import ConsistentHashingBalancer
from data_plane.balancers.latency import LatencyBalancer
from data_plane.balancers.least_connections import LeastConnectionsBalancer
from data_plane.balancers.round_robin import RoundRobinBalancer
from data_plane.balancers.sticky_sessions import StickySessionsBalancer

__all__ = [
    "ALGORITHMS",
    "Address",
    "Balancer",
    "BalancerHandle",
    "BalancerOptions",
    "KNOWN_ALGORITHMS",
    "create_balancer",
    "parse_target",
]

#: Implemented algorithms by Kong name.
ALGORITHMS: dict[str, type[Balancer]] = {
    cls.algorithm: cls
    for cls in (
        RoundRobinBalancer,
        ConsistentHashingBalancer,
        LeastConnectionsBalancer,
        LatencyBalancer,
        StickySessionsBalancer,
    )
}

#: Every algorithm Kong's schema accepts.
KNOWN_ALGORITHMS: frozenset[str] = frozenset(
    {"round-robin", "consistent-hashing", "least-connections", "latency", "sticky-sessions"}
)


def create_balancer(
    algorithm: str,
    addresses: Iterable[Address],
    options: BalancerOptions | None = None,
    *,
    previous: Balancer | None = None,
) -> Balancer:
    """Build the balancer for ``algorithm`` over ``addresses`` — the single entry point.

    ``options`` defaults to :class:`BalancerOptions` ``()`` (10000 slots, no slow
    start). ``previous`` is the balancer being replaced, if any (a new config version
    changed this upstream's targets or options): health marks, slow-start ramps and,
    for the same algorithm, statistics of the addresses that stay are carried over;
    ``previous`` itself is left untouched. Raises ``ValueError`` for an unknown
    algorithm, for a known one this data plane does not implement (never falls back
    to round-robin), and for options the algorithm cannot use.
    """
    cls = ALGORITHMS.get(algorithm)
    if cls is None:
        if algorithm in KNOWN_ALGORITHMS:
            raise ValueError(f"unsupported balancer algorithm {algorithm!r} (not implemented)")
        raise ValueError(f"unknown balancer algorithm {algorithm!r}")
    return cls(addresses, options, previous=previous)
