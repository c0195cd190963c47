"""One data plane's sync state as the control plane records it: a plain value.

:class:`~control_plane.cluster_server.ClusterServicer` fills a :class:`DataPlaneRow`
per DP stream; :class:`~control_plane.data_planes.DataPlaneRegistry` keeps the rows in
Redis for ``/clustering/data-planes``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

SyncStatus = Literal["SYNCED", "STALE", "NACKED", "UNKNOWN", "VERSION_INCOMPATIBLE"]


@dataclass(slots=True)
class DataPlaneRow:
    """What the CP knows about one connected (or recently seen) DP."""

    id: str
    hostname: str
    ip: str
    version: str
    labels: dict[str, str] = field(default_factory=dict)
    #: Version and hash the DP last acknowledged (0 / "" before its first ACK).
    config_version: int = 0
    config_hash: str = ""
    sync_status: SyncStatus = "UNKNOWN"
    sync_error: str | None = None
    last_seen: int = 0
    updated_at: int = 0
    control_plane: str = ""

    def to_api(self) -> dict[str, Any]:
        return asdict(self)
