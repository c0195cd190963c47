"""Envoy's outlier detection and the ejection cap, as pure decisions.

``healthchecks.passive.outlier_detection`` (Ferry's; Envoy's success-rate and
failure-percentage detectors with Envoy's defaults). The health checker
(:mod:`data_plane.health.checker`) counts each passive try of an address in an
:class:`OutlierWindow` and, every ``interval`` seconds, takes the window (the counts
start over) and asks :func:`find_outliers` which addresses to eject; it ejects them
through its half-open breaker, within ``healthchecks.max_ejection_percent``
(:func:`ejection_allowed`). Each data plane (each worker process) decides from the
traffic it proxied itself.

What is counted: every passive outcome except a half-open trial's. A **failure** is
what the passive checks count as one: a status in ``passive.unhealthy.http_statuses``
(with ``passive.type`` ``tcp``: none), a TCP failure (no response head) or a timeout;
everything else (a status in ``passive.healthy.http_statuses`` or in neither list) is
a success.

The rules, evaluated over the addresses in service that had traffic in the interval
(Envoy's, from its outlier-detection reference):

- **success rate**: the addresses with at least ``request_volume`` requests qualify;
  when at least ``minimum_hosts`` do, let ``mean`` and ``stdev`` be the mean and the
  population standard deviation of their success rates (in %); an address whose rate
  is below ``mean - stdev_factor / 1000 * stdev`` is an outlier.
- **failure percentage**: the addresses with at least its own ``request_volume``
  qualify; when at least its ``minimum_hosts`` do, an address whose failure
  percentage is ``>= threshold`` is an outlier.

Either rule may be off (``None``). Percentages are compared with a tolerance of
:data:`_EPSILON` so that float rounding never ejects one of several equal addresses.

The cap (``max_ejection_percent``): an ejection by passive checks or outlier
detection is allowed while the weight already out for those reasons plus the
candidate's weight is at most that share of the upstream's weight. Unlike Envoy, no
ejection is forced beyond the cap ("at least one host"): the issue's rule is that the
share is never exceeded; see ``docs/health-checks.md``.

Concurrency: everything here is called on the data plane's event loop; nothing awaits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "CAPPED_CAUSES",
    "FailurePercentageRule",
    "Outlier",
    "OutlierSettings",
    "OutlierWindow",
    "SuccessRateRule",
    "compile_outlier_detection",
    "ejection_allowed",
    "ejection_cause",
    "find_outliers",
]

#: Percentage points below which two rates count as equal (float rounding).
_EPSILON: Final = 1e-9

#: The causes of unhealthiness that ``max_ejection_percent`` caps (and that count
#: toward it): active checks and manual overrides are neither capped nor counted.
CAPPED_CAUSES: Final = frozenset({"passive", "outlier"})


@dataclass(frozen=True, slots=True)
class SuccessRateRule:
    """``outlier_detection.success_rate`` (Envoy's ``success_rate_*`` defaults)."""

    minimum_hosts: int = 5
    request_volume: int = 100
    #: Thousandths: 1900 means mean - 1.9 × stdev.
    stdev_factor: int = 1900


@dataclass(frozen=True, slots=True)
class FailurePercentageRule:
    """``outlier_detection.failure_percentage`` (Envoy's ``failure_percentage_*``)."""

    threshold: int = 85
    minimum_hosts: int = 5
    request_volume: int = 50


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """``healthchecks.passive.outlier_detection``; ``interval`` in seconds (> 0)."""

    interval: float = 10.0
    success_rate: SuccessRateRule | None = SuccessRateRule()
    failure_percentage: FailurePercentageRule | None = FailurePercentageRule()


@dataclass(frozen=True, slots=True)
class Outlier:
    """An address found to be an outlier, with the reason its ejection reports."""

    key: str
    reason: str
    #: Its success rate in % (outliers are returned worst first by it).
    success_rate: float


class OutlierWindow:
    """Requests and failures per address key in the current interval.

    Owned by one health checker; :meth:`record` is the per-request cost (a dict
    lookup and one or two increments)."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        #: key -> [requests, failures]
        self._counts: dict[str, list[int]] = {}

    def record(self, key: str, failed: bool) -> None:
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = [0, 0]
        counts[0] += 1
        if failed:
            counts[1] += 1

    def take(self) -> dict[str, tuple[int, int]]:
        """The counts so far as ``key -> (requests, failures)``; the window starts over."""
        counts, self._counts = self._counts, {}
        return {key: (c[0], c[1]) for key, c in counts.items()}


def _pct(value: float) -> str:
    """A percentage for a reason: at most one decimal, no trailing ``.0``."""
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


def find_outliers(counts: Mapping[str, tuple[int, int]], settings: OutlierSettings) -> list[Outlier]:
    """The outliers among ``counts`` (``key -> (requests, failures)`` of the addresses
    in service), worst success rate first; each address at most once (the
    success-rate reason wins when both rules find it)."""
    found: dict[str, Outlier] = {}
    rule = settings.success_rate
    if rule is not None:
        rates = {
            key: 100.0 * (total - failures) / total
            for key, (total, failures) in counts.items()
            if total >= rule.request_volume and total > 0
        }
        if rates and len(rates) >= rule.minimum_hosts:
            values = list(rates.values())
            mean = math.fsum(values) / len(values)
            stdev = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
            limit = mean - rule.stdev_factor / 1000.0 * stdev
            for key, rate in rates.items():
                if rate < limit - _EPSILON:
                    found[key] = Outlier(
                        key, f"outlier: success rate {_pct(rate)}% < {_pct(limit)}%", rate
                    )
    fp = settings.failure_percentage
    if fp is not None:
        qualified = {
            key: (total, failures)
            for key, (total, failures) in counts.items()
            if total >= fp.request_volume and total > 0
        }
        if qualified and len(qualified) >= fp.minimum_hosts:
            for key, (total, failures) in qualified.items():
                failed = 100.0 * failures / total
                if key not in found and failed >= fp.threshold - _EPSILON:
                    found[key] = Outlier(
                        key,
                        f"outlier: failure percentage {_pct(failed)}% >= {fp.threshold}%",
                        100.0 - failed,
                    )
    return sorted(found.values(), key=lambda o: (o.success_rate, o.key))


def ejection_allowed(total_weight: int, weight_out: int, weight: int, max_percent: float) -> bool:
    """Whether ejecting an address of ``weight`` keeps the weight out for capped
    causes (``weight_out`` before it) within ``max_percent`` % of ``total_weight``."""
    if max_percent >= 100:
        return True
    return (weight_out + weight) * 100 <= max_percent * total_weight


def ejection_cause(reason: str) -> str:
    """Why an address is unhealthy, from its reason: ``active``, ``passive``,
    ``outlier`` (the reason's prefix) or ``manual`` (anything else: an operator's
    override, a state carried from a re-created upstream)."""
    prefix = reason.split(":", 1)[0]
    return prefix if prefix in ("active", "passive", "outlier") else "manual"


# ------------------------------------------------------------------ compiling


_W: Final = "healthchecks.passive.outlier_detection."


def _int(raw: Mapping[str, Any], key: str, where: str, default: int, lo: int, hi: int) -> int:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"'{where}{key}' must be an integer between {lo} and {hi}")
    return value


def _record(raw: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    """A sub-record: absent = its defaults (``{}``), ``null`` = off (``None``)."""
    if key not in raw:
        return {}
    value = raw[key]
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"'{_W}{key}' must be an object")
    return value


def compile_outlier_detection(raw: Any) -> OutlierSettings | None:
    """Compile ``healthchecks.passive.outlier_detection`` (``None``: off).

    An absent sub-record means its defaults, ``null`` turns that rule off. Raises
    ``ValueError`` naming the field for a value the data plane cannot use."""
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise ValueError(f"'{_W[:-1]}' must be an object")
    interval = raw.get("interval", 10)
    if interval is None:
        interval = 10
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 65535:
        raise ValueError(f"'{_W}interval' must be a number greater than 0 and at most 65535")
    top = 2**31  # the CP's INT32_MAX (Kong's bound)
    success_rate: SuccessRateRule | None = None
    sr = _record(raw, "success_rate")
    if sr is not None:
        where = f"{_W}success_rate."
        success_rate = SuccessRateRule(
            minimum_hosts=_int(sr, "minimum_hosts", where, 5, 1, top),
            request_volume=_int(sr, "request_volume", where, 100, 1, top),
            stdev_factor=_int(sr, "stdev_factor", where, 1900, 1, top),
        )
    failure_percentage: FailurePercentageRule | None = None
    fp = _record(raw, "failure_percentage")
    if fp is not None:
        where = f"{_W}failure_percentage."
        failure_percentage = FailurePercentageRule(
            threshold=_int(fp, "threshold", where, 85, 0, 100),
            minimum_hosts=_int(fp, "minimum_hosts", where, 5, 1, top),
            request_volume=_int(fp, "request_volume", where, 50, 1, top),
        )
    return OutlierSettings(
        interval=float(interval), success_rate=success_rate, failure_percentage=failure_percentage
    )
