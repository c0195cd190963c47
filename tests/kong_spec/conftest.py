"""Fixtures for Kong's own specs, translated case by case (helpers: ``tests/support/kong.py``).

Each spec module gets one real ``ferry control-plane`` process (with its own embedded
Redis under a temporary directory) and, where the spec proxies traffic, one real
``ferry data-plane`` process: starting them per case would cost seconds each. Cases keep
apart by using fresh entity names (:func:`unique`); a case that needs an empty database
asks for ``fresh_kong`` instead, which starts a control plane for it alone.

Module fixtures are synchronous (they poll with urllib), so cases stay ordinary
function-scoped asyncio tests with their own ``http`` session (a 15 s bound per request).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.ferry_cluster import Cluster
from tests.support.kong import (
    DnsZone,
    KongCluster,
    SpecServer,
    TlsSpecServer,
    serving,
    stop_cluster,
)


@pytest.fixture
def http_timeout() -> float:
    """Kong spec cases bound each request of their ``http`` session to 15 s."""
    return 15.0


@pytest.fixture(scope="module")
def kong(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KongCluster]:
    """The module's control plane (its own embedded Redis), started once."""
    cluster = Cluster(Path(tmp_path_factory.mktemp("kong-spec")), redis_url=None)
    try:
        yield KongCluster(cluster).start()
    finally:
        stop_cluster(cluster)


@pytest.fixture
def fresh_kong(tmp_path: Path) -> Iterator[KongCluster]:
    """A control plane of its own, with an empty database, for one case."""
    cluster = Cluster(tmp_path, redis_url=None)
    try:
        yield KongCluster(cluster).start()
    finally:
        stop_cluster(cluster)


@pytest.fixture
async def spec_servers() -> AsyncIterator[Any]:
    """``await spec_servers(delay_ms=0, port=0)`` starts a :class:`SpecServer`."""
    async for start in serving(SpecServer):
        yield start


@pytest.fixture
async def tls_spec_servers() -> AsyncIterator[Any]:
    """``await tls_spec_servers(delay_ms=0, port=0)`` starts a :class:`TlsSpecServer`."""
    async for start in serving(TlsSpecServer):
        yield start


@pytest.fixture(scope="module")
def dns_zone() -> Iterator[DnsZone]:
    """The module's DNS server (records set by the cases)."""
    zone = DnsZone()
    try:
        yield zone
    finally:
        zone.close()
