"""In-process control planes on free loopback ports, for the integration tests.

:func:`start_control_plane` starts one; :class:`ControlPlanes` (the ``control_planes``
fixture) starts any number over the test's Redis and stops every one still running at
teardown, so a test that fails half-way leaves no server behind.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from control_plane.server import ControlPlane, ControlPlaneSettings


async def start_control_plane(
    redis_url: str,
    data_dir: Path,
    *,
    stack: AsyncExitStack | None = None,
    stop_grace: float = 0.5,
    membership_interval: float | None = None,
    **settings: Any,
) -> ControlPlane:
    """A started in-process :class:`ControlPlane` on free loopback ports over ``redis_url``.

    Plaintext cluster link, a short merge window; ``settings`` override any
    :class:`ControlPlaneSettings` field, ``membership_interval`` the constructor's.
    With ``stack``, ``stop(stop_grace)`` is registered on it; otherwise the caller
    stops it (``stop(grace=...)``).
    """
    options: dict[str, Any] = {
        "admin_listen": "127.0.0.1:0",
        "cluster_listen": "127.0.0.1:0",
        "data_dir": data_dir,
        "redis_url": redis_url,
        "cluster_insecure": True,
        "merge_window": 0.01,
        **settings,
    }
    extra: dict[str, Any] = {}
    if membership_interval is not None:
        extra["membership_interval"] = membership_interval
    plane = ControlPlane(ControlPlaneSettings(**options), **extra)
    await plane.start()
    if stack is not None:
        stack.push_async_callback(plane.stop, stop_grace)
    return plane


class ControlPlanes:
    """Starts control planes over one Redis URL and owns their shutdown.

    Every plane :meth:`start` returns is stopped (``stop(grace)`` with the grace given at
    its start) by :meth:`stop_all`, unless the test stopped it first with :meth:`stop`.
    """

    def __init__(self, redis_url: str, data_dir: Path) -> None:
        self.redis_url = redis_url
        self.data_dir = data_dir
        self._running: list[tuple[ControlPlane, float]] = []

    async def start(
        self,
        *,
        data_dir: Path | None = None,
        stop_grace: float = 0.2,
        membership_interval: float | None = None,
        **settings: Any,
    ) -> ControlPlane:
        """A started plane (see :func:`start_control_plane` for ``settings``); its data
        directory is the fixture's (shared by every plane) unless ``data_dir`` is given."""
        plane = await start_control_plane(
            self.redis_url,
            self.data_dir if data_dir is None else data_dir,
            membership_interval=membership_interval,
            **settings,
        )
        self._running.append((plane, stop_grace))
        return plane

    async def stop(self, plane: ControlPlane) -> None:
        """Stop ``plane`` now (a restart test); teardown then leaves it alone."""
        for entry in self._running:
            if entry[0] is plane:
                self._running.remove(entry)
                await plane.stop(grace=entry[1])
                return
        raise AssertionError("not a plane this fixture started")

    async def stop_all(self) -> None:
        while self._running:
            plane, grace = self._running.pop(0)
            await plane.stop(grace=grace)


@pytest.fixture
async def control_planes(redis_url: str, tmp_path: Path) -> AsyncIterator[ControlPlanes]:
    """A :class:`ControlPlanes` over the test's (flushed) Redis, data in ``tmp_path``."""
    planes = ControlPlanes(redis_url, tmp_path)
    try:
        yield planes
    finally:
        await planes.stop_all()
