"""Fixtures shared by the integration tests: ``stack``; ``store`` and ``admin``, the
in-process Admin app (``tests/support/admin.py``); ``dps`` and ``data_plane_kind``, data
planes played by hand (``tests/support/fake_data_planes.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from tests.support.admin import admin_app as admin_app
from tests.support.admin import store as store
from tests.support.fake_data_planes import data_plane_kind as data_plane_kind
from tests.support.fake_data_planes import dps as dps


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    """Everything a test starts registers its teardown here; unwound even on failure."""
    async with AsyncExitStack() as s:
        yield s
