"""Options shared by every benchmark scenario (``python -m bench.run``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(kw_only=True)
class BenchOptions:
    """What a scenario's ``run(options)`` may read (construct with keywords).

    ``quick`` asks for a short run (a smoke test of the harness, not figures to quote);
    ``ferry_bin`` is the ``ferry`` executable; ``work_dir`` holds temporary data
    directories and logs; ``results_dir`` is where the runner writes the JSON.
    """

    duration: float = 10.0
    connections: int = 50
    rounds: int = 3
    quick: bool = False
    results_dir: Path
    ferry_bin: Path
    work_dir: Path
