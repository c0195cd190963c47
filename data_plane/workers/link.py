"""The local link between a data-plane node and its proxy worker processes.

With ``--workers N`` one node process keeps the cluster connection, the health
checker and the status API, and N worker processes proxy on one port
(``SO_REUSEPORT``). They talk over a Unix socket with the cluster protocol's own
messages, each frame a 4-byte big-endian length and a serialized protobuf:

- node → worker: ``ControlPlaneMessage`` with the whole ``Snapshot`` the node
  serves (on connect and on every change) and ``HealthVerdicts`` (the node's
  health transitions: active probes, operators' overrides, the control plane's
  shared verdicts, and passive transitions seen by other workers);
- worker → node: ``DataPlaneMessage`` with a ``Hello`` (the worker's index),
  ``Ack``/``Nack`` of each snapshot and ``HealthReport`` s of the transitions its
  passive checks made.
"""

from __future__ import annotations

import asyncio
import struct

from google.protobuf.message import Message

#: Largest frame accepted (a whole config; the cluster link allows 256 MiB too).
MAX_FRAME = 256 * 1024 * 1024

_LENGTH = struct.Struct(">I")


class FrameError(Exception):
    """A frame that is too large or cut short: the link is unusable."""


def encode_frame(message: Message) -> bytes:
    body = message.SerializeToString()
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> bytes | None:
    """The next frame's bytes, or None at a clean end of the stream."""
    try:
        head = await reader.readexactly(_LENGTH.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise FrameError("stream ended inside a frame header") from None
    (length,) = _LENGTH.unpack(head)
    if length > MAX_FRAME:
        raise FrameError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    try:
        return await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        raise FrameError("stream ended inside a frame") from None
