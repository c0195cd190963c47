"""Smooth weighted round-robin (nginx's ``ngx_http_upstream_get_peer``).

Each pick adds every usable peer's weight to its running ``current`` score, takes the
peer with the highest score and subtracts the total weight from it. Over any window of
``sum(weights)`` picks each peer is chosen exactly ``weight`` times, and picks of a
heavy peer are spread out instead of coming in bursts (weights 5,1,1 give
``a a b a c a a``, not ``a a a a a b c``).

Kong shuffles a wheel of ``weight / gcd`` slots instead; the long-run shares are the
same, the smooth variant only avoids bursts.

Slow start scales a ramping address's weight (integers in thousandths, so a 10% ramp
of weight 1 still has a distinct weight); the scores carry over, so the sequence stays
smooth while the weights move.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_plane.balancers.base import Address, Balancer, BalancerHandle, BalancerOptions

#: Weights are kept in thousandths so slow-start fractions stay integers (exact
#: arithmetic; scaling every weight by one constant does not change the sequence).
_SCALE = 1000


class RoundRobinBalancer(Balancer):
    """Weighted round-robin without bursts over :meth:`Balancer.eligible` (weight-0
    and unhealthy addresses skipped, failover targets only while no primary is usable,
    health ignored in panic).

    State: one integer score per usable address, kept across health changes and, via
    ``compile_config(previous=...)``, across config versions with the same targets.
    Cost of a pick: O(number of usable addresses), no allocation.
    """

    algorithm = "round-robin"

    def __init__(
        self,
        addresses: Iterable[Address],
        options: BalancerOptions | None = None,
        *,
        previous: Balancer | None = None,
    ) -> None:
        self._usable: list[Address] = []
        self._weights: list[int] = []
        self._current: list[int] = []
        self._total = 0
        super().__init__(addresses, options, previous=previous)

    def _rebuild(self) -> None:
        previous = dict(zip((a.key for a in self._usable), self._current, strict=True))
        self._usable = self.eligible()
        self._current = [previous.get(a.key, 0) for a in self._usable]
        self._weights_changed()

    def _weights_changed(self) -> None:
        weight = self.effective_weight
        self._weights = [max(1, round(weight(a) * _SCALE)) for a in self._usable]
        self._total = sum(self._weights)

    def pick(self, handle: BalancerHandle) -> Address | None:
        if self._ramp:
            self._tick_ramp()
        usable = self._usable
        if not usable:
            return None
        tried = handle.tried
        weights = self._weights
        current = self._current
        best = -1
        if tried:
            # A retry: only addresses not tried yet take part in this round, as in
            # nginx, so the scores of the others are left untouched.
            total = 0
            for i, address in enumerate(usable):
                if address.key in tried:
                    continue
                current[i] += weights[i]
                total += weights[i]
                if best < 0 or current[i] > current[best]:
                    best = i
            if best < 0:
                # Every usable address was tried: go round again over all of them
                # (with a single target, the retries go to that target, as in Kong).
                tried.clear()
        if best < 0:
            total = self._total
            best = 0
            top = current[0] = current[0] + weights[0]
            for i in range(1, len(usable)):
                score = current[i] = current[i] + weights[i]
                if score > top:
                    best, top = i, score
        current[best] -= total
        address = usable[best]
        tried.add(address.key)
        return address
