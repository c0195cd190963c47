"""Least-connections: the address with the fewest in-flight tries relative to weight.

The score of an address is ``(in_flight + 1) / weight`` (Kong's formula; the ``+ 1``
makes a heavier idle address beat a lighter idle one, and counts the request being
placed). The lowest score wins. Ties are broken round-robin: the scan starts just
after the previous winner, and only a strictly lower score displaces the first
candidate found, so equal addresses take turns instead of the first one in the list
taking every tie.

In-flight counts come from the proxy's reports: :meth:`on_request_start` after each
pick, :meth:`on_request_end` when that try ends. Counts live on per-address records
that survive health changes and target-set changes (for the addresses that stay);
a balancer built for a new config version starts from zero, because the tries in
flight at that moment report to the balancer that handed them out.

With slow start on, the weight in the score is the ramped (effective) weight.
"""

from __future__ import annotations

from collections.abc import Iterable

from data_plane.balancers.base import Address, Balancer, BalancerHandle, BalancerOptions


class _Peer:
    """One address's mutable counters (not shared between balancers)."""

    __slots__ = ("address", "in_flight", "key", "weight")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.key = address.key
        self.in_flight = 0
        self.weight = float(address.weight)


class LeastConnectionsBalancer(Balancer):
    """Fewest in-flight tries relative to weight; ties taken in turn.

    Cost of a pick: O(number of usable addresses), no allocation. Kong keeps a binary
    heap instead; with the tens of addresses an upstream usually has, one linear scan
    is as fast in Python and keeps the tie-breaking and the skipping of tried
    addresses simple.
    """

    algorithm = "least-connections"

    def __init__(
        self,
        addresses: Iterable[Address],
        options: BalancerOptions | None = None,
        *,
        previous: Balancer | None = None,
    ) -> None:
        #: Every address with weight > 0, by key (usable or not), so that reports about
        #: an address that went unhealthy mid-try still balance their counts.
        self._peers: dict[str, _Peer] = {}
        self._usable: list[_Peer] = []
        self._next = 0
        super().__init__(addresses, options, previous=previous)

    def _rebuild(self) -> None:
        old = self._peers
        peers: dict[str, _Peer] = {}
        for address in self._addresses:
            if address.weight <= 0:
                continue
            peer = old.get(address.key)
            if peer is None or peer.address != address:
                fresh = _Peer(address)
                if peer is not None:
                    fresh.in_flight = peer.in_flight  # same key, weight changed
                peer = fresh
            peers[address.key] = peer
        self._peers = peers
        # The one eligibility rule (tiers, health, panic): Balancer.eligible.
        self._usable = [peers[a.key] for a in self.eligible()]
        if self._next >= len(self._usable):
            self._next = 0
        self._weights_changed()

    def _weights_changed(self) -> None:
        weight = self.effective_weight
        for peer in self._usable:
            peer.weight = weight(peer.address)

    def in_flight(self, key: str) -> int:
        """In-flight tries of an address by key (0 for unknown keys)."""
        peer = self._peers.get(key)
        return peer.in_flight if peer is not None else 0

    def on_request_start(self, address: Address) -> None:
        peer = self._peers.get(address.key)
        if peer is not None:
            peer.in_flight += 1

    def on_request_end(self, address: Address, elapsed: float, failed: bool) -> None:
        peer = self._peers.get(address.key)
        if peer is not None and peer.in_flight > 0:
            peer.in_flight -= 1

    def pick(self, handle: BalancerHandle) -> Address | None:
        if self._ramp:
            self._tick_ramp()
        usable = self._usable
        n = len(usable)
        if not n:
            return None
        tried = handle.tried
        best = self._scan(usable, n, tried) if tried else -1
        if best < 0:
            if tried:
                # Every usable address was tried: go round again over all of them.
                tried.clear()
            best = self._scan(usable, n, None)
        self._next = best + 1 if best + 1 < n else 0
        peer = usable[best]
        tried.add(peer.key)
        return peer.address

    def _scan(self, usable: list[_Peer], n: int, skip: set[str] | None) -> int:
        best = -1
        best_score = 0.0
        i = self._next
        for _ in range(n):
            peer = usable[i]
            if skip is None or peer.key not in skip:
                score = (peer.in_flight + 1) / peer.weight
                if best < 0 or score < best_score:
                    best = i
                    best_score = score
            i += 1
            if i == n:
                i = 0
        return best
