"""The control plane's Admin API TLS flags on the command line, and ``ferry up``'s reading of
``--admin-listen`` (in process, nothing started)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ferry.cli import build_parser, main
from ferry.up import PortPlanError, admin_url, check_port_plan, port_plan
from tests.support.tls import self_signed


@pytest.fixture(autouse=True)
def _no_ferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FERRY_"):
            monkeypatch.delenv(name)


def test_the_flags_and_their_env_variables_reach_the_parser(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = build_parser().parse_args(["control-plane", "--admin-ssl-cert", "a.crt", "--admin-ssl-cert-key", "a.key"])
    assert (args.admin_ssl_cert, args.admin_ssl_cert_key) == ("a.crt", "a.key")
    monkeypatch.setenv("FERRY_ADMIN_SSL_CERT", "env.crt")
    monkeypatch.setenv("FERRY_ADMIN_SSL_CERT_KEY", "env.key")
    args = build_parser().parse_args(["control-plane"])
    assert (args.admin_ssl_cert, args.admin_ssl_cert_key) == ("env.crt", "env.key")


def test_a_mismatched_key_stops_the_control_plane_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one, other = self_signed(tmp_path, "one", "one.test"), self_signed(tmp_path, "two", "two.test")
    code = main(["control-plane", "--admin-listen", "127.0.0.1:8444 ssl", "--data-dir", str(tmp_path),
                 "--cluster-insecure", "--admin-ssl-cert", str(one.cert), "--admin-ssl-cert-key", str(other.key)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"ferry: error: --admin-ssl-cert-key: the key in {other.key} does not match "
                   f"the certificate in {one.cert}\n")


def test_an_unknown_listen_flag_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["control-plane", "--admin-listen", "127.0.0.1:8444 tls", "--data-dir", str(tmp_path),
                 "--cluster-insecure"])
    assert code == 2
    assert "--admin-listen: invalid listen entry '127.0.0.1:8444 tls': unknown flag 'tls'" in capsys.readouterr().err


@pytest.mark.parametrize(("listen", "url"), [
    ("127.0.0.1:8001", "http://127.0.0.1:8001"),
    ("127.0.0.1:8444 ssl, 127.0.0.1:8001", "http://127.0.0.1:8001"),
    ("0.0.0.0:8444 ssl", "https://127.0.0.1:8444"),
    ("[::1]:8001, [::1]:8444 ssl", "http://[::1]:8001"),
])
def test_ferry_up_talks_to_the_first_plaintext_admin_listener_else_the_first(listen: str, url: str) -> None:
    assert admin_url(listen) == url


def test_ferry_up_plans_every_admin_listener() -> None:
    args = build_parser().parse_args(["up", "--admin-listen", "127.0.0.1:8001, 127.0.0.1:8444 ssl"])
    owners = {listener.address: listener.owner for listener in port_plan(args)}
    assert owners["127.0.0.1:8001"] == "the Admin API"
    assert owners["127.0.0.1:8444"] == "the Admin API over TLS"
    clash = build_parser().parse_args(["up", "--admin-listen", "127.0.0.1:8001, 127.0.0.1:8100 ssl"])
    with pytest.raises(PortPlanError, match="the Admin API over TLS .--admin-listen. and data plane 1's status"):
        check_port_plan(port_plan(clash), bind_test=False)
    with pytest.raises(PortPlanError, match="the Admin API .--admin-listen.: invalid listen entry"):
        port_plan(build_parser().parse_args(["up", "--admin-listen", "127.0.0.1:8001 tls"]))
