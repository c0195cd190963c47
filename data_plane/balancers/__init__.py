"""Load-balancing algorithms, one module each, behind :class:`~.base.Balancer`.

:func:`create_balancer` maps an upstream's ``algorithm`` to its implementation and
refuses names it does not implement, so a config asking for an algorithm this data
plane lacks is NACKed instead of silently balanced another way.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_plane.balancers.base import Address, Balancer, BalancerHandle, parse_target
from data_plane.balancers.round_robin import RoundRobinBalancer

__all__ = [
    "ALGORITHMS",
    "Address",
    "Balancer",
    "BalancerHandle",
    "KNOWN_ALGORITHMS",
    "create_balancer",
    "parse_target",
]

#: Implemented algorithms by Kong name.
ALGORITHMS: dict[str, type[Balancer]] = {
    RoundRobinBalancer.algorithm: RoundRobinBalancer,
}

#: Every algorithm Kong's schema accepts (some not implemented here yet).
KNOWN_ALGORITHMS: frozenset[str] = frozenset(
    {"round-robin", "consistent-hashing", "least-connections", "latency"}
)


def create_balancer(algorithm: str, addresses: Iterable[Address]) -> Balancer:
    """Build the balancer for ``algorithm`` over ``addresses``.

    Raises ``ValueError`` for an unknown algorithm and for a known one this data plane
    does not implement yet (never falls back to round-robin).
    """
    cls = ALGORITHMS.get(algorithm)
    if cls is None:
        if algorithm in KNOWN_ALGORITHMS:
            raise ValueError(f"unsupported balancer algorithm {algorithm!r} (not implemented)")
        raise ValueError(f"unknown balancer algorithm {algorithm!r}")
    return cls(addresses)
