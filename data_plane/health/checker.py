"""Target health of one upstream: Kong's counters, active probes, passive outcomes,
the threshold, and Ferry's half-open circuit breaker.

One :class:`HealthChecker` per upstream and config version; it feeds the upstream's
balancer through :meth:`Balancer.set_address_health` and keeps :attr:`below_threshold`,
so the proxy's hot path (through :mod:`data_plane.upstream_try`) only reads what the
checker decided. Health is per **address** (an
``ip:port`` a DNS target resolved to, or the IP target itself) *of one target*: two
targets resolving to the same IP have separate state, as in Kong.

Counters (lua-resty-healthcheck, as Kong): per address ``successes``, ``http_failures``,
``tcp_failures``, ``timeouts``. A success resets the three failure counters; a failure
resets ``successes``. When a healthy address's failure counter reaches its threshold it
turns unhealthy; when an unhealthy address's ``successes`` reach theirs it turns healthy;
a threshold of 0 makes that counter inert. Active probes and passive outcomes share the
counters, each compared with its own thresholds. Every transition resets all counters.

Active probes run in two loops (healthy addresses every ``healthy.interval``, unhealthy
ones every ``unhealthy.interval``; 0 disables a loop), at most ``concurrency`` at a time,
through an injected :class:`Prober`. Passive outcomes come from the proxy after each try:
a try that timed out is a timeout, another failed try a TCP failure, otherwise the
response status is classified by ``passive.healthy/unhealthy.http_statuses`` (with
``passive.type`` ``tcp`` any response is a success).

Beyond Kong (Envoy's outlier ejection): an address ejected by *passive* checks while no
active loop probes unhealthy addresses would stay out forever in Kong. Here it is let
through again after ``passive.base_ejection_time`` seconds (doubling on each consecutive
ejection, capped at ``passive.max_ejection_time``): the balancer may pick it for exactly
one request (half-open); its success closes the breaker (healthy again), its failure
ejects it again for twice as long.

Outlier detection and ``max_ejection_percent`` (Ferry's, Envoy's): the decisions are in
:mod:`data_plane.health.outlier`; this checker counts passive outcomes in its window,
evaluates it every ``outlier_detection.interval`` (a task started by :meth:`start`),
ejects through the half-open breaker, and refuses passive/outlier ejections past the
cap (the address stays in; :attr:`ejections_refused` counts them).

Concurrency: everything runs on the data plane's single event loop; no method awaits
except the probe loops, so a transition is atomic with respect to requests.

Why this module is past 600 lines: Kong's counters, the active loops (HTTP, TCP and
gRPC probes share them), passive outcomes, the half-open breaker, outlier ejections and
the ejection cap act on one per-address state under one set of rules; splitting them
would spread that state (the outlier and cap decisions themselves are in ``outlier.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from data_plane.balancers import Address, Balancer
from data_plane.health.outlier import (
    CAPPED_CAUSES,
    OutlierWindow,
    ejection_allowed,
    ejection_cause,
    find_outliers,
)
from data_plane.health.settings import HealthSettings

__all__ = [
    "AddressView",
    "HealthChecker",
    "HealthTransition",
    "ProbeOutcome",
    "Prober",
    "endpoint_of",
    "target_key_of",
]

log = logging.getLogger("ferry.data_plane.health")

HealthState = Literal["HEALTHY", "UNHEALTHY", "DNS_ERROR", "HEALTHCHECKS_OFF"]
ProbeOutcome = Literal["success", "http_failure", "tcp_failure", "timeout", "ignored"]

_SUCCESS: Final = "success"
_HTTP: Final = "http_failure"
_TCP: Final = "tcp_failure"
_TIMEOUT: Final = "timeout"
_IGNORED: Final = "ignored"

# Half-open trial states of an ejected address.
_TRIAL_NONE: Final = 0
_TRIAL_WAITING: Final = 1  # usable again for one request
_TRIAL_IN_FLIGHT: Final = 2  # that request is on its way; not usable


class Prober(Protocol):
    """Sends one active probe; implemented over real sockets in ``health_probe``."""

    async def probe(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        """Probe ``address`` (``host`` for the Host header / SNI); returns the outcome
        and the HTTP status (0 when there was none)."""
        ...


@dataclass(frozen=True, slots=True)
class HealthTransition:
    """One address changing state (or its state, in a full view). ``time`` is epoch s."""

    upstream_id: str
    target_id: str
    target: str
    address: str
    state: HealthState
    reason: str
    time: float
    weight: int


#: What a report row says apart from its address and time:
#: ``(target_id, state, reason, weight)``.
RowSummary = tuple[str, str, str, int]


@dataclass(frozen=True, slots=True)
class AddressView:
    """What the status API shows for one address."""

    address: Address
    target: str
    state: HealthState
    reason: str
    since: float


def target_key_of(address: Address) -> str:
    """The configured target (``host:port``) an address belongs to."""
    target: str = getattr(address, "target", "")
    if target:
        return target
    hostname = getattr(address, "hostname", "")
    if hostname:
        return Address(hostname, address.port).key
    return address.key


def endpoint_of(address: Address) -> str:
    """The address as health views and reports show it (``ip:port``, or an SRV
    record's ``name:port``); ``key`` is the identity, which also names the target."""
    endpoint: str = getattr(address, "endpoint", "")
    return endpoint or address.key


class _AddressHealth:
    """Counters and state of one address. Owned by its checker (moved to the next
    version's checker when the address stays)."""

    __slots__ = (
        "cause",
        "ejections",
        "healthy",
        "http_failures",
        "last_ejection_end",
        "reason",
        "retry_at",
        "since",
        "successes",
        "tcp_failures",
        "timeouts",
        "trial",
    )

    def __init__(self, now: float) -> None:
        self.healthy = True
        self.successes = 0
        self.http_failures = 0
        self.tcp_failures = 0
        self.timeouts = 0
        self.reason = ""
        self.since = now
        #: Consecutive passive ejections (the half-open back-off exponent).
        self.ejections = 0
        #: Wall time the last half-open trial closed the breaker (0 = never).
        self.last_ejection_end = 0.0
        #: Monotonic time of the next half-open trial (0 = none scheduled).
        self.retry_at = 0.0
        self.trial = _TRIAL_NONE
        #: Why it is unhealthy: "active", "passive", "outlier" or "manual" ("" healthy).
        self.cause = ""

    def reset_counters(self) -> None:
        self.successes = self.http_failures = self.tcp_failures = self.timeouts = 0


class HealthChecker:
    """Health of one upstream's addresses for one config version.

    Built by ``compile_config`` (pure: no task, no timer) and started by the data
    plane's health supervisor once its config is applied; the supervisor stops the
    checker a newer version replaced. ``previous`` hands over the state of addresses
    that stay (counters, health, ejections); the previous checker must be stopped.
    ``on_transition`` (set by the supervisor) hears every transition.
    """

    def __init__(
        self,
        upstream_id: str,
        settings: HealthSettings,
        balancer: Balancer,
        *,
        target_ids: Mapping[str, str],
        host_header: str | None = None,
        previous: HealthChecker | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream_id = upstream_id
        self.settings = settings
        self.balancer = balancer
        self.target_ids = dict(target_ids)
        self.host_header = host_header
        self._clock = clock
        self._wall = wall_clock
        self.on_transition: Callable[[HealthTransition], None] | None = None
        #: Whether the proxy should report passive outcomes (hot-path flag).
        self.passive_on = settings.passive.enabled
        #: Outlier detection's counts of this interval (None: outlier detection off).
        self._outlier_window = OutlierWindow() if settings.passive.outlier is not None else None
        #: Passive/outlier ejections refused by ``max_ejection_percent`` (a metric;
        #: carried from ``previous``). ``_refused``: addresses logged since their last
        #: transition (a refusal is logged once).
        self.ejections_refused: int = previous.ejections_refused if previous is not None else 0
        self._refused: set[str] = set()
        #: Addresses (keys) let through for one half-open trial request.
        self.trial_waiting: set[str] = set()
        #: Less than ``threshold`` % of the upstream's weight is healthy: the whole
        #: upstream answers 503 (Kong's ``healthchecks.threshold``; hot-path flag).
        self.below_threshold = False
        #: Panic mode (``panic_threshold``): the balancer ignores health. Mirrors
        #: ``balancer.in_panic``; see :meth:`_update_threshold`.
        self.panic = False
        #: Called with the new :attr:`panic` when it flips (set by the supervisor).
        self.on_panic: Callable[[bool], None] | None = None
        self._states: dict[str, _AddressHealth] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._prober: Prober | None = None
        self._started = False
        #: Stopped (replaced): late reports of tries it handed out still count, but
        #: no longer decide panic for a balancer its successor may share.
        self._stopped = False
        #: Health-check sharding: the configured targets (``host:port``) this data
        #: plane probes actively; ``None`` = all of them (no sharding).
        self.probe_targets: frozenset[str] | None = None
        if previous is not None:
            self._states = dict(previous._states)
            for state in self._states.values():
                if state.trial == _TRIAL_IN_FLIGHT:
                    # That request reports to the previous checker: try again here.
                    state.trial = _TRIAL_WAITING
        for key, state in self._states.items():
            balancer.set_address_health(key, state.healthy)
        self._update_threshold()

    # ------------------------------------------------------------------ lifecycle

    def start(self, prober: Prober) -> None:
        """Start the active probe loops (if configured) and pending half-open timers.

        Must run on the event loop. Idempotent."""
        if self._started:
            return
        self._started = True
        self._stopped = False
        self._prober = prober
        active = self.settings.active
        if active.healthy_interval > 0:
            self._tasks.append(asyncio.create_task(self._probe_loop(True), name="ferry-health"))
        if active.unhealthy_interval > 0:
            self._tasks.append(asyncio.create_task(self._probe_loop(False), name="ferry-health"))
        outlier = self.settings.passive.outlier
        if outlier is not None:
            self._tasks.append(
                asyncio.create_task(self._outlier_loop(outlier.interval), name="ferry-outlier")
            )
        now = self._clock()
        for key, state in self._states.items():
            if state.trial == _TRIAL_WAITING:
                self._admit_trial(key)
            elif not state.healthy and state.retry_at:
                self._schedule_trial(key, max(0.0, state.retry_at - now))

    async def stop(self) -> None:
        """Stop probe loops and timers; state stays for a successor to take over."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._started = False
        self._stopped = True

    # ------------------------------------------------------------------ reports

    def report_passive(self, address: Address, failed: bool, timed_out: bool, status: int) -> None:
        """The outcome of one proxied try to ``address`` (called by the proxy).

        ``failed``: no response head came (``timed_out`` says whether the try timed
        out); otherwise ``status`` is the response status.
        """
        passive = self.settings.passive
        if failed:
            outcome: ProbeOutcome = _TIMEOUT if timed_out else _TCP
        elif passive.type == "tcp":
            outcome = _SUCCESS
        elif status in passive.unhealthy_statuses:
            outcome = _HTTP
        elif status in passive.healthy_statuses:
            outcome = _SUCCESS
        else:
            outcome = _IGNORED
        state = self._states.get(address.key)
        if state is not None and state.trial == _TRIAL_IN_FLIGHT:
            self._end_trial(address, state, outcome)
            return
        window = self._outlier_window
        if window is not None:
            window.record(address.key, outcome == _HTTP or outcome == _TCP or outcome == _TIMEOUT)
        if outcome == _IGNORED:
            return
        self._record(address, outcome, status, active=False)

    def report_aborted(self, address: Address) -> None:
        """A try ended without a verdict (the client went away): a half-open trial
        in flight on it is let through again."""
        state = self._states.get(address.key)
        if state is not None and state.trial == _TRIAL_IN_FLIGHT:
            state.trial = _TRIAL_WAITING
            self._admit_trial(address.key)

    def on_pick(self, address: Address) -> None:
        """The balancer picked ``address``; call only while :attr:`trial_waiting` is
        non-empty. Takes a waiting half-open address out again until its one trial
        request has reported."""
        key = address.key
        if key in self.trial_waiting:
            self.trial_waiting.discard(key)
            state = self._states.get(key)
            if state is not None:
                state.trial = _TRIAL_IN_FLIGHT
            self.balancer.set_address_health(key, False)
            if self.settings.panic_threshold > 0:
                self._update_panic()  # the serving tier may have changed

    def set_health(self, keys: Iterable[str], healthy: bool, reason: str = "manual") -> None:
        """Force addresses to a state and reset their counters (Kong's manual
        ``/healthy`` / ``/unhealthy``). Unknown keys get a state for when they appear."""
        now = self._clock()
        for key in keys:
            state = self._states.get(key)
            if state is None:
                state = self._states[key] = _AddressHealth(now)
            self._cancel_trial(key, state)
            state.reset_counters()
            state.ejections = 0
            address = self._address(key)
            if state.healthy != healthy:
                self._transition(key, address, state, healthy, reason)
            else:
                state.reason = reason
                state.cause = "" if healthy else ejection_cause(reason)
                self.balancer.set_address_health(key, healthy)

    def apply_verdict(self, address: str, target: str, healthy: bool, reason: str) -> bool:
        """Take the state another data plane's probes found for ``address`` (of
        ``target``), when this one does not probe that target (sharding). Returns
        whether it was applied."""
        only = self.probe_targets
        if only is None or target in only:
            return False
        self.adopt(address, healthy, reason)
        return True

    def adopt(self, address: str, healthy: bool, reason: str) -> bool:
        """Take a state another process of this node found for ``address`` (its
        counters reset, as for a verdict), whether or not this checker probes it.
        Returns False when ``address`` already had that state and reason."""
        state = self._states.get(address)
        if state is not None and state.healthy == healthy and state.reason == reason:
            return False
        self.set_health([address], healthy, reason)
        return True

    # ------------------------------------------------------------------ views

    def state_of(self, address: Address) -> HealthState:
        if address.weight <= 0:
            return "HEALTHCHECKS_OFF"
        state = self._states.get(address.key)
        if state is not None and not state.healthy:
            return "UNHEALTHY"
        if not self.settings.enabled and (state is None or not state.reason):
            return "HEALTHCHECKS_OFF"
        return "HEALTHY"

    def view(self) -> list[AddressView]:
        """Every balanced address with its state (for the status API and full reports)."""
        out = []
        for address in self.balancer.addresses:
            state = self._states.get(address.key)
            out.append(
                AddressView(
                    address=address,
                    target=target_key_of(address),
                    state=self.state_of(address),
                    reason=state.reason if state is not None else "",
                    since=state.since if state is not None else 0.0,
                )
            )
        return out

    def row_summaries(self) -> dict[tuple[str, str], RowSummary]:
        """``(target, address)`` → what its report row says apart from its time:
        the cheap half of :meth:`report_rows`, to find the rows that changed."""
        ids, states = self.target_ids, self._states
        out: dict[tuple[str, str], RowSummary] = {}
        for address in self.balancer.addresses:
            target = target_key_of(address)
            state = states.get(address.key)
            out[(target, endpoint_of(address))] = (
                ids.get(target, ""),
                self.state_of(address),
                state.reason if state is not None else "",
                address.weight,
            )
        return out

    def report_rows(
        self, unless: Mapping[tuple[str, str], RowSummary] | None = None
    ) -> list[HealthTransition]:
        """This checker's full view as report rows (``time`` = when each state began),
        leaving out the rows whose summary ``unless`` holds as it is (what the
        control plane already has from the checker this one replaced)."""
        now_wall, now = self._wall(), self._clock()
        ids, states = self.target_ids, self._states
        rows = []
        for address in self.balancer.addresses:
            target = target_key_of(address)
            endpoint = endpoint_of(address)
            state = states.get(address.key)
            summary = (
                ids.get(target, ""),
                self.state_of(address),
                state.reason if state is not None else "",
                address.weight,
            )
            if unless is not None and unless.get((target, endpoint)) == summary:
                continue
            since = state.since if state is not None else 0.0
            rows.append(
                HealthTransition(
                    upstream_id=self.upstream_id,
                    target_id=summary[0],
                    target=target,
                    address=endpoint,
                    state=summary[1],
                    reason=summary[2],
                    time=now_wall - (now - since) if since else now_wall,
                    weight=summary[3],
                )
            )
        return rows

    # ------------------------------------------------------------------ internals

    def _address(self, key: str) -> Address | None:
        for address in self.balancer.addresses:
            if address.key == key:
                return address
        return None

    def _record(self, address: Address, outcome: ProbeOutcome, status: int, *, active: bool) -> None:
        key = address.key
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = _AddressHealth(self._clock())
        source = "active" if active else "passive"
        if outcome == _SUCCESS:
            # First, and without gathering the limits: nearly every proxied request.
            state.http_failures = state.tcp_failures = state.timeouts = 0
            state.successes += 1
            if not state.healthy:
                settings = self.settings.active if active else self.settings.passive
                successes = settings.healthy_successes
                if successes > 0 and state.successes >= successes:
                    self._transition(key, address, state, True, f"{source}: {state.successes} successes")
            return
        if active:
            a = self.settings.active
            http_limit, tcp_limit, timeout_limit = (
                a.unhealthy_http_failures,
                a.unhealthy_tcp_failures,
                a.unhealthy_timeouts,
            )
        else:
            p = self.settings.passive
            http_limit, tcp_limit, timeout_limit = (
                p.unhealthy_http_failures,
                p.unhealthy_tcp_failures,
                p.unhealthy_timeouts,
            )
        state.successes = 0
        if outcome == _HTTP:
            state.http_failures += 1
            count, limit, what = state.http_failures, http_limit, f"http_failures (last status {status})"
        elif outcome == _TCP:
            state.tcp_failures += 1
            count, limit, what = state.tcp_failures, tcp_limit, "tcp_failures"
        else:
            state.timeouts += 1
            count, limit, what = state.timeouts, timeout_limit, "timeouts"
        if state.healthy and limit > 0 and count >= limit:
            reason = f"{source}: {count} {what}"
            if not active and not self._cap_allows(key, address, state, reason):
                return
            self._transition(key, address, state, False, reason)
            if not active:
                self._eject(key, state)

    def _transition(
        self, key: str, address: Address | None, state: _AddressHealth, healthy: bool, reason: str
    ) -> None:
        state.healthy = healthy
        state.reason = reason
        state.cause = "" if healthy else ejection_cause(reason)
        self._refused.discard(key)
        state.since = self._clock()
        state.reset_counters()
        self.balancer.set_address_health(key, healthy)
        self._update_threshold()
        log.info(
            "upstream %s: %s is now %s (%s)",
            self.upstream_id, key, "healthy" if healthy else "unhealthy", reason,
        )
        callback = self.on_transition
        if callback is not None:
            target = target_key_of(address) if address is not None else key
            callback(
                HealthTransition(
                    upstream_id=self.upstream_id,
                    target_id=self.target_ids.get(target, ""),
                    target=target,
                    address=endpoint_of(address) if address is not None else key,
                    state="HEALTHY" if healthy else "UNHEALTHY",
                    reason=reason,
                    time=self._wall(),
                    weight=address.weight if address is not None else 0,
                )
            )

    def refresh(self) -> None:
        """The balancer's addresses changed (DNS): re-evaluate the threshold."""
        self._update_threshold()

    def _update_threshold(self) -> None:
        """Recompute Kong's threshold flag and the panic flag (after any change of
        health marks or addresses). Half-open trial addresses count as healthy."""
        if self.settings.panic_threshold > 0 or self.panic or self.balancer.in_panic:
            self._update_panic()
        threshold = self.settings.threshold
        if threshold <= 0:
            self.below_threshold = False
            return
        total = healthy = 0
        for address in self.balancer.addresses:
            if address.weight <= 0:
                continue
            total += address.weight
            if self._counts_healthy(address.key):
                healthy += address.weight
        self.below_threshold = total > 0 and healthy * 100.0 < threshold * total

    # ------------------------------------------- outlier detection, ejection cap

    async def _outlier_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self._evaluate_outliers()
            except Exception:  # a bug must not end the loop
                log.exception("outlier detection of upstream %s failed", self.upstream_id)

    def _evaluate_outliers(self) -> None:
        """Take this interval's counts and eject the outliers among the addresses in
        service (worst first, within the cap)."""
        window, outlier = self._outlier_window, self.settings.passive.outlier
        if window is None or outlier is None:
            return
        counts = window.take()
        in_service = {
            a.key: counts[a.key]
            for a in self.balancer.addresses
            if a.weight > 0 and a.key in counts and self._is_healthy(a.key)
        }
        for found in find_outliers(in_service, outlier):
            address = self._address(found.key)
            state = self._states.get(found.key)
            if state is None:
                state = self._states[found.key] = _AddressHealth(self._clock())
            if self._cap_allows(found.key, address, state, found.reason):
                self._transition(found.key, address, state, False, found.reason)
                self._eject(found.key, state)

    def _cap_allows(self, key: str, address: Address | None, state: _AddressHealth, reason: str) -> bool:
        """Whether a passive/outlier ejection of ``key`` stays within
        ``max_ejection_percent``; a refusal is counted, logged once and shown in the
        address's reason (it stays in)."""
        cap = self.settings.max_ejection_percent
        if cap >= 100:
            return True
        total = out = 0
        for a in self.balancer.addresses:
            if a.weight <= 0:
                continue
            total += a.weight
            other = self._states.get(a.key)
            if other is not None and not other.healthy and other.cause in CAPPED_CAUSES:
                out += a.weight
        weight = address.weight if address is not None else 0
        if ejection_allowed(total, out, weight, cap):
            return True
        self.ejections_refused += 1
        state.reason = f"{reason}; not ejected: max_ejection_percent {cap:g} reached"
        if key not in self._refused:
            self._refused.add(key)
            log.warning("upstream %s: %s stays in (%s)", self.upstream_id, key, state.reason)
        return False
    def _counts_healthy(self, key: str) -> bool:
        """Healthy for the threshold and panic shares: healthy, or in a half-open trial."""
        state = self._states.get(key)
        return state is None or state.healthy or state.trial != _TRIAL_NONE

    def _update_panic(self) -> None:
        """Panic mode (Envoy's): less than ``panic_threshold`` % of the serving tier's
        weight (:meth:`Balancer.serving_tier`: the primaries, or the failover targets
        once no primary is usable) is healthy. Tells the balancer and, on a flip,
        :attr:`on_panic`. Kong's ``threshold`` is checked before the balancer is asked,
        so below it the upstream answers 503 whether in panic or not."""
        if self._stopped:
            return
        limit = self.settings.panic_threshold
        panic = False
        if limit > 0:
            total = healthy = 0
            for address in self.balancer.serving_tier():
                total += address.weight
                if self._counts_healthy(address.key):
                    healthy += address.weight
            panic = total > 0 and healthy * 100.0 < limit * total
        self.balancer.set_panic(panic)
        if panic == self.panic:
            return
        self.panic = panic
        log.warning(
            "upstream %s: %s panic mode (panic_threshold %g%%)",
            self.upstream_id, "entered" if panic else "left", limit,
        )
        callback = self.on_panic
        if callback is not None:
            callback(panic)

    # ---------------------------------------------------------- half-open breaker

    def _eject(self, key: str, state: _AddressHealth) -> None:
        passive = self.settings.passive
        if self.settings.active.unhealthy_interval > 0 or passive.base_ejection_time <= 0:
            return  # active probes bring it back, or Kong's behaviour was asked for
        if state.last_ejection_end and self._wall() - state.last_ejection_end > passive.max_ejection_time:
            state.ejections = 0  # healthy long enough: the back-off starts over
        state.ejections += 1
        delay = min(
            passive.base_ejection_time * (2 ** (state.ejections - 1)), passive.max_ejection_time
        )
        state.retry_at = self._clock() + delay
        if self._started:
            self._schedule_trial(key, delay)

    def _schedule_trial(self, key: str, delay: float) -> None:
        old = self._timers.pop(key, None)
        if old is not None:
            old.cancel()
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay, self._admit_trial, key)

    def _admit_trial(self, key: str) -> None:
        self._timers.pop(key, None)
        state = self._states.get(key)
        if state is None or state.healthy:
            return
        state.trial = _TRIAL_WAITING
        state.retry_at = 0.0
        self.trial_waiting.add(key)
        self.balancer.set_address_health(key, True)
        self._update_threshold()

    def _end_trial(self, address: Address, state: _AddressHealth, outcome: ProbeOutcome) -> None:
        key = address.key
        state.trial = _TRIAL_NONE
        if outcome in (_SUCCESS, _IGNORED):
            state.last_ejection_end = self._wall()
            self._transition(key, address, state, True, "passive: half-open request succeeded")
            return
        what = {"http_failure": "an HTTP failure", "tcp_failure": "a TCP failure"}.get(
            outcome, "a timeout"
        )
        state.reason = f"passive: half-open request ended in {what}"
        self.balancer.set_address_health(key, False)
        self._update_threshold()
        self._eject(key, state)

    def _cancel_trial(self, key: str, state: _AddressHealth) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self.trial_waiting.discard(key)
        state.trial = _TRIAL_NONE
        state.retry_at = 0.0

    # ------------------------------------------------------------------ active

    async def _probe_loop(self, healthy: bool) -> None:
        active = self.settings.active
        interval = active.healthy_interval if healthy else active.unhealthy_interval
        limit = asyncio.Semaphore(active.concurrency)
        while True:
            only = self.probe_targets
            targets = [
                a
                for a in self.balancer.addresses
                if a.weight > 0
                and self._is_healthy(a.key) == healthy
                and (only is None or target_key_of(a) in only)
            ]
            if targets:
                await asyncio.gather(*(self._probe(a, limit) for a in targets))
            await asyncio.sleep(interval)

    def _is_healthy(self, key: str) -> bool:
        state = self._states.get(key)
        return state is None or (state.healthy and state.trial == _TRIAL_NONE)

    async def _probe(self, address: Address, limit: asyncio.Semaphore) -> None:
        prober = self._prober
        if prober is None:
            return
        host = self.host_header or getattr(address, "hostname", "") or address.host
        async with limit:
            try:
                outcome, status = await prober.probe(address, host)
            except Exception:  # a prober bug must not end the loop
                log.exception("health probe of %s failed unexpectedly", address.key)
                return
        if outcome != _IGNORED and address.key in {a.key for a in self.balancer.addresses}:
            self._record(address, outcome, status, active=True)
