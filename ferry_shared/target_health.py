"""Kong's target-health vocabulary, shared by both planes.

The ``healthchecks`` status-list defaults (the control plane fills them in; the data
plane falls back to them for a partial record) and the rule that turns the health of
a target's addresses into the target's health.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ACTIVE_HEALTHY_STATUSES",
    "ACTIVE_UNHEALTHY_STATUSES",
    "DNS_ERROR",
    "HEALTHCHECKS_OFF",
    "HEALTHY",
    "MIXED",
    "PASSIVE_HEALTHY_STATUSES",
    "PASSIVE_UNHEALTHY_STATUSES",
    "UNHEALTHY",
    "target_rule",
]

HEALTHY = "HEALTHY"
UNHEALTHY = "UNHEALTHY"
#: Ferry's cluster-wide state: data planes disagree.
MIXED = "MIXED"
DNS_ERROR = "DNS_ERROR"
HEALTHCHECKS_OFF = "HEALTHCHECKS_OFF"

#: Kong's defaults of ``healthchecks.{active,passive}.{healthy,unhealthy}.http_statuses``.
ACTIVE_HEALTHY_STATUSES: tuple[int, ...] = (200, 302)
ACTIVE_UNHEALTHY_STATUSES: tuple[int, ...] = (429, 404, 500, 501, 502, 503, 504, 505)
PASSIVE_HEALTHY_STATUSES: tuple[int, ...] = (*range(200, 209), 226, *range(300, 309))
PASSIVE_UNHEALTHY_STATUSES: tuple[int, ...] = (429, 500, 503)


def target_rule(address_healths: Sequence[str]) -> str:
    """Kong's target health over its addresses' healths (extended with ``MIXED``):
    HEALTHY if any address is, else MIXED, else UNHEALTHY if any is, else
    HEALTHCHECKS_OFF; no address at all is a DNS_ERROR."""
    if not address_healths:
        return DNS_ERROR
    for state in (HEALTHY, MIXED, UNHEALTHY):
        if state in address_healths:
            return state
    return HEALTHCHECKS_OFF
