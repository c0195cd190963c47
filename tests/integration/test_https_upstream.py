"""Services with ``protocol: https``: the proxy speaks TLS to the target and names the
server as Kong does (``proxy_ssl_name $upstream_host``): the Host header it sends,
without port, and no SNI at all when that is an IP literal.

The target is a real aiohttp server with TLS from a self-signed test certificate
(``tests/fixtures/upstream-tls.*``, valid for a century; the proxy does not verify
upstream certificates yet), recording the server name of every handshake.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from typing import Any

import pytest

from data_plane.runtime import compile_config
from tests.support.backends import TlsBackend
from tests.support.proxy import client, start_proxy


@pytest.mark.parametrize(
    ("upstream", "route", "request_host", "sni", "host_sent"),
    [
        ({}, {}, "gateway.test", None, "127.0.0.1:{port}"),
        ({"host_header": "api.upstream.test"}, {}, "gateway.test", "api.upstream.test", "api.upstream.test"),
        ({}, {"preserve_host": True}, "shop.example:8443", "shop.example", "shop.example:8443"),
    ],
    ids=["ip-target-no-sni", "host-header", "preserve-host"],
)
async def test_https_service_speaks_tls_and_sends_the_upstream_host_as_sni(
    stack: AsyncExitStack,
    upstream: dict[str, Any],
    route: dict[str, Any],
    request_host: str,
    sni: str | None,
    host_sent: str,
) -> None:
    backend = TlsBackend()
    await backend.start(stack)
    config = compile_config(
        1,
        "h1",
        {
            "upstreams": [{"id": "u1", "name": "backends", **upstream}],
            "targets": [{"id": "t0", "target": f"127.0.0.1:{backend.port}", "upstream": {"id": "u1"}}],
            "services": [{"id": "s1", "host": "backends", "port": 443, "protocol": "https"}],
            "routes": [{"id": "r1", "paths": ["/api"], "service": {"id": "s1"}, **route}],
        },
    )
    _, _, url = await start_proxy(stack, config)
    session = await client(stack)
    async with session.get(f"{url}/api/x", headers={"Host": request_host}) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"backend": "tls", "path": "/x"}
    assert backend.server_names == [sni]
    assert backend.hosts == [host_sent.format(port=backend.port)]

