"""Rules for the CP↔DP link that both planes apply the same way."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ferry_shared.cluster_tls import ClusterTLS


#: Kong's: a DP pings every 30 s (it says its interval in ``Hello``; the CP pings
#: back at it), and either side drops a peer silent for 1.5 intervals (45 s).
DEFAULT_PING_INTERVAL = 30.0
SILENCE_FACTOR = 1.5


def require_secured_link(cluster_insecure: bool, tls: ClusterTLS | None = None) -> None:
    """Accept exactly one of: mTLS settings (``tls``) or an explicit plaintext opt-in.

    ``tls`` is already validated (:class:`~ferry_shared.cluster_tls.ClusterTLS` checks its
    files on construction). Neither, or both, is refused at start-up with a
    message naming the flags, before a port is bound.
    """
    if cluster_insecure and tls is not None:
        raise ValueError(
            "--cluster-insecure contradicts --cluster-cert: drop --cluster-insecure to use mTLS, "
            "or drop the certificate flags for a plaintext link"
        )
    if not cluster_insecure and tls is None:
        raise ValueError(
            "the cluster link has no TLS certificate: give both the control plane and the data "
            "planes --cluster-cert and --cluster-cert-key (create a shared pair with "
            "`ferry cert generate`), or opt in to a plaintext link with --cluster-insecure "
            "(FERRY_CLUSTER_INSECURE=1) on both sides, on a trusted network only"
        )
