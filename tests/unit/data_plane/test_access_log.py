"""The access log's records: valid JSON whatever the request target holds, text lines
like every other log line, and one write per event-loop turn."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from data_plane.access_log import AccessLog


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_fd, write_fd = os.pipe()
    try:
        yield read_fd, write_fd
    finally:
        os.close(read_fd)
        os.close(write_fd)


def record(log: AccessLog, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "client_ip": b"10.0.0.7", "method": b"GET", "uri": b"/shop?id=1", "http10": False,
        "status": 200, "source": "upstream", "upstream": "10.0.0.3:80", "service": "shop",
        "route": "shop-route", "tries": 1, "request_ms": 4, "upstream_ms": 3, "proxy_ms": 0,
    }
    fields.update(overrides)
    log.record(**fields)


def read_lines(fd: int) -> list[str]:
    return os.read(fd, 1 << 20).decode().splitlines()


@pytest.mark.parametrize(
    "uri",
    [b'/a"b\\c', b"/caf\xe9?x=\x01", b"/q?next=%22%7D", b"/" + b"x" * 5000, b"*"],
)
async def test_every_json_record_parses_whatever_the_target_holds(
    pipe: tuple[int, int], uri: bytes
) -> None:
    log = AccessLog("json", component="data-plane-worker-1", fd=pipe[1])
    record(log, uri=uri, upstream=None, upstream_ms=None, proxy_ms=None, service=None,
           route=None, status=404, source="ferry", tries=0)
    log.flush()
    [line] = read_lines(pipe[0])
    entry = json.loads(line)
    assert entry["uri"] == uri.decode("latin-1")
    assert (entry["status"], entry["source"], entry["upstream"], entry["service"]) == (404, "ferry", None, None)
    assert entry["upstream_ms"] is None and entry["tries"] == 0
    assert (entry["component"], entry["logger"], entry["level"]) == ("data-plane-worker-1", "ferry.access", "info")
    assert entry["time"].endswith("Z")


async def test_a_json_record_carries_every_field(pipe: tuple[int, int]) -> None:
    log = AccessLog("json", fd=pipe[1])
    record(log, http10=True)
    log.flush()
    entry = json.loads(read_lines(pipe[0])[0])
    assert {k: v for k, v in entry.items() if k not in ("time", "message")} == {
        "level": "info", "component": "data-plane", "logger": "ferry.access",
        "client_ip": "10.0.0.7", "method": "GET", "uri": "/shop?id=1", "http_version": "1.0",
        "status": 200, "source": "upstream", "upstream": "10.0.0.3:80", "service": "shop",
        "route": "shop-route", "tries": 1, "request_ms": 4, "upstream_ms": 3, "proxy_ms": 0,
    }
    assert entry["message"] == (
        '10.0.0.7 "GET /shop?id=1 HTTP/1.0" 200 upstream 10.0.0.3:80 service=shop '
        "route=shop-route request_ms=4 upstream_ms=3"
    )


async def test_a_text_record_is_one_line_shaped_like_other_log_lines(pipe: tuple[int, int]) -> None:
    log = AccessLog("text", component="data-plane", fd=pipe[1])
    record(log, uri=b"/a\nb\x1b[31m")
    log.flush()
    [line] = read_lines(pipe[0])
    assert " INFO [data-plane] ferry.access: 10.0.0.7 \"GET /a\\nb\\x1b[31m HTTP/1.1\" 200 " in line


async def test_passwords_in_the_target_are_masked(pipe: tuple[int, int]) -> None:
    log = AccessLog("json", fd=pipe[1])
    record(log, uri=b"/x?u=redis://:hunter2@db:6379&authorization=Bearer%20abc")
    log.flush()
    text = "\n".join(read_lines(pipe[0]))
    assert "hunter2" not in text


async def test_records_of_one_loop_turn_go_out_in_one_write(pipe: tuple[int, int]) -> None:
    log = AccessLog("text", fd=pipe[1])
    for i in range(50):
        record(log, uri=f"/r{i}".encode())
    assert os.get_blocking(pipe[0])
    os.set_blocking(pipe[0], False)
    with pytest.raises(BlockingIOError):
        os.read(pipe[0], 1)  # nothing written yet: queued for the end of this turn
    await asyncio.sleep(0)
    lines = read_lines(pipe[0])
    assert [line.split('"GET ')[1].split(" ")[0] for line in lines] == [f"/r{i}" for i in range(50)]


async def test_a_closed_output_loses_records_but_never_raises() -> None:
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    log = AccessLog("text", fd=write_fd)
    try:
        record(log)
        log.flush()  # EPIPE (SIGPIPE is ignored by Python): swallowed
    finally:
        os.close(write_fd)
