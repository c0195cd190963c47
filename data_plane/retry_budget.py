"""Envoy's retry budget for one upstream (Ferry's opt-in ``retry_budget_percent``).

Retries of a failing target multiply the load on the others exactly when they may be
struggling. A budget caps the retries in progress at a share of the requests in
progress: a retry may start while

    active_retries < max(min_retry_concurrency, percent / 100 * active_requests)

(Envoy's ``retry_budget.budget_percent`` and ``min_retry_concurrency``, default 3, which
lets a quiet upstream still retry). A refused retry ends the request with the error
of the last try, as when retries are exhausted.

Counting, as the proxy does it: ``request_started()`` when a client request is bound
to the upstream, ``request_ended()`` exactly once when it is finished (whatever the
outcome); ``try_start_retry()`` before each retry, and ``retry_ended()`` exactly once
for every ``True`` it returned, when that retry try ends. "Active requests" counts
client requests, not tries; Envoy counts upstream requests, which includes the
retries themselves — counting them would let retries raise their own budget.

Pure, synchronous and not thread-safe: one instance per upstream, used from the data
plane's single event loop. Counters never go below zero, so a stray extra ``*_ended``
call cannot open the budget for good.
"""

from __future__ import annotations

__all__ = ["DEFAULT_MIN_RETRY_CONCURRENCY", "RetryBudget"]

#: Envoy's default ``min_retry_concurrency``.
DEFAULT_MIN_RETRY_CONCURRENCY = 3


class RetryBudget:
    """Active requests and active retries of one upstream, and the retry allowance."""

    __slots__ = ("active_requests", "active_retries", "min_retry_concurrency", "percent", "_ratio")

    def __init__(
        self, percent: object, min_retry_concurrency: int = DEFAULT_MIN_RETRY_CONCURRENCY
    ) -> None:
        # ``object``: checked here, so that compiled code does not coerce a bool first.
        if (
            isinstance(percent, bool)
            or not isinstance(percent, (int, float))
            or not 0 <= percent <= 100
        ):
            raise ValueError(f"retry budget percent must be between 0 and 100, got {percent!r}")
        if min_retry_concurrency < 0:
            raise ValueError("min_retry_concurrency must be >= 0")
        self.percent = float(percent)
        self.min_retry_concurrency = min_retry_concurrency
        self._ratio = self.percent / 100.0
        self.active_requests = 0
        self.active_retries = 0

    def allowed_retries(self) -> int:
        """How many retries may be in progress at once right now."""
        by_share = int(self._ratio * self.active_requests)  # rounded down, as Envoy
        return by_share if by_share > self.min_retry_concurrency else self.min_retry_concurrency

    def request_started(self) -> None:
        self.active_requests += 1

    def request_ended(self) -> None:
        if self.active_requests > 0:
            self.active_requests -= 1

    def try_start_retry(self) -> bool:
        """Count a retry in and return True when the budget allows one, else False."""
        if self.active_retries < self.allowed_retries():
            self.active_retries += 1
            return True
        return False

    def retry_ended(self) -> None:
        if self.active_retries > 0:
            self.active_retries -= 1

    def __repr__(self) -> str:
        return (
            f"RetryBudget(percent={self.percent:g}, active_requests={self.active_requests}, "
            f"active_retries={self.active_retries})"
        )
