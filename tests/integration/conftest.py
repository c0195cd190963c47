"""Fixtures shared by the integration tests (``store`` and ``admin``, the in-process
Admin app: ``tests/support/admin.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from tests.support.admin import admin_app as admin_app
from tests.support.admin import store as store


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    """Everything a test starts registers its teardown here; unwound even on failure."""
    async with AsyncExitStack() as s:
        yield s
