"""Parsing wrk's report: fixtures are real outputs of Debian's wrk 4.1 (``--latency``)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bench.wrk import (
    WrkOutputError,
    mean_think_time_ms,
    parse_wrk_output,
    think_time_script,
    varied_requests_script,
    wrk_command,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_microsecond_latencies() -> None:
    result = parse_wrk_output(fixture("wrk-direct-us.txt"))
    assert result.requests == 191033
    assert result.duration_s == pytest.approx(2.10)
    assert result.requests_per_s == pytest.approx(91003.33)
    assert result.p50_ms == pytest.approx(0.559)
    assert result.p99_ms == pytest.approx(0.830)
    assert result.percentiles_ms == pytest.approx({50.0: 0.559, 75.0: 0.564, 90.0: 0.631, 99.0: 0.830})
    assert result.latency_avg_ms == pytest.approx(0.52845)
    assert result.latency_stdev_ms == pytest.approx(0.13334)
    assert result.latency_max_ms == pytest.approx(1.01)
    assert result.bytes_read == int(2.96 * 1024**3)
    assert result.errors == 0
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}


def test_millisecond_latencies() -> None:
    result = parse_wrk_output(fixture("wrk-nginx-proxy-ms.txt"))
    assert result.requests == 185607
    assert result.requests_per_s == pytest.approx(61770.97)
    assert result.p50_ms == pytest.approx(2.97)
    assert result.p99_ms == pytest.approx(5.76)
    assert result.latency_stdev_ms == pytest.approx(0.64945)
    assert result.latency_max_ms == pytest.approx(8.54)


def test_non_2xx_responses_count_as_errors() -> None:
    result = parse_wrk_output(fixture("wrk-non2xx.txt"))
    assert result.non_2xx == 215029
    assert result.errors == 215029
    assert result.bytes_read == int(63.16 * 1024**2)


def test_socket_errors() -> None:
    result = parse_wrk_output(fixture("wrk-read-errors.txt"))
    assert result.requests == 0
    assert result.requests_per_s == 0
    assert result.socket_errors == {"connect": 0, "read": 57539, "write": 0, "timeout": 0}
    assert result.errors == 57539


def test_think_time_run() -> None:
    result = parse_wrk_output(fixture("wrk-think-time.txt"))
    assert result.requests == 17783
    assert result.p99_ms == pytest.approx(0.517)


def test_to_json_names_percentiles() -> None:
    data = parse_wrk_output(fixture("wrk-direct-us.txt")).to_json()
    assert data["percentiles_ms"] == pytest.approx({"p50": 0.559, "p75": 0.564, "p90": 0.631, "p99": 0.830})
    assert data["errors"] == 0


def test_seconds_and_minutes_units() -> None:
    text = fixture("wrk-nginx-proxy-ms.txt").replace("8.54ms", "1.50s").replace("5.76ms", "2.00m")
    result = parse_wrk_output(text)
    assert result.latency_max_ms == pytest.approx(1500.0)
    assert result.p99_ms == pytest.approx(120_000.0)


@pytest.mark.parametrize(
    "text",
    ["unable to connect to 127.0.0.1:18999 Connection refused\n", ""],
)
def test_not_a_report(text: str) -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk_output(text)


def test_report_without_latency_distribution() -> None:
    text = "\n".join(
        line for line in fixture("wrk-direct-us.txt").splitlines() if "%  " not in line or "Latency" in line
    )
    with pytest.raises(WrkOutputError, match="--latency"):
        parse_wrk_output(text)


def test_wrk_command() -> None:
    assert wrk_command("http://127.0.0.1:1/x", duration=10, connections=50) == [
        "wrk", "-t1", "-c50", "-d10s", "--timeout=5s", "--latency", "http://127.0.0.1:1/x",
    ]
    command = wrk_command("http://h/", duration=2.6, connections=8, script=Path("/tmp/s.lua"),
                          executable="/usr/bin/wrk")
    assert command[0] == "/usr/bin/wrk"
    assert "-d3s" in command
    assert command[-3:] == ["-s", "/tmp/s.lua", "http://h/"]


def test_mean_think_time() -> None:
    # 50 connections, 10,000 req/s: one request per 5 ms per connection; 0.4 ms of it is latency.
    assert mean_think_time_ms(50, 10_000, 0.4) == pytest.approx(4.6)
    assert mean_think_time_ms(50, 1_000_000, 0.4) == 0.0
    with pytest.raises(ValueError):
        mean_think_time_ms(50, 0, 0.4)


def test_think_time_script_defines_delay() -> None:
    script = think_time_script(3.25)
    assert "function delay()" in script
    assert "local mean = 3.250000" in script


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (make bench installs it)")
async def test_the_varied_requests_script_sends_every_request_to_a_target_of_its_own(
    tmp_path: Path,
) -> None:
    targets: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                targets.append(head.split(b" ", 2)[1])
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    script = tmp_path / "varied.lua"
    script.write_text(varied_requests_script())
    try:
        wrk = await asyncio.create_subprocess_exec(
            *wrk_command(f"http://127.0.0.1:{port}/bench/item", duration=1, connections=2,
                         script=script, executable=shutil.which("wrk") or "wrk"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(wrk.communicate(), 30)
    finally:
        server.close()
    assert parse_wrk_output(out.decode()).requests > 10
    assert len(targets) > 10 and len(set(targets)) == len(targets)
    assert all(t.startswith(b"/bench/item?n=") for t in targets)
