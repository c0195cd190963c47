"""The data plane's on-disk copy of the last applied snapshot.

A DP that starts while no control plane answers serves from this cache. The
file is written to a temporary name, fsynced, renamed over the old one and the
directory fsynced, so a crash leaves either the old or the new file, never a
torn one. The content is the serialized ``proto`` Snapshot, hash included, so
loading re-verifies it exactly as a snapshot from the wire is verified.
"""

from __future__ import annotations

import os
from pathlib import Path

from proto import cluster_pb2

CACHE_FILE = "config-cache.pb"


class ConfigCache:
    """Reads and writes ``<data_dir>/config-cache.pb``. Blocking I/O: call from a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / CACHE_FILE

    def save(self, snapshot: cluster_pb2.Snapshot) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = snapshot.SerializeToString()
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self) -> cluster_pb2.Snapshot | None:
        """The cached snapshot, or None when there is none (a damaged file counts as none)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        snapshot = cluster_pb2.Snapshot()
        try:
            snapshot.ParseFromString(data)
        except Exception:  # protobuf raises DecodeError, but be robust to any corruption
            return None
        return snapshot
