"""mTLS on the cluster link with real parts: a CP (gRPC + Admin API on real Redis) and DP clients.

Each test starts one control plane on free ports with its TLS settings and
data-plane clients with theirs, and checks both sides: the DP applies the config
(or records a clear error) and the CP lists (or never lists) it.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import ferry
from control_plane.server import ControlPlane
from data_plane.cluster_client import ClusterClient
from data_plane.config_cache import ConfigCache
from data_plane.node_identity import NodeIdentity
from data_plane.runtime import ConfigHolder
from ferry.cluster_certs import write_cluster_certificate
from ferry_shared.cluster_tls import ClusterTLS
from tests.support.control_planes import start_control_plane
from tests.support.polling import wait_for
from tests.support.tls import Pair, make_authority


def link(tls: ClusterTLS | None) -> dict[str, Any]:
    """The control plane's cluster-link settings: mTLS with ``tls``, plaintext without."""
    return {"cluster_insecure": tls is None, "cluster_tls": tls}


class DataPlaneClient:
    """A DP's cluster client running as a task; ``close`` is registered on the stack."""

    def __init__(self, cp: ControlPlane, tmp_path: Path, name: str, tls: ClusterTLS | None) -> None:
        self.name = name
        self.holder = ConfigHolder()
        self.client = ClusterClient(
            f"127.0.0.1:{cp.cluster_port}",
            self.holder,
            ConfigCache(tmp_path / name),
            NodeIdentity(node_id=str(uuid.uuid4()), hostname=name, version=ferry.__version__),
            insecure=tls is None,
            tls=tls,
            backoff_base=0.05,
            backoff_max=0.3,
        )
        self.task = asyncio.create_task(self.client.run())

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


def start_dp(stack: AsyncExitStack, cp: ControlPlane, tmp_path: Path, name: str, tls: ClusterTLS | None) -> DataPlaneClient:
    dp = DataPlaneClient(cp, tmp_path, name, tls)
    stack.push_async_callback(dp.close)
    return dp


async def rows(cp: ControlPlane) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{cp.admin_port}/clustering/data-planes") as response:
            assert response.status == 200
            return list((await response.json())["data"])


async def wait_synced(cp: ControlPlane, dp: DataPlaneClient) -> None:
    await wait_for(lambda: dp.holder.current is not None, message=f"{dp.name} to apply a config")

    async def synced() -> bool:
        return any(r["hostname"] == dp.name and r["sync_status"] == "SYNCED" for r in await rows(cp))

    await wait_for(synced, message=f"the CP to list {dp.name} as SYNCED")


async def wait_rejected(cp: ControlPlane, dp: DataPlaneClient, expected: str) -> str:
    """Wait until ``dp`` failed twice with an error containing ``expected``; it never synced."""
    seen: list[str] = []

    def failed_twice() -> bool:
        error = dp.client.state.last_error
        if error and expected in error:
            seen.append(error)
        return len(seen) >= 2

    await wait_for(failed_twice, message=f"{dp.name} to report {expected!r}; last={dp.client.state.last_error!r}")
    assert dp.holder.current is None, "a rejected data plane receives no config"
    assert not dp.client.state.connected
    assert all(r["hostname"] != dp.name for r in await rows(cp)), "the CP never lists a rejected DP"
    return seen[-1]


@pytest.fixture
def shared_pair(tmp_path: Path) -> Pair:
    pair = Pair(tmp_path / "cluster" / "cluster.crt", tmp_path / "cluster" / "cluster.key")
    write_cluster_certificate(pair.cert, pair.key)
    return pair


async def test_shared_mode_a_data_plane_with_the_cluster_certificate_syncs(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path, shared_pair: Pair
) -> None:
    tls = ClusterTLS(mode="shared", cert=shared_pair.cert, key=shared_pair.key)
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(tls)
    )
    dp = start_dp(stack, cp, tmp_path, "dp-right", ClusterTLS(cert=shared_pair.cert, key=shared_pair.key))
    await wait_synced(cp, dp)
    assert dp.client.state.last_error is None


async def test_shared_mode_a_data_plane_with_the_wrong_certificate_is_rejected(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path, shared_pair: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="ferry.data_plane.cluster")
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(ClusterTLS(cert=shared_pair.cert, key=shared_pair.key))
    )
    right = start_dp(stack, cp, tmp_path, "dp-right", ClusterTLS(cert=shared_pair.cert, key=shared_pair.key))
    # Another `ferry cert generate`: same name, different key and certificate.
    other = Pair(tmp_path / "other" / "cluster.crt", tmp_path / "other" / "cluster.key")
    write_cluster_certificate(other.cert, other.key)
    wrong = start_dp(stack, cp, tmp_path, "dp-wrong", ClusterTLS(cert=other.cert, key=other.key))

    error = await wait_rejected(cp, wrong, "TLS handshake with the control plane failed")
    assert "--cluster-cert" in error and "CERTIFICATE_VERIFY_FAILED" in error
    assert any("TLS handshake with the control plane failed" in r.getMessage() for r in caplog.records), \
        "the DP's log says what is wrong"
    await wait_synced(cp, right)


async def test_shared_mode_a_certificate_merely_signed_by_the_cluster_key_fails_the_digest_check(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A cluster certificate that can sign (not what `ferry cert generate` makes) lets a
    # certificate it issued through the TLS handshake; the CP's digest check still refuses it.
    caplog.set_level(logging.WARNING)
    cluster = make_authority(tmp_path / "cluster", "ferry_clustering", dns_names=["ferry_clustering"])
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(ClusterTLS(cert=cluster.pair.cert, key=cluster.pair.key))
    )
    issued = cluster.issue(tmp_path / "issued", "impostor")
    impostor_tls = ClusterTLS(mode="pki", cert=issued.cert, key=issued.key, ca_cert=cluster.pair.cert,
                              server_name="ferry_clustering")
    impostor = start_dp(stack, cp, tmp_path, "dp-impostor", impostor_tls)

    error = await wait_rejected(cp, impostor, "the control plane rejected this data plane's certificate")
    assert "is not the cluster certificate" in error
    assert any("rejected a data plane connection" in r.getMessage() and r.name == "ferry_shared.cluster_tls"
               for r in caplog.records), "the CP logs the rejected peer"


async def test_pki_mode_a_data_plane_certificate_from_the_ca_syncs_and_one_from_another_ca_is_rejected(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path
) -> None:
    ca, foreign = make_authority(tmp_path / "ca", "cluster-ca"), make_authority(tmp_path / "ca", "foreign-ca")
    cp_pair = ca.issue(tmp_path / "cp-cert", "cp.ferry.test")
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(ClusterTLS(mode="pki", cert=cp_pair.cert, key=cp_pair.key, ca_cert=ca.pair.cert))
    )

    good_pair = ca.issue(tmp_path / "dp-cert", "dp-good")
    good = start_dp(stack, cp, tmp_path, "dp-good", ClusterTLS(
        mode="pki", cert=good_pair.cert, key=good_pair.key, ca_cert=ca.pair.cert, server_name="cp.ferry.test"))
    await wait_synced(cp, good)

    # Trusts the right CA for the CP (the bundle holds both), but its own certificate
    # comes from the foreign CA: the CP refuses it during the handshake.
    bundle = tmp_path / "ca" / "bundle.crt"
    bundle.write_bytes(ca.pair.cert.read_bytes() + foreign.pair.cert.read_bytes())
    bad_pair = foreign.issue(tmp_path / "dp-cert", "dp-foreign")
    bad = start_dp(stack, cp, tmp_path, "dp-foreign", ClusterTLS(
        mode="pki", cert=bad_pair.cert, key=bad_pair.key, ca_cert=bundle, server_name="cp.ferry.test"))
    error = await wait_rejected(cp, bad, "rejected this data plane's certificate")
    assert "--cluster-ca-cert" in error


async def test_pki_mode_a_control_plane_certificate_without_the_expected_name_is_refused_by_the_dp(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path
) -> None:
    ca = make_authority(tmp_path / "ca", "cluster-ca")
    cp_pair = ca.issue(tmp_path / "cp-cert", "cp.ferry.test")
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(ClusterTLS(mode="pki", cert=cp_pair.cert, key=cp_pair.key, ca_cert=ca.pair.cert))
    )
    dp_pair = ca.issue(tmp_path / "dp-cert", "dp")
    dp = start_dp(stack, cp, tmp_path, "dp", ClusterTLS(
        mode="pki", cert=dp_pair.cert, key=dp_pair.key, ca_cert=ca.pair.cert, server_name="elsewhere.test"))
    error = await wait_rejected(cp, dp, "does not carry the name 'elsewhere.test'")
    assert "--cluster-server-name" in error


async def test_a_plaintext_data_plane_is_refused_by_a_tls_control_plane(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path, shared_pair: Pair
) -> None:
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(ClusterTLS(cert=shared_pair.cert, key=shared_pair.key))
    )
    plain = start_dp(stack, cp, tmp_path, "dp-plain", None)
    error = await wait_rejected(cp, plain, "requires mTLS")
    assert "--cluster-insecure" in error


async def test_a_tls_data_plane_says_when_the_control_plane_is_plaintext(
    stack: AsyncExitStack, redis_url: str, tmp_path: Path, shared_pair: Pair
) -> None:
    cp = await start_control_plane(
        redis_url, tmp_path / "cp", stack=stack, **link(None)
    )
    dp = start_dp(stack, cp, tmp_path, "dp-tls", ClusterTLS(cert=shared_pair.cert, key=shared_pair.key))
    await wait_rejected(cp, dp, "it does not speak TLS")



async def test_the_health_port_answers_plaintext_grpc_probes_while_the_cluster_port_needs_mtls(
    redis_url: str, tmp_path: Path, shared_pair: Pair
) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    plane = await start_control_plane(
        redis_url,
        tmp_path / "cp",
        health_listen="127.0.0.1:0",
        **link(ClusterTLS(mode="shared", cert=shared_pair.cert, key=shared_pair.key)),
    )
    try:
        assert plane.health_port not in (0, plane.cluster_port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.health_port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=5
            )
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.cluster_port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=2
                )
    finally:
        await plane.stop(0.5)
