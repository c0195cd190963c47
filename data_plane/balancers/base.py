"""The balancer interface every algorithm implements (one module per algorithm).

Modelled on Kong's ``kong/runloop/balancer/``: a balancer is built from an upstream's
targets, hands out one :class:`Address` per try, and a :class:`BalancerHandle` carried
by the request across its tries lets a retry skip the addresses it already tried.

Concurrency: balancers live on the data plane's single event loop thread and are not
thread-safe; ``pick`` never awaits, so no two picks interleave.
"""

from __future__ import annotations

import ipaddress
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

#: Kong's default port when a target is given without one.
DEFAULT_TARGET_PORT = 8000


@dataclass(frozen=True, slots=True)
class Address:
    """One place a request can be sent to.

    ``host`` is a hostname or an IP literal without brackets; ``key`` is the canonical
    ``host:port`` (IPv6 as ``[::1]:8000``) that identifies the address in balancers,
    connection pools and health reports. ``weight`` is Kong's 0..65535 (0 = never picked).
    """

    host: str
    port: int
    weight: int = 100
    key: str = field(default="", compare=False)
    #: ``key`` as bytes and the bare host as it appears in a Host header (IPv6 in
    #: brackets), precomputed so the proxy does no encoding per request.
    key_bytes: bytes = field(default=b"", compare=False, repr=False)
    host_bytes: bytes = field(default=b"", compare=False, repr=False)

    def __post_init__(self) -> None:
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        # Non-ASCII hostnames go on the wire in their IDNA form.
        host_bytes = bracketed.encode("ascii") if bracketed.isascii() else bracketed.encode("idna")
        object.__setattr__(self, "key", f"{bracketed}:{self.port}")
        object.__setattr__(self, "host_bytes", host_bytes)
        object.__setattr__(self, "key_bytes", host_bytes + b":%d" % self.port)


def parse_target(target: str, weight: int = 100) -> Address:
    """Parse Kong's ``host[:port]`` target string (IPv6 as ``[::1]:8000``).

    A missing port means :data:`DEFAULT_TARGET_PORT`, as in Kong. Raises ``ValueError``
    with a message naming the target when it is malformed.
    """
    if not isinstance(target, str) or not target or target != target.strip():
        raise ValueError(f"invalid target {target!r}")
    if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 65535:
        raise ValueError(f"invalid weight {weight!r} for target {target!r} (0..65535)")
    port_text: str | None
    if target.startswith("["):
        end = target.find("]")
        if end < 0:
            raise ValueError(f"invalid target {target!r}: unclosed '['")
        host = target[1:end]
        rest = target[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid target {target!r}")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"invalid target {target!r}: bad IPv6 address") from None
    else:
        if target.count(":") > 1:
            # A bare IPv6 literal: Kong accepts it without brackets and a port.
            try:
                ipaddress.IPv6Address(target)
            except ValueError:
                raise ValueError(f"invalid target {target!r}") from None
            host, port_text = target, None
        else:
            host, _, port_text_raw = target.partition(":")
            port_text = port_text_raw if ":" in target else None
        if not host or any(c in host for c in "/ ?#@"):
            raise ValueError(f"invalid target {target!r}: bad host")
    if port_text is None:
        port = DEFAULT_TARGET_PORT
    else:
        if not port_text.isdigit():
            raise ValueError(f"invalid target {target!r}: bad port")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"invalid target {target!r}: port out of range")
    return Address(host=host.lower(), port=port, weight=weight)


class BalancerHandle:
    """Per-request state carried across tries.

    ``retries`` counts tries after the first; ``tried`` holds the keys of the addresses
    already handed out (the balancer adds to it on every pick). ``hash_key`` is the
    consistent-hashing key the proxy computed for this request (``None`` for
    algorithms that do not hash). Owned by one request.
    """

    __slots__ = ("hash_key", "retries", "tried")

    def __init__(self, hash_key: bytes | None = None) -> None:
        self.retries = 0
        self.tried: set[str] = set()
        self.hash_key = hash_key


class Balancer(ABC):
    """A load-balancing algorithm over one upstream's addresses.

    Subclasses set ``algorithm`` and implement :meth:`pick`. Construction and
    :meth:`after_targets_changed` take the complete, ordered address list; addresses with
    weight 0 are kept (they are listed) but never picked.
    """

    algorithm: ClassVar[str]

    def __init__(self, addresses: Iterable[Address]) -> None:
        self._addresses: tuple[Address, ...] = ()
        self._unhealthy: set[str] = set()
        self.after_targets_changed(addresses)

    @property
    def addresses(self) -> tuple[Address, ...]:
        """All addresses, in configuration order, including weight-0 ones."""
        return self._addresses

    def fingerprint(self) -> tuple[tuple[str, int], ...]:
        """What identifies the target set; equal fingerprints mean state can be kept."""
        return tuple((a.key, a.weight) for a in self._addresses)

    def after_targets_changed(self, addresses: Iterable[Address]) -> None:
        """Replace the address set. Health marks of addresses that stay are kept."""
        self._addresses = tuple(addresses)
        keys = {a.key for a in self._addresses}
        self._unhealthy &= keys
        self._rebuild()

    def set_address_health(self, key: str, healthy: bool) -> None:
        """Mark an address (by ``key``) usable or not; unknown keys are ignored.

        The hook health checkers use; an unhealthy address is skipped by :meth:`pick`.
        """
        if healthy:
            self._unhealthy.discard(key)
        elif any(a.key == key for a in self._addresses):
            self._unhealthy.add(key)
        self._rebuild()

    def is_usable(self, address: Address) -> bool:
        return address.weight > 0 and address.key not in self._unhealthy

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
        """Recompute derived state after the address set or health changed."""

    @abstractmethod
    def pick(self, handle: BalancerHandle) -> Address | None:
        """Return the address for the next try, or ``None`` when none is usable.

        Must prefer an address whose key is not in ``handle.tried`` while one is left
        (a retry goes to a different target), fall back to the already tried ones when
        all usable addresses were tried, and add the chosen key to ``handle.tried``.
        Never blocks.
        """


def usable_subset(addresses: Sequence[Address], balancer: Balancer) -> list[Address]:
    """The addresses ``balancer`` may pick, in order (helper for algorithms and tests)."""
    return [a for a in addresses if balancer.is_usable(a)]
