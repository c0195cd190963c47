"""TLS on the proxy's ``ssl`` listener, in-process: the certificate chosen by SNI, the
default certificate, routes' ``protocols``/``snis``/``https_redirect_status_code``,
``X-Forwarded-Proto``, certificates swapped with the config, resumption, and ``curl``.

Real TLS throughout: certificates made by ``tests/support/tls.py``, Python ``ssl``
clients and ``curl`` (SNI via ``--resolve``), a real backend behind the proxy.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from data_plane.proxy import ProxyServer
from data_plane.runtime import ConfigHolder, RuntimeConfig, compile_config
from data_plane.tls_termination import TlsTermination, load_or_create_default_certificate
from ferry_shared.listen import ListenAddress
from tests.support.backends import start_backend
from tests.support.proxy import body_json, read_response
from tests.support.tls import Authority, make_authority

SERVICE = {"id": "s1", "name": "svc", "protocol": "http", "retries": 0}


def _pem(authority: Authority, directory: Path, name: str, dns_names: list[str] | None = None) -> dict[str, str]:
    pair = authority.issue(directory, name, dns_names)
    return {"cert": pair.cert.read_text(), "key": pair.key.read_text()}


def _config(
    version: int,
    backend_port: int,
    *,
    certificates: list[dict[str, Any]] | None = None,
    snis: list[dict[str, Any]] | None = None,
    routes: list[dict[str, Any]] | None = None,
    previous: RuntimeConfig | None = None,
) -> RuntimeConfig:
    service = {**SERVICE, "host": "127.0.0.1", "port": backend_port}
    return compile_config(
        version,
        f"hash-{version}",
        {
            "certificates": certificates or [],
            "snis": snis or [],
            "services": [service, {**service, "id": "s2", "name": "other"}],
            "routes": routes
            if routes is not None
            else [{"id": "r1", "paths": ["/api"], "service": {"id": "s1"}, "protocols": ["http", "https"]}],
        },
        previous=previous,
    )


class TlsProxy:
    """An in-process proxy with a plaintext and an ``ssl`` listener (free ports)."""

    def __init__(self, proxy: ProxyServer, holder: ConfigHolder) -> None:
        self.proxy = proxy
        self.holder = holder

    @property
    def port(self) -> int:
        return self.proxy.port

    @property
    def tls_port(self) -> int:
        return self.proxy.tls_port


async def _start(stack: AsyncExitStack, tmp_path: Path, config: RuntimeConfig | None) -> TlsProxy:
    holder = ConfigHolder(config)
    default_pem = load_or_create_default_certificate(tmp_path / "data")

    def current() -> Any:
        return holder.current.server_certificates if holder.current is not None else None

    proxy = ProxyServer(
        holder,
        "127.0.0.1",
        0,
        listen=[ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.1", 0, ssl=True)],
        tls=TlsTermination(current, default_pem),
    )
    await proxy.start()
    stack.push_async_callback(proxy.stop, 2.0)
    return TlsProxy(proxy, holder)


def _client_context(ca: Authority | None = None) -> ssl.SSLContext:
    if ca is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=str(ca.pair.cert))


async def _tls_connect(
    stack: AsyncExitStack, port: int, server_name: str | None, context: ssl.SSLContext | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context or _client_context(), server_hostname=server_name or ""
    )
    stack.callback(writer.close)
    return reader, writer


def _common_name(writer: asyncio.StreamWriter) -> str:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value)


async def _get(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str, host: str = "api.test"
) -> tuple[int, dict[str, str], bytes]:
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return await read_response(reader)


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path / "ca", "Ferry Test CA")


async def test_certificate_is_chosen_by_sni_exact_then_wildcard_then_default(
    stack: AsyncExitStack, tmp_path: Path, authority: Authority
) -> None:
    backend = await start_backend(stack, "b")
    certs = tmp_path / "certs"
    config = _config(
        1,
        backend.port,
        certificates=[
            {"id": "c-exact", **_pem(authority, certs, "exact", ["api.test"])},
            {"id": "c-left", **_pem(authority, certs, "left", ["*.wild.test"])},
            {"id": "c-right", **_pem(authority, certs, "right", ["right.example"])},
        ],
        snis=[
            {"id": "n1", "name": "api.test", "certificate": {"id": "c-exact"}},
            {"id": "n2", "name": "*.wild.test", "certificate": {"id": "c-left"}},
            {"id": "n3", "name": "right.*", "certificate": {"id": "c-right"}},
        ],
    )
    tls = await _start(stack, tmp_path, config)
    expected = {
        "api.test": "exact",
        "API.Test": "exact",
        "a.wild.test": "left",
        "right.example": "right",
        "right.anything": "right",
        "wild.test": "localhost",  # "*.wild.test" needs a label before it
        "elsewhere.test": "localhost",
        None: "localhost",  # no SNI at all
    }
    for name, common_name in expected.items():
        _, writer = await _tls_connect(stack, tls.tls_port, name)
        assert _common_name(writer) == common_name, name


async def test_https_request_is_proxied_and_says_so_in_x_forwarded_proto(
    stack: AsyncExitStack, tmp_path: Path, authority: Authority
) -> None:
    backend = await start_backend(stack, "b")
    tls = await _start(stack, tmp_path, _config(1, backend.port))
    reader, writer = await _tls_connect(stack, tls.tls_port, "api.test")
    status, headers, body = await _get(reader, writer, "/api/x")
    assert status == 200
    seen = body_json(body)["headers"]
    assert seen["X-Forwarded-Proto"] == "https"
    assert seen["X-Forwarded-Port"] == str(tls.tls_port)
    # The same proxy on its plaintext port says http.
    reader, writer = await asyncio.open_connection("127.0.0.1", tls.port)
    stack.callback(writer.close)
    status, _, body = await _get(reader, writer, "/api/x")
    assert status == 200
    assert body_json(body)["headers"]["X-Forwarded-Proto"] == "http"


async def test_https_only_route_answers_426_on_plaintext_and_proxies_over_tls(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    backend = await start_backend(stack, "b")
    routes = [{"id": "r1", "paths": ["/api"], "service": {"id": "s1"}, "protocols": ["https"]}]
    tls = await _start(stack, tmp_path, _config(1, backend.port, routes=routes))
    reader, writer = await asyncio.open_connection("127.0.0.1", tls.port)
    stack.callback(writer.close)
    status, headers, body = await _get(reader, writer, "/api")
    assert status == 426
    assert body_json(body) == {"message": "Please use HTTPS protocol"}
    assert headers["upgrade"] == "TLS/1.2, HTTP/1.1"
    assert backend.requests == []  # nothing the proxy refused is sent
    reader, writer = await _tls_connect(stack, tls.tls_port, "api.test")
    status, _, _ = await _get(reader, writer, "/api")
    assert status == 200


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_https_redirect_status_code_sends_plaintext_clients_to_https(
    stack: AsyncExitStack, tmp_path: Path, code: int
) -> None:
    backend = await start_backend(stack, "b")
    routes = [{
        "id": "r1", "paths": ["/api"], "service": {"id": "s1"}, "protocols": ["https"],
        "https_redirect_status_code": code,
    }]
    tls = await _start(stack, tmp_path, _config(1, backend.port, routes=routes))
    reader, writer = await asyncio.open_connection("127.0.0.1", tls.port)
    stack.callback(writer.close)
    status, headers, body = await _get(reader, writer, "/api/x?q=1", host="api.test:8000")
    assert status == code
    # Kong's Location: the host without its port, and the request target.
    assert headers["location"] == "https://api.test/api/x?q=1"
    assert body == b""
    # The connection stays usable.
    status, _, _ = await _get(reader, writer, "/api/y")
    assert status == code
    assert backend.requests == []


async def test_route_snis_match_the_tls_server_name_and_are_ignored_on_plaintext(
    stack: AsyncExitStack, tmp_path: Path
) -> None:
    a = await start_backend(stack, "a")
    b = await start_backend(stack, "b")
    routes = [
        {"id": "r1", "paths": ["/api"], "snis": ["a.test"], "service": {"id": "s1"},
         "protocols": ["http", "https"]},
        {"id": "r2", "paths": ["/api"], "service": {"id": "s2"}, "protocols": ["http", "https"]},
    ]
    config = compile_config(1, "h1", {
        "services": [
            {**SERVICE, "host": "127.0.0.1", "port": a.port},
            {**SERVICE, "id": "s2", "name": "other", "host": "127.0.0.1", "port": b.port},
        ],
        "routes": routes,
    })
    tls = await _start(stack, tmp_path, config)
    served: dict[str | None, str] = {}
    for name in ("a.test", "b.test", None):
        reader, writer = await _tls_connect(stack, tls.tls_port, name)
        status, _, body = await _get(reader, writer, "/api")
        assert status == 200
        served[name] = body_json(body)["backend"]
    assert served == {"a.test": "a", "b.test": "b", None: "b"}
    # Plaintext: Kong's router does not consider snis, and the SNI route is the more specific.
    reader, writer = await asyncio.open_connection("127.0.0.1", tls.port)
    stack.callback(writer.close)
    status, _, body = await _get(reader, writer, "/api")
    assert (status, body_json(body)["backend"]) == (200, "a")


async def test_a_new_config_changes_the_certificate_without_a_restart(
    stack: AsyncExitStack, tmp_path: Path, authority: Authority
) -> None:
    backend = await start_backend(stack, "b")
    certs = tmp_path / "certs"
    first = _config(
        1, backend.port,
        certificates=[{"id": "c1", **_pem(authority, certs, "first", ["api.test"])}],
        snis=[{"id": "n1", "name": "api.test", "certificate": {"id": "c1"}}],
    )
    tls = await _start(stack, tmp_path, first)
    _, writer = await _tls_connect(stack, tls.tls_port, "api.test")
    assert _common_name(writer) == "first"
    second = _config(
        2, backend.port,
        certificates=[{"id": "c1", **_pem(authority, certs, "second", ["api.test"])}],
        snis=[{"id": "n1", "name": "api.test", "certificate": {"id": "c1"}}],
        previous=first,
    )
    tls.holder.current = second
    _, writer = await _tls_connect(stack, tls.tls_port, "api.test")
    assert _common_name(writer) == "second"
    # And removing the SNI falls back to the default certificate.
    tls.holder.current = _config(3, backend.port, previous=second)
    _, writer = await _tls_connect(stack, tls.tls_port, "api.test")
    assert _common_name(writer) == "localhost"


def _resumed_on_second_connection(port: int, context: ssl.SSLContext) -> tuple[bool, str | None]:
    session = None
    reused = False
    alpn = None
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="api.test", session=session) as conn:
                conn.sendall(b"GET /api HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
                while conn.recv(65536):
                    pass  # read to the end: TLS 1.3 tickets arrive after the handshake
                reused = conn.session_reused
                alpn = conn.selected_alpn_protocol()
                session = conn.session
    return reused, alpn


async def test_sessions_resume_and_alpn_offers_http_1_1(
    stack: AsyncExitStack, tmp_path: Path, authority: Authority
) -> None:
    backend = await start_backend(stack, "b")
    config = _config(
        1, backend.port,
        certificates=[{"id": "c1", **_pem(authority, tmp_path / "certs", "api", ["api.test"])}],
        snis=[{"id": "n1", "name": "api.test", "certificate": {"id": "c1"}}],
    )
    tls = await _start(stack, tmp_path, config)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        context = _client_context(authority)
        context.maximum_version = version
        context.set_alpn_protocols(["h2", "http/1.1"])
        reused, alpn = await asyncio.to_thread(_resumed_on_second_connection, tls.tls_port, context)
        assert (reused, alpn) == (True, "http/1.1"), version


async def test_tls_1_1_clients_are_refused(stack: AsyncExitStack, tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed")
    backend = await start_backend(stack, "b")
    tls = await _start(stack, tmp_path, _config(1, backend.port))

    def handshake(flag: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{tls.tls_port}", flag,
             "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "api.test"],
            input="", capture_output=True, text=True, timeout=30,
        )

    refused = await asyncio.to_thread(handshake, "-tls1_1")
    accepted = await asyncio.to_thread(handshake, "-tls1_2")
    assert "Protocol  : TLSv1.2" in accepted.stdout
    assert refused.returncode != 0
    assert "Cipher is (NONE)" in refused.stdout
    # Refused by the proxy (it ends the handshake), not by the local OpenSSL, which did
    # offer TLS 1.1 (it would say "no protocols available" otherwise).
    assert "no protocols available" not in refused.stderr
    assert "alert protocol version" in refused.stderr or "unexpected eof" in refused.stderr, refused.stderr


async def test_curl_verifies_the_sni_certificate_and_gets_proxied(
    stack: AsyncExitStack, tmp_path: Path, authority: Authority
) -> None:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    backend = await start_backend(stack, "b")
    config = _config(
        1, backend.port,
        certificates=[{"id": "c1", **_pem(authority, tmp_path / "certs", "api", ["api.test"])}],
        snis=[{"id": "n1", "name": "api.test", "certificate": {"id": "c1"}}],
    )
    tls = await _start(stack, tmp_path, config)

    def curl(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(authority.pair.cert),
             "--resolve", f"{name}:{tls.tls_port}:127.0.0.1", "-o", "/dev/null",
             "-w", "%{http_code}", f"https://{name}:{tls.tls_port}/api"],
            capture_output=True, text=True, timeout=30,
        )

    good = await asyncio.to_thread(curl, "api.test")
    assert (good.returncode, good.stdout) == (0, "200")
    # Another name gets the default certificate, which the test CA did not sign.
    bad = await asyncio.to_thread(curl, "other.test")
    assert bad.returncode == 60, bad.stderr  # curl: peer certificate cannot be authenticated
    assert len(backend.requests) == 1
