"""``ferry up --data-planes 3`` with its default ports, as a real process.

The defaults are the point (the second data plane's proxy once took the Admin
API's port 8001), so this test uses them: it waits for them to be free first,
and at the end stops everything and waits until they are free again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.http import get_json
from tests.support.polling import wait_for
from tests.support.processes import processes_mentioning

#: What ``ferry up --data-planes 3`` listens on by default.
DEFAULT_PORTS = {
    "Admin API": 8001, "cluster": 8005,
    "DP 1 proxy": 8000, "DP 1 status": 8100,
    "DP 2 proxy": 8010, "DP 2 status": 8110,
    "DP 3 proxy": 8020, "DP 3 status": 8120,
}


def _busy_ports() -> list[int]:
    busy = []
    for port in DEFAULT_PORTS.values():
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(port)
    return busy


async def test_ferry_up_with_three_data_planes_on_the_default_ports(tmp_path: Path) -> None:
    await wait_for(lambda: not _busy_ports(), timeout=30,
                   message=f"ferry up's default ports {sorted(DEFAULT_PORTS.values())} to be free")
    data_dir = tmp_path / "up"
    log_path = tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}  # the defaults
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ferry", "up", "--data-planes", "3", "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    try:
        async with aiohttp.ClientSession() as http:

            async def all_synced() -> list[dict[str, Any]] | None:
                assert process.poll() is None, log_path.read_text()
                status, body = await get_json(
                    http, "http://127.0.0.1:8001/clustering/data-planes", timeout=2, quiet=True
                )
                if status != 200:
                    return None
                rows = sorted(body["data"], key=lambda row: row["hostname"])
                if len(rows) == 3 and all(row["sync_status"] == "SYNCED" for row in rows):
                    return rows
                return None

            rows = await wait_for(all_synced, timeout=60, message="three SYNCED data planes")
            assert [row["hostname"] for row in rows] == ["ferry-dp-1", "ferry-dp-2", "ferry-dp-3"]
            assert len({row["config_hash"] for row in rows}) == 1
            for port in (8000, 8010, 8020):
                status, body = await get_json(http, f"http://127.0.0.1:{port}/demo/hello", timeout=2, quiet=True)
                assert status == 200 and body["backend"] in {"backend-a", "backend-b"}, (port, body)
        await wait_for(lambda: "Press Ctrl-C" in log_path.read_text(), timeout=10, message="the banner")
        printed = log_path.read_text()
        for line in ("data plane 2's proxy", "127.0.0.1:8010", "data plane 3's status API", "127.0.0.1:8120"):
            assert line in printed, f"the port layout names {line!r}"

        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C
        assert process.wait(60) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in processes_mentioning(str(data_dir)):
            os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: not processes_mentioning(str(data_dir)), timeout=10,
                   message="every ferry up child to exit")
    await wait_for(lambda: not _busy_ports(), timeout=30, message="the default ports to be free again")
