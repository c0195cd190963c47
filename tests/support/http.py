"""HTTP clients of the tests: the ``http`` session fixture and small request helpers
(``fresh_get``, ``get_json``, ``http_ok``, ``wait_http_ok``; ``wait_http_ok_sync`` for
synchronous fixtures).

``http`` is one :class:`aiohttp.ClientSession` per test, closed at teardown. Its total
request timeout is the ``http_timeout`` fixture: ``None`` (aiohttp's default) here, and
overridden where a directory or module wants a shorter bound on a hung request (e2e: 10 s,
Kong specs: 15 s).
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator
from http.client import HTTPException
from typing import Any

import aiohttp
import pytest

from tests.support.polling import wait_for
from tests.support.processes import FerryProcess


@pytest.fixture
def http_timeout() -> float | None:
    """Total timeout in seconds of each request of the ``http`` session (None: aiohttp's)."""
    return None


@pytest.fixture
async def http(http_timeout: float | None) -> AsyncIterator[aiohttp.ClientSession]:
    """One client session for the test, closed at teardown."""
    options: dict[str, Any] = {}
    if http_timeout is not None:
        options["timeout"] = aiohttp.ClientTimeout(total=http_timeout)
    async with aiohttp.ClientSession(**options) as session:
        yield session


async def fresh_get(url: str, *, timeout: float | None = None) -> tuple[int, str | None]:
    """One GET on its own connection: (status, the ``backend`` its JSON body names, or None).

    A new connection per request lets the kernel spread requests over SO_REUSEPORT
    workers and keeps per-connection counters exact. ``timeout`` bounds the request
    (None: aiohttp's default).
    """
    options: dict[str, Any] = {"connector": aiohttp.TCPConnector(force_close=True)}
    if timeout is not None:
        options["timeout"] = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(**options) as session, session.get(url) as response:
        body = await response.json(content_type=None)
        return response.status, body.get("backend") if isinstance(body, dict) else None


async def get_json(
    session: aiohttp.ClientSession,
    url: str,
    *,
    timeout: float | None = None,
    quiet: bool = False,
    **kwargs: Any,
) -> tuple[int, Any]:
    """One GET: (status, its JSON body or None when empty). ``timeout`` bounds it (None:
    the session's bound); ``kwargs`` go to :meth:`aiohttp.ClientSession.get`. ``quiet``:
    a connection error, a timeout or a body that is not JSON gives ``(0, None)`` instead
    of failing (for polling a server that may not be up yet)."""
    if timeout is not None:
        kwargs["timeout"] = aiohttp.ClientTimeout(total=timeout)
    try:
        async with session.get(url, **kwargs) as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        if not quiet:
            raise
        return 0, None


async def http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    """Whether ``url`` answers 200 within a second (any error: False)."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=1)) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def wait_http_ok(
    session: aiohttp.ClientSession, url: str, process: FerryProcess, timeout: float = 30
) -> None:
    """Poll ``url`` until it answers 200; fail at once (with its log) if ``process`` exits."""

    async def ready() -> bool:
        assert process.returncode is None, f"process exited {process.returncode}:\n{process.log()}"
        return await http_ok(session, url)

    await wait_for(ready, timeout=timeout, message=f"{url} to answer 200")


def wait_http_ok_sync(
    url: str, process: FerryProcess | subprocess.Popen[bytes], timeout: float = 30.0
) -> None:
    """:func:`wait_http_ok` for synchronous (module) fixtures, over urllib: poll ``url``
    until it answers 200; fail at once if ``process`` exits (with its log, if it has one)."""

    def log() -> str:
        return process.log() if isinstance(process, FerryProcess) else "(no log)"

    deadline = time.monotonic() + timeout
    while True:
        code = process.poll() if isinstance(process, subprocess.Popen) else process.returncode
        assert code is None, f"process for {url} exited {code}:\n{log()}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except (OSError, HTTPException):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} did not answer 200 in {timeout}s:\n{log()}")
        time.sleep(0.05)
