"""Latency: the address with the lowest EWMA of response time relative to weight.

Each address keeps an exponentially weighted moving average of its tries' ``elapsed``
(seconds from the pick to the response head: connect + time to first response byte,
Kong's ``upstream_connect_time + upstream_response_time``). The average decays with
*time*, as Kong's (from Finagle's PeakEWMA): a sample taken ``dt`` seconds after the
previous one is blended with weight ``1 - exp(-dt / DECAY_SECONDS)`` (``DECAY_SECONDS``
10, Kong's ``DECAY_TIME``), so the average tracks roughly the last ten seconds whatever
the request rate.

Score and pick, as Kong's ``latency`` balancer (``kong/runloop/balancer/latency.lua``):

- the score of an address is its average decayed to now, relative to its weight:
  ``ewma * exp(-idle / DECAY_SECONDS) / weight``. The ``exp(-idle / ...)`` factor is
  Kong's read-time decay toward zero: an address that was slow once and then got no
  traffic looks better and better, so it is tried again after a while (after
  ``10 * ln(slow / fast)`` seconds, e.g. ~46 s for a 100 ms target next to a 1 ms
  one) and its average is refreshed by real samples. Requests in flight do not
  count (Kong's score has no load factor): with one fast and one slow target every
  request goes to the fast one, however many arrive at once;
- the pick is Kong's "power of two choices": among the usable addresses this request
  has not tried yet, two are drawn at random and the lower score wins; with two or
  fewer candidates the lowest of them wins. Ties (for instance no samples yet: every
  score 0) go to the one that comes first after the previous winner (Kong takes the
  first in its table order), so unsampled addresses share the first requests.

A new address (added to a running balancer) starts at the average of the sampled
usable addresses, as in Kong, so it neither attracts every request (score 0) nor
starves. An address's first sample is taken as its average (Kong blends it into a
zero average by the time since the balancer was built: the same ordering, smaller
numbers). A failed try (no response head: refused, reset, timed out) counts as a
sample of ``max(elapsed, 2 x the slowest current average, FAILED_TRY_FLOOR)``:
a refused connection is fast, and must not make its address look like the best one.
Health checks, not this score, take a failing address out of rotation.

With slow start on, the weight in the score is the ramped (effective) weight.
"""

from __future__ import annotations

import random
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

    __slots__ = ("address", "ewma", "key", "sampled", "touched", "weight")

    def __init__(self, address: Address) -> None:
        self.address = address
        self.key = address.key
        self.ewma = 0.0
        #: Clock time of the last sample (or of the seeding for a new address).
        self.touched = 0.0
        #: False until the first sample (or seed): the first sample is taken as is.
        self.sampled = False
        self.weight = float(address.weight)

    def decayed(self, now: float) -> float:
        idle = now - self.touched
        return self.ewma * exp(-idle / DECAY_SECONDS) if idle > 0 else self.ewma


class LatencyBalancer(Balancer):
    """Lowest time-decayed EWMA of response time relative to weight.

    Cost of a pick: two ``exp`` and two random draws with more than two usable
    addresses (O(tried) when a retry must avoid tried ones), one clock read. Statistics of addresses that stay survive health changes, target
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
        #: The random draws of the power-of-two-choices pick (replaceable in tests).
        self.random = random.Random()
        if isinstance(previous, LatencyBalancer):
            # Carry the averages.
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
        # The one eligibility rule (tiers, health, panic): Balancer.eligible.
        self._usable = [peers[a.key] for a in self.eligible()]
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

    def on_request_end(self, address: Address, elapsed: float, failed: bool) -> None:
        peer = self._peers.get(address.key)
        if peer is None:
            return  # removed meanwhile
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
        if tried:
            candidates = [i for i in range(n) if usable[i].key not in tried]
            if not candidates:
                # Every usable address was tried: go round again over all of them.
                tried.clear()
                candidates = list(range(n))
        else:
            candidates = None
        best = self._choose(usable, n, candidates, now)
        self._next = best + 1 if best + 1 < n else 0
        peer = usable[best]
        tried.add(peer.key)
        return peer.address

    def _choose(self, usable: list[_Peer], n: int, candidates: list[int] | None, now: float) -> int:
        """Index of the winner among ``candidates`` (None: every usable address)."""
        count = n if candidates is None else len(candidates)
        if count == 1:
            return 0 if candidates is None else candidates[0]
        if count == 2:
            pair = (0, 1) if candidates is None else (candidates[0], candidates[1])
        else:
            a, b = self.random.sample(range(count), 2)
            pair = (a, b) if candidates is None else (candidates[a], candidates[b])
        first, second = pair
        score_first = self._score(usable[first], now)
        score_second = self._score(usable[second], now)
        if score_first != score_second:
            return first if score_first < score_second else second
        # A tie: the one that comes first from the turn pointer.
        start = self._next
        return first if (first - start) % n <= (second - start) % n else second

    @staticmethod
    def _score(peer: _Peer, now: float) -> float:
        ewma = peer.ewma
        if ewma:
            idle = now - peer.touched
            if idle > 0:
                ewma *= exp(idle * _NEG_INV_DECAY)
        return ewma / peer.weight
