"""An upstream's ``healthchecks`` record (Kong 3.x), compiled once per config version.

The control plane validates the record against Kong's schema and fills Kong's defaults;
the data plane still checks what it relies on (a config it cannot apply is NACKed) and
treats a missing field as Kong's default, so an older control plane that sends a
partial record still works.

Kong's rules: an ``interval`` of 0 disables that active loop (probing of healthy or of
unhealthy targets); a counter threshold of 0 makes that counter inert. Passive checks
are "on" when any ``passive.unhealthy`` counter is non-zero. Ferry adds
``passive.base_ejection_time`` / ``passive.max_ejection_time`` (Envoy's outlier
ejection times) for its half-open circuit breaker; see ``docs/health-checks.md``;
``passive.outlier_detection`` (compiled by :mod:`data_plane.health.outlier`) and
``max_ejection_percent``.

Active ``type`` ``grpc``/``grpcs`` probe with the gRPC health protocol
(:mod:`data_plane.health.grpc_probe`), asking for ``active.grpc_service_name`` (Ferry's
field; null or absent: ``""``, the server's overall health). As passive types they
mean what ``http`` means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from data_plane.health.outlier import OutlierSettings, compile_outlier_detection
from data_plane.upstream_tls import UpstreamTls
from ferry_shared.target_health import (
    ACTIVE_HEALTHY_STATUSES,
    ACTIVE_UNHEALTHY_STATUSES,
    PASSIVE_HEALTHY_STATUSES,
    PASSIVE_UNHEALTHY_STATUSES,
)

__all__ = [
    "ActiveSettings",
    "HealthSettings",
    "PassiveSettings",
    "GRPC_PROBE_TYPES",
    "compile_health_settings",
]

ProbeType = Literal["tcp", "http", "https", "grpc", "grpcs"]

#: The probe types that speak the gRPC health protocol.
GRPC_PROBE_TYPES = frozenset({"grpc", "grpcs"})

_ACTIVE_HEALTHY = frozenset(ACTIVE_HEALTHY_STATUSES)
_ACTIVE_UNHEALTHY = frozenset(ACTIVE_UNHEALTHY_STATUSES)
_PASSIVE_HEALTHY = frozenset(PASSIVE_HEALTHY_STATUSES)
_PASSIVE_UNHEALTHY = frozenset(PASSIVE_UNHEALTHY_STATUSES)


@dataclass(frozen=True, slots=True)
class ActiveSettings:
    """``healthchecks.active``. Times are seconds."""

    type: ProbeType = "http"
    timeout: float = 1.0
    concurrency: int = 10
    http_path: str = "/"
    https_sni: str | None = None
    https_verify_certificate: bool = True
    #: Extra probe request headers, ``(name, value)`` pairs in order.
    headers: tuple[tuple[str, str], ...] = ()
    #: The ``service`` a ``grpc``/``grpcs`` probe asks about (``""``: the whole server).
    grpc_service_name: str = ""
    healthy_interval: float = 0.0
    healthy_statuses: frozenset[int] = _ACTIVE_HEALTHY
    healthy_successes: int = 0
    unhealthy_interval: float = 0.0
    unhealthy_statuses: frozenset[int] = _ACTIVE_UNHEALTHY
    unhealthy_tcp_failures: int = 0
    unhealthy_timeouts: int = 0
    unhealthy_http_failures: int = 0
    #: ``healthchecks.active.unhealthy.other_statuses``: a status in neither list is an
    #: HTTP failure (else it is ignored, as in Kong).
    unhealthy_other_statuses: bool = False
    #: The TLS identity of ``https`` and ``grpcs`` probes (the upstream's ``client_certificate``, the
    #: config's CA certificates): set by the upstream's compile, not from this record.
    #: Compared by identity: one object per distinct material.
    tls: UpstreamTls | None = None

    @property
    def enabled(self) -> bool:
        return self.healthy_interval > 0 or self.unhealthy_interval > 0


@dataclass(frozen=True, slots=True)
class PassiveSettings:
    """``healthchecks.passive`` plus Ferry's ejection times (seconds; 0 = no half-open)."""

    type: ProbeType = "http"
    healthy_statuses: frozenset[int] = _PASSIVE_HEALTHY
    healthy_successes: int = 0
    unhealthy_statuses: frozenset[int] = _PASSIVE_UNHEALTHY
    unhealthy_tcp_failures: int = 0
    unhealthy_timeouts: int = 0
    unhealthy_http_failures: int = 0
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    #: ``passive.outlier_detection`` (Ferry's, Envoy's detectors; ``None`` = off).
    outlier: OutlierSettings | None = None

    @property
    def enabled(self) -> bool:
        """Kong's test (the CP's view uses the same): an unhealthy counter is set;
        or Ferry's outlier detection is on (it needs the passive outcomes too)."""
        return (
            self.unhealthy_tcp_failures > 0
            or self.unhealthy_timeouts > 0
            or self.unhealthy_http_failures > 0
            or self.outlier is not None
        )


@dataclass(frozen=True, slots=True)
class HealthSettings:
    """One upstream's compiled ``healthchecks``. Immutable; equal settings let a health
    checker (and its probe loops) be kept across config versions."""

    active: ActiveSettings = ActiveSettings()
    passive: PassiveSettings = PassiveSettings()
    #: Kong's ``threshold``: % of the total weight that must be healthy, else the
    #: whole upstream answers 503. 0 = never.
    threshold: float = 0.0
    #: Ferry's ``max_ejection_percent``: passive and outlier ejections never take more
    #: than this % of the weight out (100 = uncapped, Kong's behaviour).
    max_ejection_percent: float = 100.0
    #: Ferry's ``panic_threshold`` (Envoy's panic mode): % of the serving tier's
    #: weight that must be healthy, else the balancer ignores health. 0 = off.
    panic_threshold: float = 0.0

    @property
    def enabled(self) -> bool:
        """Whether any check runs (else targets show ``HEALTHCHECKS_OFF``)."""
        return self.active.enabled or self.passive.enabled


HEALTHCHECKS_OFF = HealthSettings()


def _section(raw: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"'{where}{key}' must be an object")
    return value


def _number(raw: Mapping[str, Any], key: str, where: str, default: float, lo: float, hi: float) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        raise ValueError(f"'{where}{key}' must be a number between {lo:g} and {hi:g}")
    return float(value)


def _count(raw: Mapping[str, Any], key: str, where: str) -> int:
    value = raw.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 255:
        raise ValueError(f"'{where}{key}' must be an integer between 0 and 255")
    return value


def _statuses(raw: Mapping[str, Any], where: str, default: frozenset[int]) -> frozenset[int]:
    value = raw.get("http_statuses")
    if value is None:
        return default
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 100 <= v <= 999 for v in value
    ):
        raise ValueError(f"'{where}http_statuses' must be a list of HTTP statuses")
    return frozenset(value)


def _type(raw: Mapping[str, Any], where: str) -> ProbeType:
    value = raw.get("type", "http") or "http"
    if value == "tcp":
        return "tcp"
    if value == "https":
        return "https"
    if value == "http":
        return "http"
    if value == "grpc":
        return "grpc"
    if value == "grpcs":
        return "grpcs"
    raise ValueError(f"'{where}type' must be one of tcp, http, https, grpc, grpcs")


def _headers(raw: Mapping[str, Any], where: str) -> tuple[tuple[str, str], ...]:
    value = raw.get("headers")
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValueError(f"'{where}headers' must be an object of name -> list of values")
    out: list[tuple[str, str]] = []
    for name, values in value.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(name, str) or not isinstance(values, list) or not all(
            isinstance(v, str) for v in values
        ):
            raise ValueError(f"'{where}headers' must be an object of name -> list of values")
        out.extend((name, v) for v in values)
    return tuple(out)


def compile_health_settings(raw: Mapping[str, Any] | None) -> HealthSettings:
    """Compile an upstream's ``healthchecks`` (``None`` = Kong's defaults: all off).

    Raises ``ValueError`` naming the field for a value the data plane cannot use.
    """
    if raw is None:
        return HEALTHCHECKS_OFF
    if not isinstance(raw, Mapping):
        raise ValueError("'healthchecks' must be an object")
    active = _section(raw, "active", "healthchecks.")
    a_healthy = _section(active, "healthy", "healthchecks.active.")
    a_unhealthy = _section(active, "unhealthy", "healthchecks.active.")
    passive = _section(raw, "passive", "healthchecks.")
    p_healthy = _section(passive, "healthy", "healthchecks.passive.")
    p_unhealthy = _section(passive, "unhealthy", "healthchecks.passive.")
    w_ah, w_au = "healthchecks.active.healthy.", "healthchecks.active.unhealthy."
    w_ph, w_pu = "healthchecks.passive.healthy.", "healthchecks.passive.unhealthy."
    sni = active.get("https_sni")
    if sni is not None and (not isinstance(sni, str) or not sni):
        raise ValueError("'healthchecks.active.https_sni' must be a host name")
    path = active.get("http_path", "/") or "/"
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("'healthchecks.active.http_path' must start with '/'")
    verify = active.get("https_verify_certificate", True)
    if not isinstance(verify, bool):
        raise ValueError("'healthchecks.active.https_verify_certificate' must be a boolean")
    other_statuses = a_unhealthy.get("other_statuses", False)
    if other_statuses is None:
        other_statuses = False
    if not isinstance(other_statuses, bool):
        raise ValueError("'healthchecks.active.unhealthy.other_statuses' must be a boolean")
    grpc_service = active.get("grpc_service_name") or ""
    if not isinstance(grpc_service, str):
        raise ValueError("'healthchecks.active.grpc_service_name' must be a string")
    concurrency = active.get("concurrency", 10)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError("'healthchecks.active.concurrency' must be a positive integer")
    base_ejection = _number(passive, "base_ejection_time", "healthchecks.passive.", 30.0, 0, 65535)
    max_ejection = _number(passive, "max_ejection_time", "healthchecks.passive.", 300.0, 0, 65535)
    return HealthSettings(
        active=ActiveSettings(
            type=_type(active, "healthchecks.active."),
            timeout=_number(active, "timeout", "healthchecks.active.", 1.0, 0, 65535),
            concurrency=concurrency,
            http_path=path,
            https_sni=sni,
            https_verify_certificate=verify,
            headers=_headers(active, "healthchecks.active."),
            grpc_service_name=grpc_service,
            healthy_interval=_number(a_healthy, "interval", w_ah, 0.0, 0, 65535),
            healthy_statuses=_statuses(a_healthy, w_ah, _ACTIVE_HEALTHY),
            healthy_successes=_count(a_healthy, "successes", w_ah),
            unhealthy_interval=_number(a_unhealthy, "interval", w_au, 0.0, 0, 65535),
            unhealthy_statuses=_statuses(a_unhealthy, w_au, _ACTIVE_UNHEALTHY),
            unhealthy_tcp_failures=_count(a_unhealthy, "tcp_failures", w_au),
            unhealthy_timeouts=_count(a_unhealthy, "timeouts", w_au),
            unhealthy_http_failures=_count(a_unhealthy, "http_failures", w_au),
            unhealthy_other_statuses=other_statuses,
        ),
        passive=PassiveSettings(
            type=_type(passive, "healthchecks.passive."),
            healthy_statuses=_statuses(p_healthy, w_ph, _PASSIVE_HEALTHY),
            healthy_successes=_count(p_healthy, "successes", w_ph),
            unhealthy_statuses=_statuses(p_unhealthy, w_pu, _PASSIVE_UNHEALTHY),
            unhealthy_tcp_failures=_count(p_unhealthy, "tcp_failures", w_pu),
            unhealthy_timeouts=_count(p_unhealthy, "timeouts", w_pu),
            unhealthy_http_failures=_count(p_unhealthy, "http_failures", w_pu),
            base_ejection_time=base_ejection,
            max_ejection_time=max(max_ejection, base_ejection),
            outlier=compile_outlier_detection(passive.get("outlier_detection")),
        ),
        threshold=_number(raw, "threshold", "healthchecks.", 0.0, 0, 100),
        max_ejection_percent=_number(raw, "max_ejection_percent", "healthchecks.", 100.0, 0, 100),
        panic_threshold=_number(raw, "panic_threshold", "healthchecks.", 0.0, 0, 100),
    )
