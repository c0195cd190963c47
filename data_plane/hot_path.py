"""The modules a proxied request passes through, compiled with mypyc, and the
switch that runs them as plain Python instead.

``HOT_MODULES`` is what ``setup.py`` compiles (one mypyc group, so calls between
them are C calls and their classes are native: typed attributes in C structs);
the sources are ordinary typed Python, and they are also the fallback.
Why mypyc, and what it buys: ``docs/performance.md`` § A compiled hot path.

Which path runs is decided once, when ``data_plane`` is first imported
(:func:`install`), for all of these modules together: compiled code checks the
types of the native classes it receives, so a mix of compiled and source
modules of one group does not work. The source runs when

- ``FERRY_NO_EXTENSIONS`` is set to anything but ``""`` or ``"0"`` (as
  aiohttp's ``AIOHTTP_NO_EXTENSIONS``), or
- a compiled module is missing (built with ``FERRY_NO_EXTENSIONS=1``, or no C
  compiler) or, in a source checkout (``setup.py`` beside the packages), was not
  compiled from the source as it is now: an edited checkout not rebuilt yet, whose
  stale build must not shadow the edit (``make test`` rebuilds it). ``setup.py``
  records the SHA-256 of every source just before mypyc reads them and writes the
  record (:data:`BUILD_RECORD`) once the build succeeded; a source whose digest
  differs, or no record, runs the source. Digests, not file times: a source edited
  while a build runs is older than the build's output yet not in it. An installed
  wheel has no record and is not checked.

Only the standard library may be imported here: ``setup.py`` reads this file
before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

#: Compiled together, in this order (``setup.py``). The router is not among them yet:
#: mypyc cannot compile its generic frozen dataclasses (``RouteSpec[S]``).
HOT_MODULES: tuple[str, ...] = (
    "data_plane.proxy.client",
    "data_plane.proxy.dispatch",
    "data_plane.proxy.exchange",
    "data_plane.proxy.headers",
    "data_plane.proxy.upstream",
    "data_plane.proxy.errors",
    "data_plane.proxy.write_batch",
    "data_plane.upstream_try",
    "data_plane.request_metrics",
    "data_plane.retry_budget",
    "data_plane.overload",
    "data_plane.upstream_pool",
    "data_plane.balancers.base",
    "data_plane.balancers.round_robin",
    "data_plane.balancers.consistent_hashing",
    "data_plane.balancers.latency",
    "data_plane.balancers.least_connections",
    "data_plane.balancers.sticky_sessions",
)

#: The mypyc group's shared library (a top-level module: ``ferry_hot_path__mypyc``).
GROUP_NAME = "ferry_hot_path"

#: Set to anything but ``""``/``"0"``: run the source of :data:`HOT_MODULES`.
NO_EXTENSIONS_ENV = "FERRY_NO_EXTENSIONS"

_ROOT = Path(__file__).resolve().parent.parent

#: In a checkout: ``{module: sha256 of its source when it was compiled}``, written by
#: ``setup.py`` after a successful build (ignored by git).
BUILD_RECORD = ".hot-path-build.json"


def source_path(module: str) -> Path:
    """The ``.py`` file of a hot module."""
    return _ROOT.joinpath(*module.split(".")).with_suffix(".py")


def _extension_path(module: str) -> Path | None:
    base = _ROOT.joinpath(*module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def extensions_disabled(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether :data:`NO_EXTENSIONS_ENV` asks for the source."""
    return environ.get(NO_EXTENSIONS_ENV, "") not in ("", "0")


@dataclass(frozen=True, slots=True)
class HotPath:
    """Which path runs (``/status``'s ``hot_path`` block, the data plane's start log)."""

    mode: Literal["compiled", "python"]
    #: Why the source runs (``None`` when compiled).
    reason: str | None
    compiler: str = "mypyc"
    modules: tuple[str, ...] = HOT_MODULES

    def describe(self) -> str:
        if self.mode == "compiled":
            return f"compiled hot path ({self.compiler}, {len(self.modules)} modules)"
        return f"pure-Python hot path ({self.reason})"

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "compiler": self.compiler,
            "modules": list(self.modules),
        }


def source_digests(modules: Sequence[str] = HOT_MODULES) -> dict[str, str]:
    """SHA-256 (hex) of each module's source as it is now."""
    return {m: hashlib.sha256(source_path(m).read_bytes()).hexdigest() for m in modules}


def write_build_record(digests: dict[str, str]) -> None:
    """Record what a build compiled (``setup.py``, after the build succeeded)."""
    record = _ROOT / BUILD_RECORD
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
    tmp.replace(record)


def _read_build_record() -> dict[str, str] | None:
    try:
        record = json.loads((_ROOT / BUILD_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def choose(modules: Sequence[str] = HOT_MODULES) -> HotPath:
    """Decide which path runs (see the module docstring)."""
    if extensions_disabled():
        return HotPath("python", f"{NO_EXTENSIONS_ENV} is set")
    for module in modules:
        if _extension_path(module) is None:
            return HotPath("python", f"{module} is not compiled")
    if not (_ROOT / "setup.py").exists():
        return HotPath("compiled", None)  # installed, not a checkout
    record = _read_build_record()
    if record is None:
        return HotPath("python", f"no record of what was compiled ({BUILD_RECORD}; rebuild)")
    for module, digest in source_digests(modules).items():
        if record.get(module) != digest:
            name = source_path(module).name
            return HotPath("python", f"{name} changed since it was compiled (rebuild)")
    return HotPath("compiled", None)


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Finds :data:`HOT_MODULES` as their ``.py`` source, ahead of the compiled ones."""

    def __init__(self, modules: Sequence[str]) -> None:
        self._modules = frozenset(modules)

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._modules:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(fullname))


_chosen: HotPath | None = None


def install() -> HotPath:
    """Choose the path once per process and, for the source, put a finder first on
    ``sys.meta_path`` that loads the hot modules from their ``.py`` files. Call
    before any hot module is imported (``data_plane/__init__.py`` does)."""
    global _chosen
    if _chosen is None:
        _chosen = choose()
        if _chosen.mode == "python":
            sys.meta_path.insert(0, _SourceFinder(HOT_MODULES))
    return _chosen


def current() -> HotPath:
    """The path this process runs (:func:`install` chose it)."""
    return install()
