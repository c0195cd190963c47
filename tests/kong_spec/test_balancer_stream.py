"""Kong's ``spec/02-integration/05-proxy/10-balancer/06-stream_spec.lua``, case by case.

Every case proxies raw TCP through a ``stream_listen`` port with a ``tcp`` route; Ferry
proxies HTTP (1.1, 2, gRPC) only and has no stream proxy, so each case is skipped.
"""

from __future__ import annotations

import pytest

SPEC = "06-stream_spec.lua"
NO_STREAM = "Ferry has no stream (TCP) proxy: no stream_listen, no tcp routes"


@pytest.mark.skip(reason=f'Kong case "balances by least-connections" ({SPEC}): {NO_STREAM}')
def test_balances_by_least_connections() -> None:
    """Kong: it("balances by least-connections") — 06-stream_spec.lua (tcp routes)."""


@pytest.mark.skip(reason=f'Kong case "balances by least-connections with retries" ({SPEC}): {NO_STREAM}')
def test_balances_by_least_connections_with_retries() -> None:
    """Kong: it("balances by least-connections with retries") — 06-stream_spec.lua (tcp routes)."""
