"""Driving h2load (nghttp2 1.5x, Debian's ``nghttp2-client``) and reading its report.

h2load is to HTTP/2 what wrk is to HTTP/1.1: a closed-loop load generator, here with
``-c`` connections each keeping ``-m`` streams in flight. It runs for a duration
(``-D``) and prints a summary; :func:`parse_h2load_output` turns it into numbers.
h2load prints no latency percentiles (only min, max, mean and sd of "time for
request"), so :class:`H2loadResult` has ``p50_ms``/``p99_ms`` None and the mean.

h2load judges a response by its ``:status`` only: a gRPC call answered 200 with
``grpc-status: 13`` in its trailers counts as succeeded. The gRPC measurement
therefore checks its exact request with a client that reads trailers before it
measures (bench/h2_bench.py). :func:`grpc_message_frame` makes the request body
h2load sends (``-d``): one gRPC length-prefixed message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_UNITS_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_FINISHED_RE = re.compile(r"^finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s", re.MULTILINE)
_REQUESTS_RE = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout", re.MULTILINE
)
_STATUS_RE = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_TRAFFIC_RE = re.compile(r"^traffic: .*?\((\d+)\) total", re.MULTILINE)
_REQUEST_TIME_RE = re.compile(
    r"^time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)", re.MULTILINE
)
_PROTOCOL_RE = re.compile(r"^Application protocol: (\S+)", re.MULTILINE)


class H2loadOutputError(ValueError):
    """h2load's output lacks a part we need (h2load failed, or printed something else)."""


@dataclass(frozen=True)
class H2loadResult:
    """One h2load run. ``requests`` are the requests done (answered, any status) in the
    measured duration; ``requests_per_s`` is h2load's rate of succeeded ones."""

    requests: int
    duration_s: float
    requests_per_s: float
    total: int
    succeeded: int
    failed: int
    errored: int
    timeout: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    bytes_total: int
    latency_min_ms: float | None
    latency_max_ms: float | None
    latency_mean_ms: float | None
    #: ALPN's answer (``h2``) over TLS; ``h2c`` in cleartext; None if h2load printed none
    #: (no connection was made).
    protocol: str | None

    @property
    def p50_ms(self) -> float | None:
        return None

    @property
    def p99_ms(self) -> float | None:
        return None

    @property
    def errors(self) -> int:
        """Every request started in the measured time that did not end in a 2xx response:
        failed or reset streams, timeouts and 3xx/4xx/5xx answers."""
        return max(0, self.total - self.status_2xx)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["errors"] = self.errors
        return data


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_TO_MS[unit]


def parse_h2load_output(text: str) -> H2loadResult:
    """Parse the summary h2load prints at the end of a run."""
    finished = _FINISHED_RE.search(text)
    requests = _REQUESTS_RE.search(text)
    status = _STATUS_RE.search(text)
    if finished is None or requests is None or status is None:
        raise H2loadOutputError(f"not an h2load report: {text.strip()[-400:]!r}")
    total, _started, done, succeeded, failed, errored, timeout = map(int, requests.groups())
    s2, s3, s4, s5 = map(int, status.groups())
    traffic = _TRAFFIC_RE.search(text)
    request_time = _REQUEST_TIME_RE.search(text)
    protocol = _PROTOCOL_RE.search(text)
    return H2loadResult(
        requests=done,
        duration_s=_to_ms(*finished.group(1, 2)) / 1000.0,
        requests_per_s=float(finished.group(3)),
        total=total,
        succeeded=succeeded,
        failed=failed,
        errored=errored,
        timeout=timeout,
        status_2xx=s2,
        status_3xx=s3,
        status_4xx=s4,
        status_5xx=s5,
        bytes_total=int(traffic.group(1)) if traffic else 0,
        latency_min_ms=_to_ms(*request_time.group(1, 2)) if request_time else None,
        latency_max_ms=_to_ms(*request_time.group(3, 4)) if request_time else None,
        latency_mean_ms=_to_ms(*request_time.group(5, 6)) if request_time else None,
        protocol=protocol.group(1) if protocol else None,
    )


def h2load_command(
    url: str,
    *,
    duration: float,
    connections: int,
    streams: int,
    threads: int = 1,
    data: Path | None = None,
    headers: Mapping[str, str] | None = None,
    executable: str = "h2load",
) -> list[str]:
    """The h2load command line: ``connections`` × ``streams`` requests in flight for
    ``duration`` seconds (timing-based mode, no warm-up: the harness warms up itself).

    ``data`` makes every request a POST with that file as its body (h2load switches the
    method itself); ``headers`` are added to every request. ``https://`` URLs negotiate
    h2 by ALPN (h2load offers h2 first); ``http://`` ones use h2c with prior knowledge.
    """
    command = [
        executable,
        f"--threads={threads}",
        f"--clients={connections}",
        f"--max-concurrent-streams={streams}",
        f"--duration={max(1, round(duration))}",
        "--warm-up-time=0",
    ]
    if data is not None:
        command.append(f"--data={data}")
    for name, value in (headers or {}).items():
        command.append(f"--header={name}: {value}")
    return [*command, url]


def grpc_message_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message (the body of a unary request): a compressed-flag
    byte (0: not compressed), the message's length as 4 bytes big-endian, the message."""
    if len(message) >= 1 << 32:
        raise ValueError("a gRPC message is shorter than 4 GiB")
    return b"\x00" + len(message).to_bytes(4, "big") + message


def protobuf_bytes_field(number: int, value: bytes) -> bytes:
    """A protobuf message of one length-delimited field (``bytes``/``string``) — enough to
    make a real serialized request without generated code."""
    if not 1 <= number < 16:
        raise ValueError("field numbers 1..15 (one-byte key) only")
    return bytes([number << 3 | 2]) + _varint(len(value)) + value


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def unsupported_protocol(protocol: str | None, allowed: Sequence[str]) -> str | None:
    """Why a run whose h2load reported ``protocol`` does not count as one of ``allowed``
    (h2load fell back to HTTP/1.1 because ALPN did not offer h2, or connected nowhere),
    or None when it does."""
    if protocol in allowed:
        return None
    if protocol is None:
        return "h2load negotiated no protocol (no connection succeeded)"
    return f"h2load negotiated {protocol!r}, not {' or '.join(allowed)}"
