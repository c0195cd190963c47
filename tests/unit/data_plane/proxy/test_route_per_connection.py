"""A client connection reuses the router's answer for a repeated request line
(``_Dispatch._route``): only while the config, method, Host and target are the same.

On the fake-transport harness (``tests/support/proxy_relay.py``).
"""

from __future__ import annotations

from data_plane.runtime import compile_config
from tests.support.proxy_relay import ENTITIES, Harness, harness

__all__ = ["harness"]  # the fixture, used by name

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def _get(path: bytes, host: bytes = b"api.test", method: bytes = b"GET") -> bytes:
    return method + b" " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"


def _only(
    paths: list[str], methods: list[str] | None = None, hosts: list[str] | None = None
) -> dict[str, list[dict[str, object]]]:
    route: dict[str, object] = {
        "id": "r1", "name": "only", "paths": paths, "strip_path": False, "service": {"id": "s1"}
    }
    if methods:
        route["methods"] = methods
    if hosts:
        route["hosts"] = hosts
    return {"services": ENTITIES["services"], "routes": [route]}


async def test_a_repeated_request_line_is_routed_by_the_new_config_after_a_change(
    harness: Harness,
) -> None:
    client = harness.client()
    upstream = harness.request(client, _get(b"/item"))
    upstream.feed(RESPONSE)
    assert client.received.endswith(b"ok")
    # The route for /item goes away: the same request line on the same connection is
    # now answered 404, not sent on the strength of the last answer.
    harness.server.holder.current = compile_config(2, "v2", _only(["/other"]))
    before = len(client.received)
    client.conn.data_received(_get(b"/item"))
    assert client.received[before:].startswith(b"HTTP/1.1 404 ")


async def test_a_different_target_method_or_host_on_one_connection_is_routed_anew(
    harness: Harness,
) -> None:
    harness.server.holder.current = compile_config(
        2, "v2", _only(["/item"], methods=["GET"], hosts=["api.test"])
    )
    client = harness.client()
    upstream = harness.request(client, _get(b"/item"))
    upstream.feed(RESPONSE)
    for raw in (
        _get(b"/nope"),  # another target
        _get(b"/item", method=b"POST"),  # another method
        _get(b"/item", host=b"other.test"),  # another Host
    ):
        before = len(client.received)
        client.conn.data_received(raw)
        assert client.received[before:].startswith(b"HTTP/1.1 404 "), raw
    # And back to the first request line: routed again.
    upstream = harness.request(client, _get(b"/item"))
    before = len(client.received)
    upstream.feed(RESPONSE)
    assert client.received[before:].startswith(b"HTTP/1.1 200 ")
