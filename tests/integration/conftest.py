"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    """Everything a test starts registers its teardown here; unwound even on failure."""
    async with AsyncExitStack() as s:
        yield s
