"""Keep what the data plane made at start-up out of the cyclic garbage collector's way.

A data-plane process imports about 70,000 objects that live as long as it does
(modules, classes, functions, the aiohttp, grpcio and h2 machinery). CPython's full
collection walks every tracked object, so each one costs ~20 ms of event loop on the
bench machine; and a proxy whose caches keep objects alive for a while (the router's
match cache under request targets that are all different) promotes enough of them to
trigger one every second or two: measured, a p99 of 8-10 ms at peak with every request
different, 2 ms with these objects frozen (``docs/performance.md``).

:func:`freeze_startup_objects` runs once per process (``ferry data-plane`` and each worker, in
:mod:`ferry.cli`; not when a test runs a data plane in its own process), after the imports
and before the first config
is loaded: ``gc.freeze()`` moves every object tracked so far to the permanent generation,
which collections skip. Reference counting still frees them; what freezing gives up is
collecting *cycles* among them, and these are never garbage while the process runs.
Configs come later and are collected as usual when replaced.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_objects() -> int:
    """Collect once, then freeze what is left; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.debug("%d start-up objects frozen (kept out of the cyclic collector's passes)", frozen)
    return frozen
