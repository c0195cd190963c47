"""Sticky sessions (Kong 3.11's ``sticky-sessions``): a cookie pins a client to a target.

A request whose sticky cookie (``sticky_sessions_cookie``) names an eligible address it
has not tried yet goes there (eligible: :meth:`Balancer.eligible`, the one rule of
failover tiers, health and panic). Any other request (no cookie, a cookie naming no
address of this upstream, or one naming an address that is unhealthy, has weight 0, is
a failover target while a primary is usable, or was already tried by this request) is
balanced by least connections over the eligible addresses,
Ferry's choice for a new session: it spreads new sessions by the load the pinned ones
already put on each target. The proxy then answers with a ``Set-Cookie`` naming the
address the try went to (:class:`StickyCookie`), so a client whose target went down is
moved, and pinned, to a new one; a retry that answered from another address re-pins.

What the cookie holds, the *token* of an address: the first 16 bytes of
``BLAKE2b(key=salt, data=address.key)`` in hex, where the salt is the upstream's id
(``BalancerOptions.sticky_salt``). It is

- the same on every data plane of a cluster (same config, same address keys), so a
  client can hop between data planes and stay on its target;
- opaque: it does not carry the target's IP and port, and without the upstream's id
  (never shown to proxy clients) it cannot be computed from a guessed address;
- per address, not per target: a hostname target resolving to several IPs pins the
  client to one IP, where its session lives.

A token naming nothing (a target removed, a forged value) is treated as no cookie.

Kong's implementation (Kong Gateway, not published) is not copied; what is taken from
Kong is the interface: the algorithm's name, the two fields, ``hash_on`` left ``none``
and a cookie that names the chosen target.
"""

from __future__ import annotations

from collections.abc import Iterable
from hashlib import blake2b

from data_plane.balancers.base import Address, Balancer, BalancerHandle, BalancerOptions
from data_plane.balancers.least_connections import LeastConnectionsBalancer

__all__ = ["StickyCookie", "StickySessionsBalancer", "sticky_token"]


def sticky_token(salt: bytes, key: str) -> bytes:
    """The cookie value naming address ``key`` in the upstream salted by ``salt``."""
    return blake2b(key.encode(), digest_size=16, key=salt[:64]).hexdigest().encode("ascii")


class StickySessionsBalancer(LeastConnectionsBalancer):
    """The cookie's address while it is usable and untried; least connections otherwise.

    ``handle.hash_key`` is the request's sticky cookie value (``None`` or ``b""``: none).
    State: least connections' in-flight counts plus a token -> address map over every
    address with weight > 0 (rebuilt with the address set, not per pick). Cost of a pick
    with a valid cookie: one dict lookup; else a least-connections scan.
    """

    algorithm = "sticky-sessions"

    def __init__(
        self,
        addresses: Iterable[Address],
        options: BalancerOptions | None = None,
        *,
        previous: Balancer | None = None,
    ) -> None:
        opts = options if options is not None else BalancerOptions()
        self._salt = opts.sticky_salt.encode("utf-8")
        self._by_token: dict[bytes, Address] = {}
        self._token_of: dict[str, bytes] = {}
        #: Keys a cookie may pin to now: :meth:`Balancer.eligible` (the serving tier,
        #: health unless in panic), so a pinned failover target hands its clients back.
        self._pinnable: frozenset[str] = frozenset()
        super().__init__(addresses, opts, previous=previous)

    def _rebuild(self) -> None:
        super()._rebuild()
        # Tokens of the addresses that stay are kept (health changes rebuild too).
        old = self._token_of
        salt = self._salt
        token_of = {a.key: old.get(a.key) or sticky_token(salt, a.key) for a in self._addresses}
        self._token_of = token_of
        self._by_token = {token_of[a.key]: a for a in self._addresses if a.weight > 0}
        self._pinnable = frozenset(a.key for a in self.eligible())

    def token(self, address: Address) -> bytes:
        """The cookie value naming ``address`` (computed for an address not listed)."""
        token = self._token_of.get(address.key)
        return token if token is not None else sticky_token(self._salt, address.key)

    def address_for(self, token: bytes) -> Address | None:
        """The address a cookie value names, usable or not (``None``: no such address)."""
        return self._by_token.get(token)

    def pick(self, handle: BalancerHandle) -> Address | None:
        token = handle.hash_key
        if token:
            address = self._by_token.get(token)
            if address is not None and address.key in self._pinnable:
                tried = handle.tried
                if address.key not in tried:
                    tried.add(address.key)
                    return address
        return super().pick(handle)


class StickyCookie:
    """An upstream's sticky cookie: its name and path. Immutable; shared by requests.

    :meth:`header_for` is called by the proxy after each pick (a retry picks again) and
    gives the ``Set-Cookie`` line naming the picked address, or ``None`` when the
    request's cookie already names it.
    """

    __slots__ = ("_prefix", "_suffix", "name", "path")

    def __init__(self, name: str, path: str) -> None:
        self.name = name
        self.path = path
        self._prefix = b"Set-Cookie: " + name.encode("ascii") + b"="
        self._suffix = b"; Path=" + path.encode("ascii") + b"; HttpOnly\r\n"

    def header_for(self, balancer: Balancer, sent: bytes | None, address: Address) -> bytes | None:
        """The ``Set-Cookie`` line (with CRLF) naming ``address`` for a request that sent
        the cookie value ``sent`` (``None``: no cookie), or ``None`` when ``sent`` already
        names it. ``balancer`` is the upstream's (a :class:`StickySessionsBalancer`)."""
        # The runtime pairs a sticky cookie with this balancer only.
        assert isinstance(balancer, StickySessionsBalancer)
        token = balancer.token(address)
        if sent == token:
            return None
        return self._prefix + token + self._suffix

    def __repr__(self) -> str:
        return f"StickyCookie(name={self.name!r}, path={self.path!r})"
