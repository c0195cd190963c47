"""Consistent hashing: a Ketama-style ring of ``slots`` positions (Kong's algorithm).

Building the ring (on every address change, never per request):

- every address with weight > 0 gets ``round(160 * weight / mean_weight)`` points (at
  least one): 160 each when weights are equal, whatever the number of addresses, as in
  Kong. Point ``i`` of an address lies at ``H(b"<key> <i>") % slots``;
- two points landing on one position: the one with the larger full 64-bit hash keeps it.
  That rule depends only on the two points, not on the order of insertion or on the
  other addresses, so adding or removing an address only moves the keys that address
  gains or loses (about 1/N of them), and every data plane builds the same ring from
  the same address set, whatever order it was listed in.

Looking a key up: ``H(key) % slots`` is a position; the owner is the first point at or
after it (clockwise, wrapping). A precomputed table maps each position to that point,
so a lookup is one hash and two indexings. When that owner is unusable (unhealthy) or
was already tried by this request, the walk goes on clockwise to the next point whose
address is usable and untried, so a retry goes to another target and the keys of a
down target spread over the others instead of piling onto one.

Failover targets (the target field ``failover``) get a ring of their own: the
primaries' ring serves while any primary is usable, the failover targets' ring when
none is (:meth:`Balancer.serving_tier`). Each ring is built over its own tier only, so
adding, removing or losing a failover target never moves a key between primaries, and
a key keeps one failover target while the primaries are down. In panic the walk skips
no address of the serving ring (health ignored). Kong 3.12 never sends traffic to the
failover targets of a consistent-hashing upstream.

``H`` is BLAKE2b with an 8-byte digest, stable across processes and Python versions
(never Python's randomised ``hash``). It is part of the ring's identity: changing it
remaps every key.

Departures from Kong: Kong resolves a collision by giving the later address (in sorted
order) an extra point, so adding an address slightly reshuffles points of the ones sorted
after it; Kong also walks counter-clockwise and, on a retry, may return the same address
again. Slow start does not apply (as with Envoy's ring hash: a key's target must not
change with time). ``BalancerHandle.hash_key`` ``None`` hashes ``b""``, as Kong hashes
``""`` when there is no value (so ``hash_on: none`` sends every request to one target).

Bounded load (Envoy's ``hash_balance_factor``, opt-in through
``BalancerOptions.hash_balance_factor``; 0 = off, else >= 100): the balancer counts the
tries in flight on each address and the walk from the key's point skips an address that
would then carry more than its bound::

    bound(a) = ceil(factor/100 * (in_flight_usable + 1) * weight(a) / usable_weight)

(with equal weights: ``factor/100`` times the average load counting the request being
placed, so ``150`` lets no target exceed 1.5 x the average, as Envoy's consistent
hashing with bounded loads). Some usable address is always within its bound (the bounds
add up to at least ``in_flight_usable + 1``), so a first try always finds one; a retry
whose untried addresses are all at their bound takes the first untried one on the walk
(plain consistent hashing). Without the factor nothing is counted: the proxy does not
even call the request hooks (``tracks_requests`` is false), and the pick is the plain one.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable
from hashlib import blake2b

from data_plane.balancers.base import Address, Balancer, BalancerHandle, BalancerOptions

#: Points per address when all weights are equal (Kong's ``SERVER_POINTS``).
POINTS_PER_ADDRESS = 160


def hash64(data: bytes) -> int:
    """The ring's stable 64-bit hash of ``data``."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "big")


class _Ring:
    """One ring over ``addresses`` (all weight > 0): immutable once built.

    ``ring``: owner of each occupied position, in position order; ``start``: position
    -> index into ``ring`` of the first point at or after it; ``empty_index``: where
    the key ``b""`` lands.
    """

    __slots__ = ("empty_index", "ring", "start")

    def __init__(self, addresses: list[Address], slots: int) -> None:
        best_hash: dict[int, int] = {}
        owner: dict[int, Address] = {}
        if addresses:
            mean = sum(a.weight for a in addresses) / len(addresses)
            for address in sorted(addresses, key=lambda a: a.key):
                points = max(1, round(POINTS_PER_ADDRESS * address.weight / mean))
                prefix = address.key.encode() + b" "
                for i in range(points):
                    h = hash64(prefix + str(i).encode())
                    pos = h % slots
                    held = best_hash.get(pos)
                    if held is None or h > held:
                        best_hash[pos] = h
                        owner[pos] = address
        positions = sorted(owner)
        self.ring: list[Address] = [owner[pos] for pos in positions]
        start = array("I", bytes(4 * slots)) if positions else array("I")
        previous_end = 0
        for index, pos in enumerate(positions):
            # Positions previous_end..pos (inclusive) belong to this point
            # (positions past the last point stay 0: they wrap).
            start[previous_end : pos + 1] = array("I", [index]) * (pos + 1 - previous_end)
            previous_end = pos + 1
        self.start = start
        self.empty_index = start[hash64(b"") % slots] if positions else 0


_EMPTY_RING = _Ring([], 1)


class ConsistentHashingBalancer(Balancer):
    """Ring-hash balancer; ``options.slots`` positions.

    State: the ring (rebuilt only when the address set changes; health changes and picks
    do not touch it). Cost of a pick: one BLAKE2b of the key plus a walk that is one step
    unless the owner is unhealthy or already tried; no allocation beyond the hash.
    """

    algorithm = "consistent-hashing"
    supports_slow_start = False

    def __init__(
        self,
        addresses: Iterable[Address],
        options: BalancerOptions | None = None,
        *,
        previous: Balancer | None = None,
    ) -> None:
        opts = options if options is not None else BalancerOptions()
        if not 1 <= opts.slots <= 2**20:
            raise ValueError(f"slots must be between 1 and {2**20}, got {opts.slots}")
        self._slots = opts.slots
        factor = opts.hash_balance_factor
        if factor != 0 and factor < 100:
            raise ValueError(f"hash_balance_factor must be 0 or at least 100, got {factor}")
        self._factor = factor
        #: In-flight tries per address key (bounded load only; every address with weight
        #: > 0 has an entry, so a report about an address that left is ignored).
        self._load: dict[str, int] = {}
        #: Keys and weights of the eligible addresses, and their sums (bounded load only).
        self._usable_keys: frozenset[str] = frozenset()
        self._usable_weight = 0
        self._usable_load = 0
        #: The serving ring (the primaries' or the failover targets'): owner address
        #: of each occupied position, in position order.
        self._ring: list[Address] = []
        #: position -> index into _ring of the first point at or after it.
        self._start = array("I")
        self._ring_of: tuple[Address, ...] | None = None
        self._empty_index = 0
        self._primary = _EMPTY_RING
        self._backup = _EMPTY_RING
        #: Keys the walk passes over: the unhealthy ones (none in panic).
        self._skip: set[str] = set()
        super().__init__(addresses, opts, previous=previous)
        # Per instance: without a factor the proxy skips the request hooks entirely.
        self.tracks_requests = factor > 0

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def hash_balance_factor(self) -> int:
        return self._factor

    def in_flight(self, key: str) -> int:
        """In-flight tries of an address by key (0 unless bounded load is on)."""
        return self._load.get(key, 0)

    def _rebuild(self) -> None:
        # The rings only depend on the address set; health and panic changes only
        # choose the ring that serves and what its walk skips.
        if self._ring_of is not self._addresses:
            self._ring_of = self._addresses
            weighted = [a for a in self._addresses if a.weight > 0]
            self._primary = _Ring([a for a in weighted if not a.failover], self._slots)
            self._backup = _Ring([a for a in weighted if a.failover], self._slots)
        active = self._primary
        if self._has_failover:
            tier = self.serving_tier()  # Balancer's eligibility rule: which tier serves
            if tier and tier[0].failover:
                active = self._backup
        self._ring = active.ring
        self._start = active.start
        self._empty_index = active.empty_index
        # In panic every point of the serving ring may be picked, healthy or not.
        self._skip = set() if self._panic else self._unhealthy
        if self._factor:
            self._count_usable()

    def _count_usable(self) -> None:
        """Bounded load's view of :meth:`Balancer.eligible` (the serving tier, health
        and panic applied): which keys share the load, their weight and load."""
        old = self._load
        self._load = {a.key: old.get(a.key, 0) for a in self._addresses if a.weight > 0}
        usable = self.eligible()
        self._usable_keys = frozenset(a.key for a in usable)
        self._usable_weight = sum(a.weight for a in usable)
        self._usable_load = sum(self._load[a.key] for a in usable)

    def on_request_start(self, address: Address) -> None:
        key = address.key
        load = self._load.get(key)
        if load is None:
            return
        self._load[key] = load + 1
        if key in self._usable_keys:
            self._usable_load += 1

    def on_request_end(self, address: Address, elapsed: float, failed: bool) -> None:
        key = address.key
        load = self._load.get(key)
        if not load:
            return
        self._load[key] = load - 1
        if key in self._usable_keys:
            self._usable_load -= 1

    def bound(self, address: Address) -> int:
        """The most in-flight tries ``address`` may carry after one more pick (bounded
        load on, ``address`` eligible): ``ceil(factor * (in_flight_usable + 1) * weight /
        (100 * usable_weight))``, in integers."""
        denominator = 100 * self._usable_weight
        if denominator <= 0:
            return 0
        return -(-(self._factor * (self._usable_load + 1) * address.weight) // denominator)

    def _index_of(self, key: bytes) -> int:
        if not self._ring:
            return 0
        return self._start[hash64(key) % self._slots]

    def owner_of(self, key: bytes) -> Address | None:
        """The owner of ``key`` on the serving ring, ignoring health (for tests and
        diagnostics)."""
        if not self._ring:
            return None
        return self._ring[self._index_of(key)]

    def pick(self, handle: BalancerHandle) -> Address | None:
        ring = self._ring
        if not ring:
            return None
        key = handle.hash_key
        index = self._empty_index if key is None else self._start[hash64(key) % self._slots]
        if self._factor:
            return self._pick_bounded(handle, ring, index)
        unhealthy = self._skip
        tried = handle.tried
        size = len(ring)
        fallback: Address | None = None
        for _ in range(size):
            address = ring[index]
            if address.key not in unhealthy:
                if address.key not in tried:
                    tried.add(address.key)
                    return address
                if fallback is None:
                    fallback = address
            index += 1
            if index == size:
                index = 0
        if fallback is None:
            return self._pick_off_ring(handle)
        # Every usable address was tried: start a new round from the key's owner.
        tried.clear()
        tried.add(fallback.key)
        return fallback

    def _pick_bounded(self, handle: BalancerHandle, ring: list[Address], index: int) -> Address | None:
        """:meth:`pick` with bounded load: the first usable, untried address on the walk
        that stays within its :meth:`bound`; else the first usable untried one; else (all
        tried) a new round from the key's owner, as the plain pick."""
        usable = self._usable_keys
        if not usable:
            return None
        load = self._load
        tried = handle.tried
        size = len(ring)
        untried: Address | None = None
        fallback: Address | None = None
        for _ in range(size):
            address = ring[index]
            key = address.key
            if key in usable:
                if key not in tried:
                    if load[key] + 1 <= self.bound(address):
                        tried.add(key)
                        return address
                    if untried is None:
                        untried = address
                elif fallback is None:
                    fallback = address
            index += 1
            if index == size:
                index = 0
        if untried is not None:
            tried.add(untried.key)
            return untried
        if fallback is None:
            return self._pick_off_ring(handle)
        tried.clear()
        tried.add(fallback.key)
        return fallback

    def _pick_off_ring(self, handle: BalancerHandle) -> Address | None:
        """The walk found no eligible address on the ring, yet one may exist: an address
        whose every point lost its position to heavier ones (a weight-1 address among
        weight-100s on a small ring has 1-3 points). Picks among those by the key's
        hash, so the request is served rather than refused. Rare: O(addresses)."""
        eligible = self.eligible()
        if not eligible:
            return None
        tried = handle.tried
        candidates = [a for a in eligible if a.key not in tried] or eligible
        key = handle.hash_key
        chosen = candidates[hash64(key if key is not None else b"") % len(candidates)]
        tried.add(chosen.key)
        return chosen
