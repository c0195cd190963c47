"""What a health checker's balancer hands out: the keys of ``n`` first picks."""

from __future__ import annotations

from data_plane.balancers import BalancerHandle
from data_plane.health.checker import HealthChecker


def picked_keys(c: HealthChecker, n: int = 10) -> set[str]:
    """Keys of the addresses ``n`` fresh requests' first picks went to (none: empty)."""
    out = set()
    for _ in range(n):
        address = c.balancer.pick(BalancerHandle())
        if address is not None:
            out.add(address.key)
    return out
