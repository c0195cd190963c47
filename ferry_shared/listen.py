"""``HOST:PORT`` listen and connect addresses (CLI flags of both planes), Kong's listen
lists (``0.0.0.0:8000, 0.0.0.0:8443 ssl``), and free ports."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: The flags a listen entry may carry after its address, as Kong's ``proxy_listen`` and
#: ``admin_listen``: ``ssl`` (TLS on that port), ``http2`` (HTTP/2 on it), ``reuseport``
#: (accepted: every Ferry proxy listener already uses ``SO_REUSEPORT`` with workers), and
#: ``backlog=N`` (the listen queue). Kong's others (``deferred``, ``bind``,
#: ``proxy_protocol``, ``so_keepalive``) are refused by name rather than ignored.
ListenFlag = Literal["ssl", "http2", "reuseport"]
_FLAGS: frozenset[str] = frozenset({"ssl", "http2", "reuseport"})


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """One entry of a listen list: where to bind, and whether the port speaks TLS."""

    host: str
    port: int
    ssl: bool = False
    http2: bool = False
    #: ``backlog=N``: the listen queue length (``None``: the server's default).
    backlog: int | None = None

    def __str__(self) -> str:
        flags = "".join(f" {name}" for name, on in (("ssl", self.ssl), ("http2", self.http2)) if on)
        if self.backlog is not None:
            flags += f" backlog={self.backlog}"
        return format_host_port(self.host, self.port) + flags


def parse_listen_list(value: str, *, default_host: str = "0.0.0.0") -> tuple[ListenAddress, ...]:
    """Parse Kong's listen list: comma-separated ``HOST:PORT [flag ...]`` entries.

    Raises ValueError naming the bad entry: an empty list, an address that
    :func:`parse_host_port` rejects, an unknown flag, or the same host and port twice.
    """
    entries: list[ListenAddress] = []
    for raw in value.split(","):
        words = raw.split()
        if not words:
            raise ValueError(f"invalid listen list {value!r}: an entry is empty")
        host, port = parse_host_port(words[0], default_host=default_host)
        flags = words[1:]
        backlog: int | None = None
        for flag in [f for f in flags if f.startswith("backlog=")]:
            try:
                backlog = int(flag.removeprefix("backlog="))
            except ValueError:
                backlog = -1
            if not 1 <= backlog <= 65535:
                raise ValueError(f"invalid listen entry {raw.strip()!r}: backlog must be 1-65535")
            flags.remove(flag)
        unknown = [flag for flag in flags if flag not in _FLAGS]
        if unknown:
            raise ValueError(
                f"invalid listen entry {raw.strip()!r}: unknown flag {unknown[0]!r} "
                f"(known: {', '.join(sorted(_FLAGS))}, backlog=N)"
            )
        entry = ListenAddress(host, port, ssl="ssl" in flags, http2="http2" in flags, backlog=backlog)
        if port != 0 and any((e.host, e.port) == (host, port) for e in entries):
            raise ValueError(f"invalid listen list {value!r}: {words[0]} is listed twice")
        entries.append(entry)
    return tuple(entries)


def parse_host_port(value: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """Split ``HOST:PORT``, ``[IPv6]:PORT`` or ``:PORT``; raise ValueError with the bad value.

    Port 0 is allowed (bind an ephemeral port; tests use it).
    """
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid address {value!r}: expected [IPv6]:PORT")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"invalid address {value!r}: expected HOST:PORT")
    host = host or default_host
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid address {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"invalid address {value!r}: port must be between 0 and 65535")
    return host, port


def format_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_handed_out: set[int] = set()

#: Where :func:`free_port` looks first: below the kernel's ephemeral range, so that no
#: outgoing connection of any process on the machine can take the port as its local
#: port between the pick and the bind (``bind(0)`` hands out ports from that range).
_QUIET_PORTS_FROM = 10_000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller, often a child process, binds it
    soon after).

    Chosen at random below the kernel's ephemeral port range when there is room there
    (any outgoing connection takes its local port from that range, and one landing on
    the port between this pick and the caller's bind would make the bind fail), else
    the kernel's choice. Never the same port twice in one process: the kernel may
    offer a port again as soon as the probe socket closes, before the first caller
    has bound it.
    """
    start = _ephemeral_start()
    if start - _QUIET_PORTS_FROM >= 1000:
        for _ in range(100):
            port = random.randrange(_QUIET_PORTS_FROM, start)
            if port not in _handed_out and _bindable(host, port):
                _handed_out.add(port)
                return port
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
