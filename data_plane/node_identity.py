"""A data plane's stable identity: a UUID persisted under its data dir."""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    node_id: str
    hostname: str
    version: str
    labels: dict[str, str] = field(default_factory=dict)


def load_or_create_node_id(data_dir: Path) -> str:
    """Read ``<data_dir>/node_id``, creating it with a fresh UUID the first time."""
    path = Path(data_dir) / "node_id"
    try:
        existing = path.read_text().strip()
        uuid.UUID(existing)
        return existing
    except (FileNotFoundError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    node_id = str(uuid.uuid4())
    path.write_text(node_id + "\n")
    return node_id


def default_hostname() -> str:
    return socket.gethostname()
