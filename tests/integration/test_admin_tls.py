"""The Admin API over TLS (``--admin-listen "... , ... ssl"``) on real control planes.

In-process control planes over the test's Redis, Python ``ssl`` clients and ``curl``
checking the certificate chain and the name (SNI), a plaintext listener beside the TLS
one, the generated default certificate, and real ``ferry control-plane`` processes for
the start log and a refused key.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest
from cryptography import x509

from control_plane.admin_tls import DEFAULT_CERT_DIR, DEFAULT_CERT_NAME, DEFAULT_KEY_NAME
from control_plane.admin_tokens import add_token
from control_plane.server import ControlPlane
from tests.support.control_planes import start_control_plane
from tests.support.polling import wait_for
from tests.support.processes import FerryProcess
from tests.support.tls import Authority, make_authority, self_signed

ADMIN_NAME = "admin.test"
BOTH = "127.0.0.1:0, 127.0.0.1:0 ssl"


async def https_get(
    port: int, path: str, context: ssl.SSLContext, server_name: str, headers: dict[str, str] | None = None
) -> tuple[int, bytes, ssl.SSLObject]:
    """One ``GET`` over a fresh TLS connection to ``127.0.0.1:port`` sending SNI ``server_name``:
    the status, the body, and the connection's TLS object (version, ALPN, peer certificate)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_name)
    try:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\n{extra}Connection: close\r\n\r\n".encode())
        raw = await reader.read()
        tls = writer.get_extra_info("ssl_object")
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body, tls


async def http_get(port: int, path: str) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    return int(raw.split(b" ", 2)[1])


def client_context(cafile: Path, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    if maximum is not None:
        context.maximum_version = maximum
    return context


def curl(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``curl -s`` printing the status code; never a proxy from the environment."""
    return subprocess.run(
        ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
         *args, url],
        capture_output=True, text=True, check=False, timeout=30,
    )


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path / "pki", "admin-ca")


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as exits:
        yield exits


async def test_an_ssl_listener_serves_the_admin_api_with_the_given_certificate_and_the_plain_one_still_answers(
    redis_url: str, tmp_path: Path, authority: Authority, stack: AsyncExitStack
) -> None:
    pair = authority.issue(tmp_path / "pki", ADMIN_NAME)
    cp = await start_control_plane(redis_url, tmp_path / "cp", stack=stack, admin_listen=BOTH,
                                   admin_ssl_cert=pair.cert, admin_ssl_cert_key=pair.key)
    plain_port, tls_port = cp.admin_ports
    assert cp.admin_port == plain_port != tls_port

    status, body, tls = await https_get(tls_port, "/status", client_context(authority.pair.cert), ADMIN_NAME)
    assert status == 200 and b'"database"' in body
    assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert tls.selected_alpn_protocol() == "http/1.1"
    peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    assert peer == x509.load_pem_x509_certificate(pair.cert.read_bytes())

    assert await http_get(plain_port, "/status") == 200
    assert cp.admin_certificate is not None and cp.admin_certificate.cert == pair.cert


async def test_tls_1_2_and_1_3_clients_are_both_served(
    redis_url: str, tmp_path: Path, authority: Authority, stack: AsyncExitStack
) -> None:
    pair = authority.issue(tmp_path / "pki", ADMIN_NAME)
    cp = await start_control_plane(redis_url, tmp_path / "cp", stack=stack, admin_listen="127.0.0.1:0 ssl",
                                   admin_ssl_cert=pair.cert, admin_ssl_cert_key=pair.key)
    for maximum, expected in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
        context = client_context(authority.pair.cert, maximum=maximum)
        status, _, tls = await https_get(cp.admin_port, "/", context, ADMIN_NAME)
        assert (status, tls.version()) == (200, expected)


async def test_every_listener_serves_the_same_api_entities_console_openapi_and_tokens(
    redis_url: str, tmp_path: Path, authority: Authority, stack: AsyncExitStack
) -> None:
    pair = authority.issue(tmp_path / "pki", ADMIN_NAME)
    tokens = tmp_path / "tokens.yaml"
    token = add_token(tokens, "ops", "admin")
    cp = await start_control_plane(redis_url, tmp_path / "cp", stack=stack, admin_listen=BOTH,
                                   admin_ssl_cert=pair.cert, admin_ssl_cert_key=pair.key, admin_tokens=tokens)
    context = client_context(authority.pair.cert)
    tls_port = cp.admin_ports[1]
    assert (await https_get(tls_port, "/upstreams", context, ADMIN_NAME))[0] == 401
    assert await http_get(cp.admin_ports[0], "/upstreams") == 401
    with_token = {"Ferry-Admin-Token": token}
    status, body, _ = await https_get(tls_port, "/upstreams", context, ADMIN_NAME, with_token)
    assert (status, body) == (200, b'{"data":[],"next":null}')
    assert (await https_get(tls_port, "/openapi.json", context, ADMIN_NAME, with_token))[0] == 200
    assert (await https_get(tls_port, "/console", context, ADMIN_NAME))[0] == 200


async def test_curl_checks_the_chain_and_the_name_it_asked_for(
    redis_url: str, tmp_path: Path, authority: Authority, stack: AsyncExitStack
) -> None:
    pair = authority.issue(tmp_path / "pki", ADMIN_NAME)
    cp = await start_control_plane(redis_url, tmp_path / "cp", stack=stack, admin_listen="127.0.0.1:0 ssl",
                                   admin_ssl_cert=pair.cert, admin_ssl_cert_key=pair.key)
    port = cp.admin_port
    resolve = f"{ADMIN_NAME}:{port}:127.0.0.1"
    good = await asyncio.to_thread(
        curl, f"https://{ADMIN_NAME}:{port}/status", "--cacert", str(authority.pair.cert), "--resolve", resolve
    )
    assert (good.returncode, good.stdout) == (0, "200"), good.stderr
    # Same server, same CA, another name: the certificate does not cover it (exit 60).
    other = await asyncio.to_thread(
        curl, f"https://other.test:{port}/status", "--cacert", str(authority.pair.cert),
        "--resolve", f"other.test:{port}:127.0.0.1",
    )
    assert other.returncode == 60, (other.returncode, other.stderr)
    # Another CA: the chain does not verify.
    stranger = make_authority(tmp_path / "other-pki", "stranger-ca")
    untrusted = await asyncio.to_thread(
        curl, f"https://{ADMIN_NAME}:{port}/status", "--cacert", str(stranger.pair.cert), "--resolve", resolve
    )
    assert untrusted.returncode == 60, (untrusted.returncode, untrusted.stderr)
    # Plain HTTP to the TLS port is not served as the Admin API.
    plain = await asyncio.to_thread(curl, f"http://127.0.0.1:{port}/status")
    assert plain.stdout != "200"


async def test_without_a_certificate_a_default_one_is_generated_in_the_data_dir_and_kept(
    redis_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "cp"
    cert = data_dir / DEFAULT_CERT_DIR / DEFAULT_CERT_NAME
    key = data_dir / DEFAULT_CERT_DIR / DEFAULT_KEY_NAME

    async def start() -> ControlPlane:
        return await start_control_plane(redis_url, data_dir, admin_listen="127.0.0.1:0 ssl")

    cp = await start()
    try:
        assert key.stat().st_mode & 0o777 == 0o600
        assert cp.admin_certificate is not None and cp.admin_certificate.generated
        status, _, _ = await https_get(cp.admin_port, "/status", client_context(cert), "localhost")
        assert status == 200
        first = cert.read_bytes()
    finally:
        await cp.stop(0.2)
    cp = await start()
    try:
        assert cert.read_bytes() == first  # a client that pinned it keeps working
        result = await asyncio.to_thread(
            curl, f"https://localhost:{cp.admin_port}/status", "--cacert", str(cert),
            "--resolve", f"localhost:{cp.admin_port}:127.0.0.1",
        )
        assert (result.returncode, result.stdout) == (0, "200"), result.stderr
    finally:
        await cp.stop(0.2)


async def test_a_plaintext_only_admin_listen_writes_no_certificate(
    redis_url: str, tmp_path: Path, stack: AsyncExitStack
) -> None:
    cp = await start_control_plane(redis_url, tmp_path / "cp", stack=stack)
    assert cp.admin_certificate is None and len(cp.admin_ports) == 1
    assert not (tmp_path / "cp" / DEFAULT_CERT_DIR).exists()


def _control_plane_args(redis_url: str, data_dir: Path, admin_listen: str) -> list[str]:
    # Port 0 everywhere: the process binds and logs its ports, so no other test on the
    # machine can take one between a pick and the bind.
    return ["control-plane", "--admin-listen", admin_listen, "--cluster-listen", "127.0.0.1:0",
            "--redis-url", redis_url, "--cluster-insecure", "--data-dir", str(data_dir)]


LISTENING = re.compile(r"admin API listening on http://127\.0\.0\.1:(\d+), https://127\.0\.0\.1:(\d+) \(TLS 1\.2\+\)")


async def test_the_start_log_names_every_listener_and_the_certificate_from_the_env_variables(
    redis_url: str, tmp_path: Path, authority: Authority
) -> None:
    pair = authority.issue(tmp_path / "pki", ADMIN_NAME)
    process = FerryProcess(
        _control_plane_args(redis_url, tmp_path / "cp", "127.0.0.1:0, 127.0.0.1:0 ssl"),
        tmp_path / "cp.log",
        env={"FERRY_ADMIN_SSL_CERT": str(pair.cert), "FERRY_ADMIN_SSL_CERT_KEY": str(pair.key)},
    )
    try:
        await wait_for(lambda: LISTENING.search(process.log()) or process.returncode is not None, timeout=30)
        listening = LISTENING.search(process.log())
        assert listening is not None, process.log()
        plain, secured = int(listening[1]), int(listening[2])
        assert f"admin API TLS: certificate {pair.cert} (CN={ADMIN_NAME}" in process.log()
        status, _, _ = await https_get(secured, "/status", client_context(authority.pair.cert), ADMIN_NAME)
        assert status == 200
        assert await http_get(plain, "/status") == 200
        assert "PRIVATE KEY" not in process.log()
    finally:
        process.stop()


@pytest.mark.parametrize("problem", ["mismatched", "garbage", "expired", "missing"])
async def test_a_bad_certificate_or_key_stops_the_start_with_a_message_naming_the_file(
    redis_url: str, tmp_path: Path, authority: Authority, problem: str
) -> None:
    import datetime

    pair = authority.issue(tmp_path / "pki", ADMIN_NAME)
    cert, key = pair.cert, pair.key
    if problem == "mismatched":
        key = self_signed(tmp_path / "pki", "other", "other.test").key
        expected = f"--admin-ssl-cert-key: the key in {key} does not match the certificate in {cert}"
    elif problem == "garbage":
        key = tmp_path / "garbage.key"
        key.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
        expected = f"--admin-ssl-cert-key: failed loading key from {key}"
    elif problem == "expired":
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
        old = self_signed(tmp_path / "pki", "old", ADMIN_NAME, not_before=past, not_after=past)
        cert, key = old.cert, old.key
        expected = f"--admin-ssl-cert: the certificate in {cert} expired on"
    else:
        cert = tmp_path / "nowhere.crt"
        expected = f"--admin-ssl-cert: no such file at {cert}"
    process = FerryProcess(
        [*_control_plane_args(redis_url, tmp_path / "cp", "127.0.0.1:0 ssl"),
         "--admin-ssl-cert", str(cert), "--admin-ssl-cert-key", str(key)],
        tmp_path / "cp.log",
    )
    try:
        assert await asyncio.to_thread(process.wait, 60) == 2
        log = process.log()
        assert expected in log, log
        assert "Traceback" not in log
        assert "not base64" not in log  # the key's text is never echoed
    finally:
        process.stop()

