"""The cluster-link TLS settings: every misconfiguration is refused with a flag-naming message."""

from __future__ import annotations

import datetime
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError

from control_plane.server import ControlPlaneSettings
from data_plane.server import DataPlaneSettings
from ferry.cluster_certs import write_cluster_certificate
from ferry_shared.cluster_link import require_secured_link
from ferry_shared.cluster_tls import (
    SHARED_SERVER_NAME,
    ClusterTLS,
    cluster_tls_from_flags,
    explain_link_failure,
)
from tests.support.tls import Pair, make_authority, self_signed


@pytest.fixture
def shared(tmp_path: Path) -> Pair:
    pair = Pair(tmp_path / "cluster.crt", tmp_path / "cluster.key")
    write_cluster_certificate(pair.cert, pair.key)
    return pair


def refused(match: str, **kwargs: object) -> None:
    with pytest.raises(ValidationError, match=match):
        ClusterTLS(**kwargs)  # type: ignore[arg-type]


def test_a_generated_pair_is_valid_shared_settings_named_ferry_clustering(shared: Pair) -> None:
    tls = ClusterTLS(cert=shared.cert, key=shared.key)
    assert tls.mode == "shared"
    assert tls.expected_server_name() == SHARED_SERVER_NAME
    assert tls.root_pem == shared.cert.read_bytes(), "shared mode trusts the cluster cert itself"
    assert len(tls.digest) == 64
    assert tls.peer_check() is not None, "the CP compares digests in shared mode"
    assert "mTLS shared" in tls.describe()


def test_a_missing_certificate_file_names_the_flag_and_the_path(tmp_path: Path, shared: Pair) -> None:
    refused(r"--cluster-cert .*nope\.crt: cannot read it", cert=tmp_path / "nope.crt", key=shared.key)


def test_a_missing_or_unreadable_key_file_names_the_flag(tmp_path: Path, shared: Pair) -> None:
    refused(r"--cluster-cert-key .*nope\.key: cannot read it", cert=shared.cert, key=tmp_path / "nope.key")
    refused(r"--cluster-cert-key .*: cannot read it", cert=shared.cert, key=tmp_path)  # a directory


def test_a_file_that_is_not_a_certificate_is_refused(shared: Pair) -> None:
    refused(r"--cluster-cert .*cluster\.key: not a PEM certificate", cert=shared.key, key=shared.key)


def test_a_file_that_is_not_a_key_is_refused(shared: Pair) -> None:
    refused(r"--cluster-cert-key .*cluster\.crt: not a PEM private key", cert=shared.cert, key=shared.cert)


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path: Path, shared: Pair) -> None:
    other = self_signed(tmp_path / "other", "other")
    refused(r"--cluster-cert-key .*other\.key is not the key of --cluster-cert .*cluster\.crt",
            cert=shared.cert, key=other.key)


def test_an_encrypted_key_is_refused_with_a_hint(tmp_path: Path, shared: Pair) -> None:
    key = serialization.load_pem_private_key(shared.key.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    ))
    refused("the key is encrypted", cert=shared.cert, key=encrypted)


def test_an_expired_or_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = self_signed(tmp_path, "old", not_before=now - datetime.timedelta(days=10),
                      not_after=now - datetime.timedelta(days=1))
    refused("the certificate expired on", cert=old.cert, key=old.key)
    future = self_signed(tmp_path, "future", not_before=now + datetime.timedelta(days=1))
    refused("is valid only from", cert=future.cert, key=future.key)


def test_a_certificate_without_its_key_flag_is_refused(shared: Pair) -> None:
    refused("--cluster-cert-key is required", cert=shared.cert)
    refused("--cluster-cert is required", key=shared.key)


def test_pki_mode_needs_a_ca(tmp_path: Path) -> None:
    ca = make_authority(tmp_path, "ca")
    leaf = ca.issue(tmp_path, "cp.ferry.test")
    refused("--cluster-mtls pki needs --cluster-ca-cert", mode="pki", cert=leaf.cert, key=leaf.key)


def test_pki_mode_refuses_a_certificate_the_ca_did_not_issue(tmp_path: Path) -> None:
    ca, other = make_authority(tmp_path, "ca"), make_authority(tmp_path, "other-ca")
    leaf = other.issue(tmp_path, "dp")
    refused(r"dp\.crt was not issued by --cluster-ca-cert .*ca\.crt",
            mode="pki", cert=leaf.cert, key=leaf.key, ca_cert=ca.pair.cert)


def test_pki_mode_accepts_an_issued_certificate_and_uses_the_ca_as_root(tmp_path: Path) -> None:
    ca = make_authority(tmp_path, "ca")
    leaf = ca.issue(tmp_path, "dp")
    tls = ClusterTLS(mode="pki", cert=leaf.cert, key=leaf.key, ca_cert=ca.pair.cert,
                     server_name="cp.ferry.test")
    assert tls.root_pem == ca.pair.cert.read_bytes()
    assert tls.expected_server_name() == "cp.ferry.test"
    assert tls.peer_check() is None, "pki mode trusts the CA, no digest pinning"
    without_name = ClusterTLS(mode="pki", cert=leaf.cert, key=leaf.key, ca_cert=ca.pair.cert)
    assert without_name.expected_server_name() is None, "gRPC then checks the --control-plane host"


def test_shared_mode_refuses_pki_only_flags(tmp_path: Path, shared: Pair) -> None:
    refused("--cluster-ca-cert applies to --cluster-mtls pki only",
            cert=shared.cert, key=shared.key, ca_cert=shared.cert)
    refused("--cluster-server-name applies to --cluster-mtls pki only",
            cert=shared.cert, key=shared.key, server_name="cp")


def test_flags_build_settings_only_when_a_certificate_flag_is_given(shared: Pair) -> None:
    assert cluster_tls_from_flags("shared", None, None, None) is None
    assert cluster_tls_from_flags("shared", "", "", "", "") is None
    tls = cluster_tls_from_flags("shared", str(shared.cert), str(shared.key), None)
    assert tls is not None and tls.cert == shared.cert
    with pytest.raises(ValueError, match="--cluster-mtls must be shared or pki"):
        cluster_tls_from_flags("tls", str(shared.cert), str(shared.key), None)


def test_the_link_is_mtls_or_explicitly_insecure_never_both_nor_neither(shared: Pair) -> None:
    tls = ClusterTLS(cert=shared.cert, key=shared.key)
    require_secured_link(False, tls)
    require_secured_link(True, None)
    with pytest.raises(ValueError, match="--cluster-insecure contradicts --cluster-cert"):
        require_secured_link(True, tls)
    with pytest.raises(ValueError, match="ferry cert generate.*--cluster-insecure"):
        require_secured_link(False, None)
    assert ControlPlaneSettings(cluster_tls=tls).cluster_tls is tls
    assert DataPlaneSettings(cluster_tls=tls).cluster_tls is tls
    with pytest.raises(ValidationError, match="no TLS certificate"):
        DataPlaneSettings()


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def test_security_failures_are_explained_and_other_failures_are_not(shared: Pair) -> None:
    tls = ClusterTLS(cert=shared.cert, key=shared.key)
    handshake = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: Tls handshake "
                 "failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
                 "CERTIFICATE_VERIFY_FAILED: self signed certificate: OK")
    text = explain_link_failure(_rpc_error(grpc.StatusCode.UNAVAILABLE, handshake), tls)
    assert text is not None
    assert text.startswith("TLS handshake with the control plane failed (CERTIFICATE_VERIFY_FAILED: "
                           "self signed certificate)")
    assert "--cluster-cert" in text
    closed = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Socket closed"
    text = explain_link_failure(_rpc_error(grpc.StatusCode.UNAVAILABLE, closed), tls)
    assert text is not None and "rejected this data plane's certificate" in text
    text = explain_link_failure(_rpc_error(grpc.StatusCode.UNAVAILABLE, closed), None)
    assert text is not None and "requires mTLS" in text
    text = explain_link_failure(_rpc_error(grpc.StatusCode.UNAUTHENTICATED, "certificate sha256:..."), tls)
    assert text is not None and text.startswith("the control plane rejected this data plane's certificate")
    refused_port = "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: Connection refused"
    assert explain_link_failure(_rpc_error(grpc.StatusCode.UNAVAILABLE, refused_port), tls) is None
    assert explain_link_failure(_rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "version"), tls) is None
    assert explain_link_failure(OSError("boom"), tls) is None
