"""The data plane's on-disk copy of the last applied snapshot.

A DP that starts while no control plane answers serves from this cache. The
file is written to a temporary name, fsynced, renamed over the old one and the
directory fsynced, so a crash leaves either the old or the new file, never a
torn one. The content is a short header (a magic line and the payload's length)
followed by the serialized ``proto`` Snapshot, hash included, so loading can tell
a truncated file from a damaged one and re-verifies the hash as a snapshot from
the wire is verified. A file without the header (written before it existed) is
read as a bare Snapshot.

A cache that cannot be used (empty, truncated, not a snapshot, content that does
not match its hash, a config this DP cannot compile) is never ignored silently:
one error is logged naming the file and the reason, the file is renamed to
``config-cache.pb.corrupt-<UTC time>`` for inspection (the newest
:data:`KEEP_QUARANTINED` are kept), :attr:`ConfigCache.problem` records it for
``GET /status``, and the DP starts without a config, waiting for the control plane.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferry_shared.snapshot_format import config_hash
from proto import cluster_pb2

log = logging.getLogger("ferry.data_plane.cache")

CACHE_FILE = "config-cache.pb"
#: First bytes of a cache file; the payload's length follows as 8 bytes, big-endian.
MAGIC = b"FERRY-CONFIG-CACHE 1\n"
_LENGTH = struct.Struct(">Q")
#: Quarantined (``.corrupt-*``) files kept beside the cache; older ones are deleted.
KEEP_QUARANTINED = 5
_HASH = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class CacheProblem:
    """Why the cache file was not used, and where it was put aside."""

    path: str
    error: str
    quarantined_as: str | None
    #: Epoch seconds.
    at: float


class ConfigCache:
    """Reads and writes ``<data_dir>/config-cache.pb``. Blocking I/O: call from a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / CACHE_FILE
        #: The unusable cache found by :meth:`load` or :meth:`reject`, if any (for /status).
        self.problem: CacheProblem | None = None

    def save(self, snapshot: cluster_pb2.Snapshot) -> None:
        self.save_encoded(snapshot.SerializeToString())

    def save_encoded(self, data: bytes) -> None:
        """Write ``data``, a serialized ``Snapshot``, as the cache (atomically, fsynced).

        The file is readable by its owner only (0600): the config holds the private keys
        of the ``certificates`` entities."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a leftover temporary file keeps its old mode through O_CREAT
        with os.fdopen(fd, "wb") as handle:
            handle.write(MAGIC + _LENGTH.pack(len(data)) + data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self) -> cluster_pb2.Snapshot | None:
        """The cached snapshot, hash verified; None when there is none or it is unusable.

        An unusable file is reported (log, :attr:`problem`) and put aside; see the module.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self.reject(f"cannot be read: {exc.strerror or exc}")
            return None
        snapshot, reason = _decode(data)
        if snapshot is None:
            self.reject(reason)
        return snapshot

    def reject(self, reason: str) -> None:
        """Report the cache file as unusable for ``reason`` and move it aside."""
        quarantined: Path | None = None
        try:
            quarantined = self._quarantine()
        except OSError as exc:
            reason = f"{reason} (could not move it aside: {exc.strerror or exc})"
        self.problem = CacheProblem(
            path=str(self.path),
            error=reason,
            quarantined_as=str(quarantined) if quarantined is not None else None,
            at=time.time(),
        )
        log.error(
            "config cache %s is unusable: %s; %s; starting without it, "
            "waiting for the control plane to send a config",
            self.path,
            reason,
            f"kept it as {quarantined}" if quarantined is not None else "left it in place",
        )

    def status(self) -> dict[str, Any]:
        """The ``config_cache`` object of the DP's ``GET /status``."""
        problem = self.problem
        return {
            "path": str(self.path),
            "error": problem.error if problem else None,
            "quarantined_as": problem.quarantined_as if problem else None,
            "error_at": problem.at if problem else None,
        }

    def _quarantine(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        os.rename(self.path, target)
        kept = sorted(self.path.parent.glob(f"{self.path.name}.corrupt-*"))  # oldest first
        for old in kept[:-KEEP_QUARANTINED]:
            try:
                old.unlink()
            except OSError:
                pass
        return target


def _decode(data: bytes) -> tuple[cluster_pb2.Snapshot | None, str]:
    """The verified snapshot in a cache file's bytes, or None and why not."""
    if not data:
        return None, "the file is empty (0 bytes)"
    if data.startswith(MAGIC):
        header = len(MAGIC) + _LENGTH.size
        if len(data) < header:
            return None, f"truncated: {len(data)} bytes, shorter than its header"
        (length,) = _LENGTH.unpack_from(data, len(MAGIC))
        payload = data[header:]
        if len(payload) < length:
            return None, f"truncated: {len(payload)} of {length} bytes of config"
        if len(payload) > length:
            return None, f"{len(payload) - length} unexpected bytes after the config"
    else:
        # A file written before the header existed is a bare Snapshot.
        payload = data
        text = _as_text(data)
        if text is not None:
            return None, f"plain text, not a config cache (it starts {text!r})"
    snapshot = cluster_pb2.Snapshot()
    try:
        snapshot.ParseFromString(payload)
    except Exception as exc:  # protobuf's DecodeError; any failure means the same here
        return None, f"not a config snapshot ({exc})"
    if not _HASH.fullmatch(snapshot.hash):
        return None, "not a config snapshot (it has no config hash)"
    digest = config_hash((r.kind, r.id, r.body) for r in snapshot.resources)
    if digest != snapshot.hash:
        return None, (
            f"its content does not match its hash (recorded {snapshot.hash[:12]}, "
            f"computed {digest[:12]}): the file is damaged"
        )
    return snapshot, ""


def _as_text(data: bytes) -> str | None:
    """The first characters of ``data`` when it reads as printable text, else None."""
    try:  # final=False: a character cut at the 64th byte is not an error
        text = codecs.getincrementaldecoder("utf-8")().decode(data[:64], final=False)
    except UnicodeDecodeError:
        return None
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return text[:40]
    return None
