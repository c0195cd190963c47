"""Start-up objects are frozen out of the cyclic collector's passes, once per data-plane
process (``data_plane/startup_objects.py``). In child processes: freezing the test
runner's own objects would keep its garbage cycles forever."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ferry_shared.listen import free_port
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess


def test_freezing_moves_what_is_alive_out_of_the_collectors_way_and_keeps_later_objects_in() -> None:
    script = (
        "import gc, data_plane.server\n"
        "from data_plane.startup_objects import freeze_startup_objects\n"
        "n = freeze_startup_objects()\n"
        "assert n == gc.get_freeze_count() > 10000, n\n"
        "later = [[] for _ in range(100)]\n"
        "assert gc.get_freeze_count() == n\n"  # made after: not frozen
        "assert all(gc.is_tracked(x) for x in later)\n"
        "print(n)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) > 10000


async def test_ferry_data_plane_freezes_its_start_up_objects(tmp_path: Path) -> None:
    dp = FerryProcess(
        ["data-plane", "--control-plane", f"127.0.0.1:{free_port()}", "--cluster-insecure",
         "--proxy-listen", f"127.0.0.1:{free_port()}", "--status-listen", f"127.0.0.1:{free_port()}",
         "--data-dir", str(tmp_path / "dp"), "--log-level", "debug"],
        tmp_path / "dp.log",
    )
    try:
        await wait_for(lambda: "start-up objects frozen" in dp.log(), timeout=30,
                       message="the data plane's start-up log line")
    finally:
        dp.stop()
