"""Parsing of ``HOST:PORT`` listen and connect addresses (CLI flags of both planes)."""

from __future__ import annotations


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
