"""Child processes that die with their parent (Linux ``PR_SET_PDEATHSIG``).

Used by the embedded Redis (``control_plane/embedded_redis.py``), the data plane's proxy workers
(``data_plane/workers/hub.py``) and the tests: a child must never outlive the process
that started it, even one killed with SIGKILL.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

#: Run by a fresh interpreter between spawn and exec (Linux): ask the kernel to
#: SIGTERM this process when its parent dies (``PR_SET_PDEATHSIG``, kept across
#: ``execv``), then become ``argv[1:]``.
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def spawn_dying_with_parent(args: list[str], **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(args, **popen_kwargs)``; on Linux the child gets SIGTERM when we die.

    The embedded Redis must never outlive the control plane, even a killed one.
    The signal fires when the *thread* that spawned it exits, so start from a
    long-lived thread (the main thread). Not a ``preexec_fn``: that forks
    without exec and runs Python in the child, which is unsafe while other
    threads run (gRPC's do) and was seen to abort the child. A short-lived
    interpreter sets the signal and execs ``args`` instead (same pid).
    """
    if sys.platform.startswith("linux"):
        args = [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, *args]
    return subprocess.Popen(args, **popen_kwargs)
