"""Writing a run's results: ``bench/results/<UTC timestamp>.json`` and ``latest.json``.

The timestamped file holds exactly one run. ``latest.json`` holds the newest figures
of every scenario: a run of some scenarios (``--only proxy``) replaces theirs and keeps
the others from the previous ``latest.json`` when it was measured on the same machine,
naming in ``results_from`` the timestamped file each scenario's figures come from.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def timestamp(now: datetime) -> str:
    """``20250101T120000Z``: sorts by time, safe in file names."""
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _write_atomically(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


#: Machine fields that must match for ``latest.json`` to keep an earlier run's figures.
SAME_MACHINE = ("cpu_model", "cores", "kernel")


def _dumps(payload: dict[str, Any]) -> str:
    return json.dumps(_clean(payload), indent=2, sort_keys=False, allow_nan=False) + "\n"


def merge_latest(previous: dict[str, Any] | None, payload: dict[str, Any], stamped_name: str) -> dict[str, Any]:
    """``payload`` plus the scenarios of ``previous`` it did not run (same machine only)."""
    merged = dict(payload)
    results = dict(payload.get("results", {}))
    sources = {name: stamped_name for name in results}
    if previous is not None:
        old_machine, machine = previous.get("machine", {}), payload.get("machine", {})
        if all(old_machine.get(key) == machine.get(key) for key in SAME_MACHINE):
            old_sources = previous.get("results_from", {})
            for name, figures in previous.get("results", {}).items():
                if name not in results:
                    results[name] = figures
                    sources[name] = old_sources.get(name, "an earlier run")
    merged["results"] = results
    merged["results_from"] = sources
    return merged


def write_results(results_dir: Path, payload: dict[str, Any], now: datetime) -> tuple[Path, Path]:
    """Write ``payload`` as ``<timestamp>.json`` and merge it into ``latest.json``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamped = results_dir / f"{timestamp(now)}.json"
    latest = results_dir / "latest.json"
    try:
        previous = json.loads(latest.read_text())
    except (OSError, ValueError):
        previous = None
    _write_atomically(stamped, _dumps(payload))
    _write_atomically(latest, _dumps(merge_latest(previous, payload, stamped.name)))
    return stamped, latest
