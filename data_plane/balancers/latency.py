"""Latency: the address with the lowest EWMA of response time relative to weight.

Each address keeps an exponentially weighted moving average of its tries' ``elapsed``
(seconds from the pick to the response head: connect + time to first response byte,
Kong's ``upstream_connect_time + upstream_response_time``). The average decays with
*time*, as Kong's (from Finagle's PeakEWMA): a sample taken ``dt`` seconds after the
previous one is blended with weight ``1 - exp(-dt / DECAY_SECONDS)`` (``DECAY_SECONDS``
10, Kong's ``DECAY_TIME``), so the average tracks roughly the last ten seconds whatever
the request rate.

Score at pick time: ``ewma * exp(-idle / DECAY_SECONDS) * (in_flight + 1) / weight``,
lowest wins:

- the ``exp(-idle / ...)`` factor is Kong's read-time decay toward zero: an address
  that was slow once and then got no traffic looks better and better, so it is tried
  again after a while (after ``10 * ln(slow / fast)`` seconds, e.g. ~46 s for a
  100 ms target next to a 1 ms one) and its average is refreshed by real samples;
- ``(in_flight + 1)`` is Finagle's load factor. Kong omits it and instead picks the best
  of two random addresses; without either, every request arriving between two
  responses would go to the same address. With one request at a time it is 1 and the
  score is Kong's ``ewma / weight``;
- ties (for instance no samples yet: every score 0) are taken in turn, starting after
  the previous winner.

A new address (added to a running balancer) starts at the average of the sampled
usable addresses, as in Kong, so it neither attracts every request (score 0) nor
starves. A failed try (no response head: refused, reset, timed out) counts as a
sample of ``max(elapsed, 2 x the slowest current average, FAILED_TRY_FLOOR)``:
a refused connection is fast, and must not make its address look like the best one.
Health checks, not this score, take a failing address out of rotation.

With slow start on, the weight in the score is the ramped (effective) weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from math import exp

from data_plane.balancers.base import Address, Balancer, BalancerHandle, BalancerOptions

#: Kong's ``DECAY_TIME``: the EWMA's time constant, seconds.
DECAY_SECONDS = 10.0
_NEG_INV_DECAY = -1.0 / DECAY_SECONDS
#: The smallest sample a failed try counts as, seconds.
FAILED_TRY_FLOOR = 1.0
#: A failed try counts as at least this multiple of the slowest current average.
FAILED_TRY_FACTOR = 2.0


class _Peer:
    """One address's latency statistics (not shared between balancers)."""

    __slots__ = ("address", "ewma", "in_flight", "key", "sampled", "touched", "weight")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.key = address.key
        self.ewma = 0.0
        #: Clock time of the last sample (or of the seeding for a new address).
        self.touched = 0.0
        #: False until the first sample (or seed): the first sample is taken as is.
        self.sampled = False
        self.in_flight = 0
        self.weight = float(address.weight)

    def decayed(self, now: float) -> float:
        idle = now - self.touched
        return self.ewma * exp(-idle / DECAY_SECONDS) if idle > 0 else self.ewma


class LatencyBalancer(Balancer):
    """Lowest time-decayed EWMA of response time relative to weight.

    Cost of a pick: O(number of usable addresses) with one ``exp`` each, one clock read,
    no allocation. Statistics of addresses that stay survive health changes, target
    changes and (via ``previous``) rebuilds for a new config version.
    """

    algorithm = "latency"

    def __init__(
        self,
        addresses: Iterable[Address],
        options: BalancerOptions | None = None,
        *,
        previous: Balancer | None = None,
    ) -> None:
        self._peers: dict[str, _Peer] = {}
        self._usable: list[_Peer] = []
        self._next = 0
        if isinstance(previous, LatencyBalancer):
            # Carry the averages (not the in-flight counts: those tries report to
            # the previous balancer).
            for key, old in previous._peers.items():
                peer = _Peer(old.address)
                peer.ewma, peer.touched, peer.sampled = old.ewma, old.touched, old.sampled
                self._peers[key] = peer
        super().__init__(addresses, options, previous=previous)

    def _rebuild(self) -> None:
        old = self._peers
        peers: dict[str, _Peer] = {}
        fresh: list[_Peer] = []
        for address in self._addresses:
            if address.weight <= 0:
                continue
            peer = old.get(address.key)
            if peer is None:
                peer = _Peer(address)
                fresh.append(peer)
            elif peer.address != address:
                peer.address = address  # same key, new weight: keep the statistics
            peers[address.key] = peer
        self._peers = peers
        self._usable = [peers[a.key] for a in self._addresses if self.is_usable(a)]
        if self._next >= len(self._usable):
            self._next = 0
        if fresh:
            self._seed_new(fresh)
        self._weights_changed()

    def _seed_new(self, fresh: list[_Peer]) -> None:
        """Start new addresses at the average of the sampled usable ones (Kong)."""
        now = self._clock()
        known = [p for p in self._usable if p.sampled and p not in fresh]
        if not known:
            return  # nothing measured yet: new addresses start unsampled like the rest
        average = sum(p.decayed(now) for p in known) / len(known)
        for peer in fresh:
            peer.ewma = average
            peer.touched = now
            peer.sampled = True

    def _weights_changed(self) -> None:
        weight = self.effective_weight
        for peer in self._usable:
            peer.weight = weight(peer.address)

    def ewma(self, key: str) -> float | None:
        """The current (time-decayed) average of an address, ``None`` before any sample."""
        peer = self._peers.get(key)
        if peer is None or not peer.sampled:
            return None
        return peer.decayed(self._clock())

    def on_request_start(self, address: Address) -> None:
        peer = self._peers.get(address.key)
        if peer is not None:
            peer.in_flight += 1

    def on_request_end(self, address: Address, elapsed: float, failed: bool) -> None:
        peer = self._peers.get(address.key)
        if peer is None:
            return  # removed meanwhile
        if peer.in_flight > 0:
            peer.in_flight -= 1
        now = self._clock()
        sample = elapsed if elapsed > 0 else 0.0
        if failed:
            slowest = max((p.decayed(now) for p in self._peers.values() if p.sampled), default=0.0)
            sample = max(sample, FAILED_TRY_FACTOR * slowest, FAILED_TRY_FLOOR)
        if peer.sampled:
            dt = now - peer.touched
            keep = exp(-dt / DECAY_SECONDS) if dt > 0 else 1.0
            peer.ewma = peer.ewma * keep + sample * (1.0 - keep)
        else:
            peer.ewma = sample
            peer.sampled = True
        peer.touched = now

    def pick(self, handle: BalancerHandle) -> Address | None:
        if self._ramp:
            self._tick_ramp()
        usable = self._usable
        n = len(usable)
        if not n:
            return None
        tried = handle.tried
        now = self._clock()
        best = self._scan(usable, n, tried, now) if tried else -1
        if best < 0:
            if tried:
                # Every usable address was tried: go round again over all of them.
                tried.clear()
            best = self._scan(usable, n, None, now)
        self._next = best + 1 if best + 1 < n else 0
        peer = usable[best]
        tried.add(peer.key)
        return peer.address

    def _scan(self, usable: list[_Peer], n: int, skip: set[str] | None, now: float) -> int:
        best = -1
        best_score = 0.0
        i = self._next
        rate = _NEG_INV_DECAY
        _exp = exp
        for _ in range(n):
            peer = usable[i]
            if skip is None or peer.key not in skip:
                ewma = peer.ewma
                if ewma:
                    idle = now - peer.touched
                    if idle > 0:
                        ewma *= _exp(idle * rate)
                score = ewma * (peer.in_flight + 1) / peer.weight
                if best < 0 or score < best_score:
                    best = i
                    best_score = score
            i += 1
            if i == n:
                i = 0
        return best
