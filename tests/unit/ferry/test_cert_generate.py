"""``ferry cert generate`` and the CLI's refusal of bad cluster TLS flags (in process, nothing started)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ferry.cli import main
from ferry_shared.cluster_tls import SHARED_SERVER_NAME, ClusterTLS
from tests.support.tls import self_signed


@pytest.fixture(autouse=True)
def _no_ferry_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("FERRY_"):
            monkeypatch.delenv(name)


def test_generate_writes_a_p384_self_signed_shared_certificate_and_a_private_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, key = tmp_path / "c" / "cluster.crt", tmp_path / "c" / "cluster.key"
    assert main(["cert", "generate", "--cert", str(cert), "--key", str(key), "--days", "30"]) == 0
    out = capsys.readouterr().out
    assert "--cluster-cert" in out and str(cert) in out

    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    public = parsed.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    assert parsed.subject == parsed.issuer
    assert parsed.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SHARED_SERVER_NAME
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc
    assert 30 <= lifetime.days <= 31
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    ClusterTLS(cert=cert, key=key)  # the pair is valid shared-mode settings


def test_generate_refuses_to_overwrite_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cert, key = tmp_path / "cluster.crt", tmp_path / "cluster.key"
    args = ["cert", "generate", "--cert", str(cert), "--key", str(key)]
    assert main(args) == 0
    before = cert.read_bytes(), key.read_bytes()
    capsys.readouterr()

    assert main(args) == 2
    assert "already exist; pass --force" in capsys.readouterr().err
    assert (cert.read_bytes(), key.read_bytes()) == before

    assert main([*args, "--force"]) == 0
    assert cert.read_bytes() != before[0] and key.read_bytes() != before[1]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_generate_defaults_to_kong_file_names_in_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["cert", "generate"]) == 0
    assert (tmp_path / "cluster.crt").is_file() and (tmp_path / "cluster.key").is_file()


@pytest.mark.parametrize("command", ["control-plane", "data-plane"])
def test_a_plane_with_a_key_that_is_not_its_certificates_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    mine, other = self_signed(tmp_path, "mine"), self_signed(tmp_path, "other")
    code = main([command, "--data-dir", str(tmp_path / "data"),
                 "--cluster-cert", str(mine.cert), "--cluster-cert-key", str(other.key)])
    assert code == 2
    assert "is not the key of --cluster-cert" in capsys.readouterr().err
    assert not (tmp_path / "data").exists(), "nothing was started or written"


@pytest.mark.parametrize("command", ["control-plane", "data-plane"])
def test_a_plane_in_pki_mode_without_a_ca_refuses_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    mine = self_signed(tmp_path, "mine")
    code = main([command, "--data-dir", str(tmp_path / "data"), "--cluster-mtls", "pki",
                 "--cluster-cert", str(mine.cert), "--cluster-cert-key", str(mine.key)])
    assert code == 2
    assert "--cluster-mtls pki needs --cluster-ca-cert" in capsys.readouterr().err
