"""The balancer interface every algorithm implements (one module per algorithm).

Modelled on Kong's ``kong/runloop/balancer/``: a balancer is built from an upstream's
targets, hands out one :class:`Address` per try, and a :class:`BalancerHandle` carried
by the request across its tries lets a retry skip the addresses it already tried.

Concurrency: balancers live on the data plane's single event loop thread and are not
thread-safe; ``pick`` never awaits, so no two picks interleave.

Slow start (Envoy's, opt-in per upstream with ``slow_start`` seconds): an address that
joins an existing address set, or turns healthy again, has its effective weight ramped
linearly from 10% (Envoy's default ``min_weight_percent``) to 100% over the window. The
base class keeps the ramp clock; algorithms that honour it (round-robin,
least-connections, latency) read :meth:`Balancer.effective_weight`. Consistent hashing
ignores it, as Envoy's ring hash does: a key's target must not depend on time.

Eligibility (which addresses an algorithm balances over) is decided here, in one
place, :meth:`Balancer.eligible`, and only when the address set, a health mark or the
panic flag changes, never per pick:

- **failover targets** (Kong 3.12's target ``failover``): the addresses form two tiers,
  primaries and failover targets. Traffic goes to the usable (weight > 0, healthy)
  primaries while there is one, else to the usable failover targets;
- **panic** (Envoy's panic mode, ``healthchecks.panic_threshold``; the health checker
  decides it and calls :meth:`Balancer.set_panic`): the serving tier is balanced over
  all its weight > 0 addresses, healthy or not. When no address of either tier is
  usable the serving tier is the primaries (the failover targets when no primary has
  weight > 0). Weight-0 addresses are never picked.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ferry_shared.target_address import DEFAULT_TARGET_PORT, HostPortError, parse_host

if TYPE_CHECKING:
    from data_plane.retry_budget import RetryBudget


@dataclass(frozen=True, slots=True)
class Address:
    """One place a request can be sent to.

    ``host`` is a hostname or an IP literal without brackets; ``key`` is the canonical
    ``host:port`` (IPv6 as ``[::1]:8000``) that identifies the address in balancers,
    connection pools and health reports. ``weight`` is Kong's 0..65535 (0 = never picked).
    ``failover``: see the module docstring (eligibility).
    """

    host: str
    port: int
    weight: int = 100
    key: str = field(default="", compare=False)
    #: ``key`` as bytes and the bare host as it appears in a Host header (IPv6 in
    #: brackets), precomputed so the proxy does no encoding per request.
    key_bytes: bytes = field(default=b"", compare=False, repr=False)
    host_bytes: bytes = field(default=b"", compare=False, repr=False)
    #: Kong 3.12's target ``failover``: picked only while no primary (non-failover)
    #: address is usable. Not part of ``key`` (the same address either way), but part
    #: of equality, so that a flag change is a change of the address set.
    failover: bool = False

    def __post_init__(self) -> None:
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        # Non-ASCII hostnames go on the wire in their IDNA form.
        host_bytes = bracketed.encode("ascii") if bracketed.isascii() else bracketed.encode("idna")
        object.__setattr__(self, "key", f"{bracketed}:{self.port}")
        object.__setattr__(self, "host_bytes", host_bytes)
        object.__setattr__(self, "key_bytes", host_bytes + b":%d" % self.port)


@dataclass(frozen=True, slots=True)
class ResolvedAddress(Address):
    """One address a DNS-named target resolved to (made by ``data_plane.dns_resolver``;
    here because the hot path compiles it with :class:`Address`).

    ``host`` is the IP connected to. ``hostname`` is the name sent as Host header (and
    SNI): the target's name, as in Kong, or with ``use_srv_name`` the SRV record's
    target. ``target`` is the configured target (``host:port``) the address belongs to
    and ``endpoint`` the address as the health view shows it: ``ip:port``, or for an SRV
    record pointing to a name ``name:port`` (Kong lists that name as the address).

    Identity (``key``, used by balancers, connection pools and health state) is per
    target **and** address: two targets resolving to the same IP are two addresses, each
    with its own weight and health (Kong's balancer keeps them apart too). The key is
    ``ip:port/target`` (``ip:port/target/endpoint`` for an SRV record naming a host).
    ``host_bytes``/``key_bytes`` (used only to build the Host header) carry ``hostname``
    and ``hostname:port``.
    """

    hostname: str = ""
    target: str = ""
    endpoint: str = ""

    def __post_init__(self) -> None:
        Address.__post_init__(self)
        ip_key = self.key
        if not self.endpoint:
            object.__setattr__(self, "endpoint", ip_key)
        if not self.target:
            object.__setattr__(self, "target", Address(self.hostname or self.host, self.port).key)
        key = f"{ip_key}/{self.target}"
        if self.endpoint != ip_key:
            key += f"/{self.endpoint}"
        object.__setattr__(self, "key", key)
        name = self.hostname.encode("ascii") if self.hostname.isascii() else self.hostname.encode("idna")
        object.__setattr__(self, "host_bytes", name)
        object.__setattr__(self, "key_bytes", name + b":%d" % self.port)


def parse_target(target: str, weight: object = 100, failover: object = False) -> Address:
    """Parse Kong's ``host[:port]`` target string (IPv6 as ``[::1]:8000`` or bare).

    The grammar is the control plane's (:func:`ferry_shared.target_address.parse_host`);
    a missing port means :data:`DEFAULT_TARGET_PORT`, as in Kong; port 0 is accepted as
    the Admin API accepts it (connecting to it fails: a 502). Host names are lowercased
    (they are keys); IPv6 literals are kept as written. Raises ``ValueError`` with a
    message naming the target when it is malformed. ``failover`` must be a bool
    (Kong 3.12's target field).
    """
    if not isinstance(target, str) or not target:
        raise ValueError(f"invalid target {target!r}")
    # ``weight: object``: checked here, so that compiled code does not coerce a bool first.
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 65535:
        raise ValueError(f"invalid weight {weight!r} for target {target!r} (0..65535)")
    if not isinstance(failover, bool):
        raise ValueError(f"invalid failover {failover!r} for target {target!r} (a boolean)")
    # ``weight`` is a plain int here (bools were refused), so ``(target, 1)`` and
    # ``(target, True)`` cannot share a cache entry.
    return _parse_target(target, weight, failover)


@functools.lru_cache(maxsize=1 << 16)
def _parse_target(target: str, weight: int, failover: bool = False) -> Address:
    """:func:`parse_target` once its arguments' types are checked. Cached: a config
    change recompiles every target of the upstreams it touches, and an
    :class:`Address` is immutable, so the same text and weight share one."""
    try:
        parsed = parse_host(target, expand_ipv6=False)
    except HostPortError as exc:
        raise ValueError(f"invalid target {target!r}: {exc}") from None
    port = DEFAULT_TARGET_PORT if parsed.port is None else parsed.port
    return Address(host=parsed.host.lower(), port=port, weight=weight, failover=failover)


class BalancerHandle:
    """Per-request state carried across tries (Kong's balancer handle).

    ``retries`` counts tries after the first; ``tried`` holds the keys of the addresses
    already handed out (the balancer adds to it on every pick). ``hash_key`` is the
    consistent-hashing key the proxy computed for this request (``None`` for
    algorithms that do not hash; consistent hashing then hashes ``b""``, as Kong does).
    ``budget`` is the retry budget this request is counted in and ``retry_slot`` a
    retry counted in it that no try holds yet (both kept by
    :mod:`data_plane.upstream_try`). Owned by one request.
    """

    __slots__ = ("budget", "hash_key", "retries", "retry_slot", "tried", "overloaded")

    def __init__(self, hash_key: bytes | None = None) -> None:
        self.retries = 0
        self.tried: set[str] = set()
        self.hash_key = hash_key
        self.budget: RetryBudget | None = None
        self.retry_slot = False
        #: The last pick found every usable address at its ``max_requests`` cap
        #: (:mod:`data_plane.overload`): the proxy answers 503 overloaded, not "no peer".
        self.overloaded = False


#: Envoy's ``slow_start_config.min_weight_percent`` default: where a ramp starts.
SLOW_START_MIN_FACTOR = 0.1
#: Ramp factors are recomputed at most this many times over one slow-start window
#: (1% steps), so a pick during a ramp usually costs one clock read more, not O(n).
_RAMP_STEPS = 100


@dataclass(frozen=True, slots=True)
class BalancerOptions:
    """Per-upstream balancer settings (immutable; equal options allow state reuse).

    ``slots``: consistent-hashing ring size (Kong's 10..65536, default 10000); other
    algorithms ignore it. ``slow_start``: seconds over which a new or recovered address
    ramps its weight from 10% to 100%; 0 (default) turns slow start off. ``clock``:
    monotonic seconds, injectable for tests; not part of equality.
    ``hash_balance_factor``: consistent hashing's bounded load (Envoy's), 0 = off, else
    >= 100 (see :mod:`.consistent_hashing`). ``sticky_salt``: the sticky-sessions
    balancer's cookie key (the upstream's id, so every data plane maps a cookie to the
    same address; see :mod:`.sticky_sessions`). Other algorithms ignore both.
    """

    slots: int = 10000
    slow_start: float = 0.0
    hash_balance_factor: int = 0
    sticky_salt: str = ""
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)


DEFAULT_OPTIONS = BalancerOptions()


@functools.lru_cache(maxsize=1 << 16)
def _is_ip(host: str) -> bool:
    """Whether ``host`` is an IP literal (cached: every balancer build asks for each address)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class Balancer(ABC):
    """A load-balancing algorithm over one upstream's addresses.

    Subclasses set ``algorithm`` and implement :meth:`pick` and :meth:`_rebuild`.
    Construction and :meth:`after_targets_changed` take the complete, ordered address
    list; addresses with weight 0 are kept (they are listed) but never picked.

    ``previous`` (optional) is the balancer this one replaces when a new config version
    changed the upstream's targets: health marks and slow-start ramps of the addresses
    that stay are carried over (subclasses carry their own statistics too). The previous
    balancer itself is never modified; requests still in flight on it report to it.
    """

    algorithm: ClassVar[str]
    #: False for algorithms that ignore slow start (consistent hashing).
    supports_slow_start: ClassVar[bool] = True
    #: Whether the algorithm overrides :meth:`on_request_start` / :meth:`on_request_end`
    #: (set for each subclass); the default of :attr:`tracks_requests`.
    overrides_request_hooks: ClassVar[bool] = False
    #: Whether the proxy must call :meth:`on_request_start` / :meth:`on_request_end`
    #: (per instance: consistent hashing tracks only with a ``hash_balance_factor``);
    #: the proxy skips the two calls per request otherwise.
    tracks_requests: bool

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.overrides_request_hooks = (
            cls.on_request_start is not Balancer.on_request_start
            or cls.on_request_end is not Balancer.on_request_end
        )

    def __init__(
        self,
        addresses: Iterable[Address],
        options: BalancerOptions | None = None,
        *,
        previous: Balancer | None = None,
    ) -> None:
        self.options = options if options is not None else DEFAULT_OPTIONS
        self.tracks_requests = self.overrides_request_hooks
        self._clock = self.options.clock
        self._slow_start = float(self.options.slow_start) if self.supports_slow_start else 0.0
        self._addresses: tuple[Address, ...] = ()
        self._unhealthy: set[str] = set()
        #: Panic mode (set by the health checker): balance ignoring health.
        self._panic = False
        #: Whether any address is a failover target (else eligibility is one filter).
        self._has_failover = False
        #: Addresses in their slow-start window: key -> ramp start (clock seconds).
        self._ramp: dict[str, float] = {}
        #: Current factor (0.1..1) of each ramping address; refreshed by _tick_ramp.
        self._ramp_factor: dict[str, float] = {}
        self._ramp_due = 0.0
        addresses = tuple(addresses)
        # Which keys count as "already there" when deciding what is new (slow start).
        # A config rebuild seeds them from the previous balancer; ``None`` (a fresh
        # balancer) means "everything is already there": the first address set of an
        # upstream does not ramp, since ramping all addresses together changes nothing.
        # The seed also covers the next after_targets_changed call when targets are
        # hostnames, because that call is the DNS resolver's expansion of the same
        # targets into IPs, which are not new either.
        self._seed: frozenset[str] | None = None
        if previous is not None:
            self._unhealthy = set(previous._unhealthy)
            if self._slow_start > 0:  # not when slow start was just turned off
                self._ramp = dict(previous._ramp)
            self._seed = frozenset(a.key for a in previous._addresses)
        self._seed_calls = 2 if any(not _is_ip(a.host) for a in addresses) else 1
        self.after_targets_changed(addresses)

    @property
    def addresses(self) -> tuple[Address, ...]:
        """All addresses, in configuration order, including weight-0 ones."""
        return self._addresses

    def fingerprint(self) -> tuple[tuple[str, int, bool], ...]:
        """What identifies the address set; equal fingerprints mean state can be kept."""
        return tuple((a.key, a.weight, a.failover) for a in self._addresses)

    def after_targets_changed(self, addresses: Iterable[Address]) -> None:
        """Replace the address set (the DNS resolver's hook; also used at construction).

        Health marks of addresses that stay are kept; with slow start on, an address
        not in the previous set starts its ramp now. Never awaits.
        """
        new = tuple(addresses)
        keys = {a.key for a in new}
        seeding = self._seed_calls > 0
        if self._slow_start > 0:
            if seeding and self._seed is None:
                known: set[str] | None = None
            else:
                known = {a.key for a in self._addresses}
                if seeding and self._seed is not None:
                    known |= self._seed
            if known is not None:
                now = self._clock()
                for a in new:
                    if a.key not in known:
                        self._ramp[a.key] = now
        if seeding:
            self._seed_calls -= 1
            # Keep the previous balancer's health marks while its IPs may come back
            # from the DNS expansion that follows.
            if self._seed is not None:
                keys_kept = keys | self._seed
            else:
                keys_kept = keys
            if self._seed_calls == 0:
                self._seed = None
        else:
            keys_kept = keys
        self._unhealthy &= keys_kept
        if self._ramp:
            self._ramp = {k: v for k, v in self._ramp.items() if k in keys_kept}
        self._addresses = new
        self._has_failover = any(a.failover for a in new)
        self._compute_ramp_factors()
        self._rebuild()

    def set_address_health(self, key: str, healthy: bool) -> None:
        """Mark an address (by ``key``) usable or not; unknown keys are ignored.

        The hook health checkers use; an unhealthy address is skipped by :meth:`pick`.
        With slow start on, an address turning healthy again starts a ramp.
        """
        if healthy:
            if key not in self._unhealthy:
                return
            self._unhealthy.discard(key)
            if self._slow_start > 0:
                self._ramp[key] = self._clock()
                self._compute_ramp_factors()
        elif key in self._unhealthy or not any(a.key == key for a in self._addresses):
            return
        else:
            self._unhealthy.add(key)
        self._rebuild()

    def is_usable(self, address: Address) -> bool:
        """Weight > 0 and not marked unhealthy (whatever its tier and the panic flag)."""
        return address.weight > 0 and address.key not in self._unhealthy

    # ------------------------------------------------------------------ eligibility

    @property
    def in_panic(self) -> bool:
        """Whether the balancer is in panic mode (see :meth:`set_panic`)."""
        return self._panic

    def set_panic(self, panic: bool) -> None:
        """Enter or leave panic mode: the serving tier is balanced over all its
        weight > 0 addresses, ignoring health marks. The health checker's call (it
        decides from ``healthchecks.panic_threshold``); rebuilds only on a change."""
        if panic == self._panic:
            return
        self._panic = panic
        self._rebuild()

    def serving_tier(self) -> list[Address]:
        """The weight > 0 addresses of the tier traffic goes to, in order.

        The primaries (``failover`` false) while any of them is usable, else the
        failover targets while any of them is usable; with no usable address in
        either tier, the primaries, or the failover targets when no primary has
        weight > 0. Without failover targets: every weight > 0 address.
        """
        if not self._has_failover:
            return [a for a in self._addresses if a.weight > 0]
        unhealthy = self._unhealthy
        primaries: list[Address] = []
        backups: list[Address] = []
        primary_usable = backup_usable = False
        for a in self._addresses:
            if a.weight <= 0:
                continue
            if a.failover:
                backups.append(a)
                backup_usable = backup_usable or a.key not in unhealthy
            else:
                primaries.append(a)
                primary_usable = primary_usable or a.key not in unhealthy
        if primary_usable:
            return primaries
        if backup_usable or not primaries:
            return backups
        return primaries

    def eligible(self) -> list[Address]:
        """The addresses the algorithm balances over, in configuration order: the
        single eligibility rule (tiers, health, panic) every algorithm builds its
        candidates from in :meth:`_rebuild`. O(addresses); never called per pick."""
        tier = self.serving_tier()
        if self._panic:
            return tier
        unhealthy = self._unhealthy
        return [a for a in tier if a.key not in unhealthy]

    # ------------------------------------------------------------------ slow start

    def effective_weight(self, address: Address) -> float:
        """``address.weight`` scaled by its slow-start factor (as of the last refresh)."""
        factor = self._ramp_factor.get(address.key)
        return address.weight if factor is None else address.weight * factor

    def ramp_factor(self, key: str) -> float:
        """The slow-start factor of an address now: 1.0 when not ramping."""
        if self._ramp:
            self._tick_ramp(force=True)
        return self._ramp_factor.get(key, 1.0)

    def _tick_ramp(self, force: bool = False) -> None:
        """Refresh ramp factors when due; call at the top of :meth:`pick` while
        ``self._ramp`` is non-empty. Calls :meth:`_weights_changed` on a refresh."""
        now = self._clock()
        if not force and now < self._ramp_due:
            return
        self._compute_ramp_factors(now)
        self._weights_changed()

    def _compute_ramp_factors(self, now: float | None = None) -> None:
        factors = self._ramp_factor
        factors.clear()
        if not self._ramp:
            return
        if now is None:
            now = self._clock()
        window = self._slow_start
        done = []
        for key, start in self._ramp.items():
            # Linear in time (Envoy's aggression 1.0), never below the minimum.
            factor = (now - start) / window
            if factor >= 1.0:
                done.append(key)
            else:
                factors[key] = factor if factor > SLOW_START_MIN_FACTOR else SLOW_START_MIN_FACTOR
        for key in done:
            del self._ramp[key]
        self._ramp_due = now + window / _RAMP_STEPS

    def _weights_changed(self) -> None:
        """Effective weights changed (slow start advanced). Default: full rebuild."""
        self._rebuild()

    # ------------------------------------------------------------------ reports

    def on_request_start(self, address: Address) -> None:
        """The proxy is about to send a try to ``address`` (after a successful pick).

        Report callback for algorithms that track in-flight requests; a no-op here.
        Every call is matched by exactly one :meth:`on_request_end`.
        """
        return None  # a deliberate no-op default, not an abstract method

    def on_request_end(self, address: Address, elapsed: float, failed: bool) -> None:
        """The try to ``address`` ended after ``elapsed`` seconds (connect + response
        headers), ``failed`` when no response came. A no-op here."""
        return None

    @abstractmethod
    def _rebuild(self) -> None:
        """Recompute derived state after the address set, health or weights changed."""

    @abstractmethod
    def pick(self, handle: BalancerHandle) -> Address | None:
        """Return the address for the next try, or ``None`` when none is usable.

        Must prefer an address whose key is not in ``handle.tried`` while one is left
        (a retry goes to a different target), fall back to the already tried ones when
        all usable addresses were tried, and add the chosen key to ``handle.tried``.
        Never blocks.
        """


def usable_subset(addresses: Sequence[Address], balancer: Balancer) -> list[Address]:
    """The addresses of ``addresses`` ``balancer`` may pick (:meth:`Balancer.eligible`),
    in order (helper for tests)."""
    eligible = {a.key for a in balancer.eligible()}
    return [a for a in addresses if a.key in eligible]
