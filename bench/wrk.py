"""Driving wrk (4.1, Debian's) and reading its output.

wrk prints a human report; :func:`parse_wrk_output` turns the one printed with
``--latency`` into numbers. Debian's wrk has no ``-R`` (fixed rate, that is wrk2),
so a lower, steady load is made with a Lua ``delay()`` hook (:func:`think_time_script`):
after each response a connection waits a random think time before its next request.
wrk starts a request's clock when it writes the request, after the think time, so the
latencies it reports exclude the wait.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

_UNITS_TO_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_SIZE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}

_REQUESTS_RE = re.compile(
    r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", re.MULTILINE
)
_RPS_RE = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_LATENCY_RE = re.compile(
    r"^\s*Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)", re.MULTILINE
)
_PERCENTILE_RE = re.compile(r"^\s*([\d.]+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.MULTILINE)
_SOCKET_ERRORS_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkOutputError(ValueError):
    """wrk's output lacks a part we need (wrk failed, or printed something else)."""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run. Latencies in milliseconds; ``percentiles_ms`` maps 50.0 → p50 etc."""

    requests: int
    duration_s: float
    requests_per_s: float
    bytes_read: int
    latency_avg_ms: float
    latency_stdev_ms: float
    latency_max_ms: float
    percentiles_ms: dict[float, float] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx: int = 0

    @property
    def p50_ms(self) -> float:
        return self.percentiles_ms[50.0]

    @property
    def p99_ms(self) -> float:
        return self.percentiles_ms[99.0]

    @property
    def errors(self) -> int:
        """Socket errors of every kind plus responses that were not 2xx/3xx."""
        return sum(self.socket_errors.values()) + self.non_2xx

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["percentiles_ms"] = {f"p{p:g}": v for p, v in self.percentiles_ms.items()}
        data["errors"] = self.errors
        return data


def _to_ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_TO_MS[unit]


def parse_wrk_output(text: str) -> WrkResult:
    """Parse the report of ``wrk --latency`` (wrk 4.x)."""
    requests = _REQUESTS_RE.search(text)
    rps = _RPS_RE.search(text)
    latency = _LATENCY_RE.search(text)
    if requests is None or rps is None or latency is None:
        raise WrkOutputError(f"not a wrk report: {text.strip()[:300]!r}")
    percentiles = {float(p): _to_ms(v, u) for p, v, u in _PERCENTILE_RE.findall(text)}
    if 50.0 not in percentiles or 99.0 not in percentiles:
        raise WrkOutputError("the wrk report has no latency distribution (run wrk with --latency)")
    socket_errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    match = _SOCKET_ERRORS_RE.search(text)
    if match:
        socket_errors = dict(zip(socket_errors, map(int, match.groups()), strict=True))
    non_2xx = _NON_2XX_RE.search(text)
    count, dur, dur_unit, size, size_unit = requests.groups()
    return WrkResult(
        requests=int(count),
        duration_s=_to_ms(dur, dur_unit) / 1000.0,
        requests_per_s=float(rps.group(1)),
        bytes_read=int(float(size) * _SIZE_UNITS[size_unit]),
        latency_avg_ms=_to_ms(*latency.group(1, 2)),
        latency_stdev_ms=_to_ms(*latency.group(3, 4)),
        latency_max_ms=_to_ms(*latency.group(5, 6)),
        percentiles_ms=percentiles,
        socket_errors=socket_errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


def wrk_command(
    url: str,
    *,
    duration: float,
    connections: int,
    threads: int = 1,
    script: Path | None = None,
    timeout_s: float = 5.0,
    executable: str = "wrk",
) -> list[str]:
    """The wrk command line (``--latency`` always: the p50/p99 come from it)."""
    command = [
        executable,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "--latency",
    ]
    if script is not None:
        command += ["-s", str(script)]
    return [*command, url]


def think_time_script(mean_ms: float) -> str:
    """A wrk Lua script: each connection waits a random think time before each request.

    The wait is exponentially distributed with mean ``mean_ms`` (so the many connections
    together send requests at random moments, roughly a Poisson stream, not in lockstep).
    wrk's timers count whole milliseconds, so each wait is rounded up or down at random
    in proportion, which keeps the mean exact.
    """
    return f"""-- written by bench/wrk.py: think time with mean {mean_ms:.4f} ms
local mean = {mean_ms:.6f}
math.randomseed(os.time())
function delay()
  local wait = -math.log(1 - math.random()) * mean
  local whole = math.floor(wait)
  if math.random() < wait - whole then
    whole = whole + 1
  end
  return whole
end
"""


def varied_requests_script() -> str:
    """A wrk Lua script: every request has a target of its own (a counter in the query
    string), as if from many different clients, so that nothing a proxy keeps for a
    repeated request line (Ferry: per connection, the last request's exchange and the
    router's answer) applies: the worst case for those, the same work for nginx."""
    return """-- written by bench/wrk.py: every request a different target
local n = 0
function request()
  n = n + 1
  return wrk.format(nil, wrk.path .. "?n=" .. n)
end
"""


def mean_think_time_ms(connections: int, target_rps: float, latency_ms: float) -> float:
    """The mean think time for ``connections`` to send ``target_rps`` in a closed loop.

    Each connection completes one request per (think time + latency), so the rate is
    ``connections / (think + latency)``.
    """
    if target_rps <= 0:
        raise ValueError("target_rps must be positive")
    return max(0.0, connections * 1000.0 / target_rps - latency_ms)
