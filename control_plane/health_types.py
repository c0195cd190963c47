"""The health values the control plane passes around: plain data, no Redis, no gRPC.

What a data plane reports about an address (:class:`AddressReport`), what one live DP
reported (:class:`DataPlaneReport`), an operator's override (:class:`ManualOverride`)
and, with health-check sharding, what one DP stream is handed (:data:`ProbeUpdate`).
:mod:`control_plane.health` and :mod:`control_plane.probe_assignment` keep them in
Redis; :mod:`control_plane.cluster_server` converts them to and from wire messages;
:mod:`control_plane.health_view` shows them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

HealthState = Literal["HEALTHY", "UNHEALTHY", "DNS_ERROR", "HEALTHCHECKS_OFF"]

#: The states a data plane may report for an address (``proto/cluster.proto``).
REPORTED_STATES: frozenset[str] = frozenset({"HEALTHY", "UNHEALTHY", "DNS_ERROR", "HEALTHCHECKS_OFF"})


@dataclass(frozen=True, slots=True)
class AddressReport:
    """One address's health as one DP reported it (``AddressHealth`` on the wire).

    ``time`` is epoch seconds of the transition; ``weight`` the target's weight
    as that DP holds it. For ``DNS_ERROR`` the address is ``""``: the DP has no
    address for the target at all.
    """

    upstream_id: str
    target_id: str
    target: str
    address: str
    state: str
    reason: str
    time: float
    weight: int

    @classmethod
    def normalised(
        cls,
        *,
        upstream_id: str,
        target_id: str,
        target: str,
        address: str,
        state: str,
        reason: str,
        time: float,
        weight: int,
    ) -> AddressReport | None:
        """A report ready to store, or None when it is unusable (unknown state, no ids)."""
        if state not in REPORTED_STATES or not upstream_id or not target:
            return None
        if state == "DNS_ERROR":
            address = ""
        elif not address:
            return None
        return cls(upstream_id, target_id, target, address, state, reason, time, weight)

    @staticmethod
    def fields_of(raw: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor arguments stored in a JSON object (Redis hash values and
        verdict stream entries). Raises ``KeyError``/``ValueError``/``TypeError`` when
        a required field is missing or malformed."""
        return {
            "upstream_id": str(raw["upstream_id"]),
            "target_id": str(raw.get("target_id") or ""),
            "target": str(raw["target"]),
            "address": str(raw.get("address") or ""),
            "state": str(raw["state"]),
            "reason": str(raw.get("reason") or ""),
            "time": float(raw.get("time") or 0.0),
            "weight": int(raw.get("weight") or 0),
        }

    @property
    def field(self) -> str:
        """The hash field of this report in the DP's hash."""
        return f"{self.upstream_id}|{self.target}|{self.address}"

    @property
    def target_prefix(self) -> str:
        """The prefix every field of this report's target shares."""
        return f"{self.upstream_id}|{self.target}|"


@dataclass(frozen=True, slots=True)
class DataPlaneReport:
    """Everything one live DP reported about one upstream (or about all of them)."""

    node_id: str
    hostname: str
    entries: tuple[AddressReport, ...]
    #: Ids of the upstreams this DP has in panic mode (``healthchecks.panic_threshold``).
    panic_upstreams: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ManualOverride:
    """An operator's ``PUT .../healthy|unhealthy``, as it travels between CPs.

    ``address`` is one ``ip:port`` or ``""`` for every address of ``target``
    (the configured ``host:port``); ``time`` is epoch seconds of the request.
    """

    upstream_id: str
    target: str
    address: str
    healthy: bool
    time: float


# ------------------------------------------------------ health-check sharding


@dataclass(frozen=True, slots=True)
class AssignmentUpdate:
    """``ProbeAssignment`` for one DP: the keys it probes, out of ``replicas`` per key."""

    targets: tuple[str, ...]
    replicas: int


@dataclass(frozen=True, slots=True)
class VerdictUpdate:
    """``HealthVerdicts`` for one DP: states to take as its own (reasons name the prober)."""

    entries: tuple[AddressReport, ...]


ProbeUpdate = AssignmentUpdate | VerdictUpdate
