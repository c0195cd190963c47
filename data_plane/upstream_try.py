"""The proxy's one door into an upstream: Kong's ``balancer.execute`` + ``report_*``.

The proxy never touches an upstream's balancer, health checker or retry budget
itself. Per request it holds a :class:`~data_plane.balancers.BalancerHandle` (retry
count, tried addresses, hash key, and the request's retry-budget slot) and asks the
compiled upstream:

- :func:`begin_try` (``upstream.begin_try(handle)``): the threshold check, the pick (past
  ``max_requests``, a re-pick: :meth:`~data_plane.overload.OverloadGuard.pick`), the
  balancer's ``on_request_start``, a half-open trial's admission and, on the first try,
  the request's count in the retry budget. Returns a :class:`Try`, or ``None`` when no
  address may be tried (Kong's 503 "failure to get a peer from the ring-balancer"; with
  ``handle.overloaded``, every usable address is at its cap: 503 overloaded).
- :meth:`Try.end`, exactly once per try: the balancer's ``on_request_end`` (algorithms
  that track requests), the passive health outcome (or, for an aborted try, the release
  of a half-open trial), the retry slot the try held and its count in the target's
  overload load (:class:`~data_plane.overload.TargetLoad`).
- :func:`allow_retry` (``upstream.allow_retry(handle)``) before a retry: takes a retry
  slot in the budget (the next :func:`begin_try` hands it to its :class:`Try`).
- :func:`end_request` (``upstream.end_request(handle)``) when the request is finished,
  whatever the outcome: gives back its budget slots.

Every obligation is settled at most once: :meth:`Try.end` and :func:`end_request` clear
what they settled, so a second call is a no-op. Single event loop; not thread-safe.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

from data_plane.balancers import Address, Balancer, BalancerHandle
from data_plane.health.checker import HealthChecker
from data_plane.overload import TargetLoad
from data_plane.retry_budget import RetryBudget

if TYPE_CHECKING:
    from data_plane.runtime import CompiledUpstream

__all__ = ["Try", "allow_retry", "begin_try", "end_request"]

_now_ns: Final = time.monotonic_ns


class Try:
    """One try of one request on one address; owned by the exchange that began it.

    ``address`` is the picked address, ``t_start`` the pick's monotonic time (ns).
    """

    __slots__ = ("address", "t_start", "_balancer", "_health", "_retry_budget", "_load")

    address: Address
    t_start: int
    #: Owed one ``on_request_end`` (only when the algorithm tracks requests).
    _balancer: Balancer | None
    #: Owed one passive report (only when passive checks are on).
    _health: HealthChecker | None
    #: Owed one ``retry_ended`` (only when this try is a retry counted in a budget).
    _retry_budget: RetryBudget | None
    #: Owed one ``release_request`` (only when the upstream has an overload guard).
    _load: TargetLoad | None

    def __init__(self, address: Address, t_start: int, balancer: Balancer | None,
                 health: HealthChecker | None, retry_budget: RetryBudget | None,
                 load: TargetLoad | None = None) -> None:
        self.address = address
        self.t_start = t_start
        self._balancer = balancer
        self._health = health
        self._retry_budget = retry_budget
        self._load = load

    def end(
        self,
        failed: bool,
        status: int = 0,
        t_headers: int = 0,
        timed_out: bool = False,
        aborted: bool = False,
    ) -> None:
        """Settle the try. Idempotent.

        ``failed``: no response head came (``timed_out`` says whether the try timed
        out); else ``status`` is the response status. ``t_headers`` (monotonic ns, 0 =
        none) ends the elapsed time the balancer hears (pick → response head, or → now).
        An ``aborted`` failed try (the client went away, or the proxy answered itself) is
        no verdict on the target: a half-open trial on it is let through again. (All
        positional-or-keyword: the proxy calls it positionally, once per request.)
        """
        budget = self._retry_budget
        if budget is not None:
            self._retry_budget = None
            budget.retry_ended()
        load = self._load
        if load is not None:
            self._load = None
            load.release_request()
        balancer = self._balancer
        if balancer is not None:
            self._balancer = None
            balancer.on_request_end(
                self.address, ((t_headers or _now_ns()) - self.t_start) / 1e9, failed
            )
        health = self._health
        if health is not None:
            self._health = None
            if failed and aborted:
                health.report_aborted(self.address)
            else:
                health.report_passive(self.address, failed, timed_out, status)


def begin_try(upstream: CompiledUpstream, handle: BalancerHandle) -> Try | None:
    """Pick the address of the next try of ``handle``'s request, or ``None`` (no peer:
    the upstream is below its health threshold, or no address is usable; or, with
    ``handle.overloaded`` set, every usable address is at its ``max_requests`` cap).

    A retry slot taken by :func:`allow_retry` goes to the returned try (or, with no
    peer, back to the budget).
    """
    health = upstream.health
    budget = upstream.retry_budget
    retry_budget: RetryBudget | None = None
    if handle.retry_slot:
        handle.retry_slot = False
        retry_budget = budget
    load: TargetLoad | None = None
    if health is not None and health.below_threshold:
        address = None  # Kong: the balancer is unhealthy
    else:
        address = upstream.balancer.pick(handle)
        guard = upstream.overload
        if guard is not None and address is not None:
            address, load = guard.pick(upstream.balancer, handle, address)
            if address is None:
                handle.overloaded = True  # every usable address is at max_requests
    if address is None:
        if retry_budget is not None:
            retry_budget.retry_ended()
        return None
    balancer = upstream.balancer
    tracking: Balancer | None = None  # owed an on_request_end only when it tracks
    if balancer.tracks_requests:
        balancer.on_request_start(address)
        tracking = balancer
    if health is not None:
        if health.trial_waiting:
            health.on_pick(address)  # a half-open address: one request only
        if not health.passive_on:
            health = None
    if budget is not None and handle.budget is None:
        budget.request_started()
        handle.budget = budget
    return Try(address, _now_ns(), tracking, health, retry_budget, load)


def allow_retry(upstream: CompiledUpstream, handle: BalancerHandle) -> bool:
    """Whether the upstream's retry budget lets ``handle``'s request retry now; if so
    the retry is counted in (the next :func:`begin_try` hands the slot to its try).

    Always true without a budget, or before the request was counted in it."""
    budget = handle.budget
    if budget is None:
        return True
    if not budget.try_start_retry():
        return False
    handle.retry_slot = True
    return True


def end_request(handle: BalancerHandle) -> None:
    """``handle``'s request is finished: release its count (and an unused retry slot)
    in the retry budget. Idempotent."""
    budget = handle.budget
    if budget is None:
        return
    handle.budget = None
    if handle.retry_slot:
        handle.retry_slot = False
        budget.retry_ended()
    budget.request_ended()
