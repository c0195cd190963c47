"""The pure parts of the HTTP/2 attack guards (data_plane/proxy/http2.py): the header
block cap in front of h2's frame buffer, and the per-window flood counter."""

from __future__ import annotations

import h2.exceptions
import pytest
from hyperframe.frame import ContinuationFrame, HeadersFrame

from data_plane.proxy.http2 import (
    FLOOD_WINDOW,
    MAX_HEADER_BLOCK_BYTES,
    MAX_HEADER_BLOCK_FRAMES,
    PREFACE,
    _FloodCounter,
    _GuardedFrameBuffer,
)


def _buffer() -> _GuardedFrameBuffer:
    buffer = _GuardedFrameBuffer(server=True)
    buffer.max_frame_size = 16384
    buffer.add_data(PREFACE)
    return buffer


def test_a_header_block_in_few_frames_passes() -> None:
    buffer = _buffer()
    buffer.add_data(HeadersFrame(1, data=b"a" * 100).serialize())
    buffer.add_data(ContinuationFrame(1, data=b"b" * 100, flags=["END_HEADERS"]).serialize())
    (frame,) = list(buffer)
    assert isinstance(frame, HeadersFrame) and frame.data == b"a" * 100 + b"b" * 100


def test_too_many_continuation_frames_are_a_denial_of_service() -> None:
    buffer = _buffer()
    buffer.add_data(HeadersFrame(1, data=b"").serialize())
    for _ in range(MAX_HEADER_BLOCK_FRAMES):
        buffer.add_data(ContinuationFrame(1, data=b"").serialize())
    with pytest.raises(h2.exceptions.DenialOfServiceError):
        list(buffer)


def test_a_header_block_over_the_byte_cap_is_a_denial_of_service() -> None:
    buffer = _buffer()
    buffer.add_data(HeadersFrame(1, data=b"a" * 16000).serialize())
    for _ in range(MAX_HEADER_BLOCK_BYTES // 16000):
        buffer.add_data(ContinuationFrame(1, data=b"a" * 16000).serialize())
    with pytest.raises(h2.exceptions.DenialOfServiceError):
        list(buffer)


def test_the_flood_counter_counts_per_window() -> None:
    counter = _FloodCounter(100.0)
    assert [counter.add(100.0 + i) for i in range(3)] == [1, 2, 3]
    assert counter.add(100.0 + FLOOD_WINDOW + 1) == 1
