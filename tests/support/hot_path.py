"""Tests that need the pure-Python hot path (``data_plane.hot_path``)."""

from __future__ import annotations

import pytest

from data_plane import hot_path

#: For a test that subclasses a balancer in Python: compiled balancers (mypyc native
#: classes) cannot be subclassed by interpreted code. ``make test`` runs these tests in
#: its second, pure-Python pass (``FERRY_NO_EXTENSIONS=1``).
needs_interpreted_subclass = pytest.mark.skipif(
    hot_path.current().mode == "compiled",
    reason="subclasses a compiled class in Python (mypyc native classes do not allow it); "
    "runs in make test's pure-Python pass (FERRY_NO_EXTENSIONS=1)",
)
