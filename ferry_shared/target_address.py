"""Kong's ``host[:port]`` grammar: the one parser of target and service addresses.

The control plane validates targets, service hosts, route hosts and SNIs with it
(:mod:`control_plane.schemas.typedefs` turns :class:`HostPortError` into Kong's
``RuleError``); the data plane parses the targets and service hosts it compiles with
it (:func:`data_plane.balancers.parse_target`). One grammar, so a config the CP accepts
is one every DP can apply.

Pure functions; no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal

__all__ = ["DEFAULT_TARGET_PORT", "HostPort", "HostPortError", "parse_host"]

#: Kong's port for a target given without one.
DEFAULT_TARGET_PORT = 8000


class HostPortError(ValueError):
    """Not Kong's ``host[:port]``; ``str(self)`` is Kong's message."""


@dataclass(frozen=True)
class HostPort:
    """A parsed ``host[:port]``: ``kind`` is ``ipv4``, ``ipv6`` or ``name``."""

    kind: Literal["ipv4", "ipv6", "name"]
    host: str
    port: int | None

    def format(self, default_port: int | None = None) -> str:
        """``host:port`` (``[v6]:port``), the port defaulting to ``default_port``."""
        port = self.port if self.port is not None else default_port
        host = f"[{self.host}]" if self.kind == "ipv6" else self.host
        return host if port is None else f"{host}:{port}"


# Every pattern below is applied with ``fullmatch`` (or ends in ``\Z``), never ``match``
# with ``$``: ``$`` also matches before a final newline, so "x-a\n" would pass, reach
# every data plane and be refused there (or be written into a request). Digits are
# ``[0-9]``: ``\d`` matches any Unicode digit ("\u0668\u0660" is int() 80).
_HOSTNAME_CHARS = re.compile(r"[A-Za-z0-9\-._]+")
_IPV4_LIKE = re.compile(r"[0-9.]+(?::[0-9]+)?")
_BRACKETED_IPV6 = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")
_TRAILING_PORT = re.compile(r":([0-9]+)\Z")


def _parse_port(text: str) -> int:
    port = int(text)
    if port > 65535:
        raise HostPortError("invalid port number")
    return port


def parse_host(address: str, *, expand_ipv6: bool = True) -> HostPort:
    """Parse a hostname, IPv4 or ``[IPv6]`` (or a bare IPv6) with an optional port, as Kong.

    Raises :class:`HostPortError` with Kong's text (``invalid hostname: x``,
    ``invalid port number``, ``invalid ipv4 address: x``, ``invalid ipv6 address: x``).
    IPv6 addresses come back fully expanded, as Kong normalises them, unless
    ``expand_ipv6`` is false (the data plane keeps the text the control plane sent:
    it is the key health reports use).
    """
    if address.count(":") > 1 or address.startswith("["):
        match = _BRACKETED_IPV6.fullmatch(address)
        text, port_text = (match.group(1), match.group(2)) if match else (address, None)
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise HostPortError(f"invalid ipv6 address: {address}") from None
        port = _parse_port(port_text) if port_text else None
        return HostPort("ipv6", ip6.exploded if expand_ipv6 else text, port)
    if _IPV4_LIKE.fullmatch(address):
        host, _, port_text = address.partition(":")
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise HostPortError(f"invalid ipv4 address: {address}") from None
        return HostPort("ipv4", str(ip4), _parse_port(port_text) if port_text else None)
    name, port = address, None
    port_match = _TRAILING_PORT.search(address)
    if port_match:
        name = address[: port_match.start()]
        port = _parse_port(port_match.group(1))
    if not _HOSTNAME_CHARS.fullmatch(name):
        raise HostPortError(f"invalid hostname: {address}")
    labels = name.split(".")
    for index, label in enumerate(labels):
        # Empty labels only at the end (an FQDN's trailing dot); no label ends in '-'.
        if label.endswith("-") or (label == "" and index != len(labels) - 1):
            raise HostPortError(f"invalid hostname: {address}")
    return HostPort("name", name, port)
