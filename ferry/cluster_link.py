"""Rules for the CP↔DP link that both planes apply the same way."""

from __future__ import annotations


def require_secured_link(cluster_insecure: bool) -> None:
    """Refuse a cluster link that is neither mTLS nor explicitly marked insecure.

    Until mTLS lands, the only way to run is to opt in to plaintext with
    ``--cluster-insecure`` on both sides; anything else is refused at start-up
    with this message, before a port is bound.
    """
    if not cluster_insecure:
        raise ValueError(
            "the cluster link has no TLS certificates configured; mTLS is not available "
            "in this release yet, so start with --cluster-insecure (FERRY_CLUSTER_INSECURE=1) "
            "on both the control plane and the data planes, on a trusted network only"
        )
