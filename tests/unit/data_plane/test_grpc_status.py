"""gRPC statuses at the proxy's edge: Kong's mapping of the proxy's own errors, the gRPC
spec's mapping of a target's bare HTTP answer, ``grpc-message`` and ``grpc-timeout``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from data_plane import grpc_status as g


@pytest.mark.parametrize(
    ("http_status", "grpc", "name"),
    [
        (404, g.NOT_FOUND, "NotFound"),  # no route
        (503, g.UNAVAILABLE, "Unavailable"),  # no healthy target
        (504, g.DEADLINE_EXCEEDED, "DeadlineExceeded"),  # the target timed out
        (502, g.UNKNOWN, "Unknown"),  # not in Kong's table
        (429, g.RESOURCE_EXHAUSTED, "ResourceExhausted"),
    ],
)
def test_proxy_errors_map_as_kong_maps_them(http_status: int, grpc: int, name: str) -> None:
    assert g.status_for_proxy_error(http_status) == grpc
    headers = dict(g.error_headers(http_status))
    assert headers == {
        b":status": b"200",
        b"content-type": b"application/grpc",
        b"grpc-status": str(grpc).encode(),
        b"grpc-message": name.encode(),
    }


def test_an_error_message_is_percent_encoded() -> None:
    headers = dict(g.error_headers(404, "no Route matched with those values: 100% été"))
    assert headers[b"grpc-message"] == b"no Route matched with those values: 100%25 %C3%A9t%C3%A9"


@pytest.mark.parametrize(
    ("http_status", "grpc"), [(400, g.INTERNAL), (404, g.UNIMPLEMENTED), (503, g.UNAVAILABLE), (418, g.UNKNOWN)]
)
def test_a_targets_bare_http_answer_maps_as_the_grpc_spec_says(http_status: int, grpc: int) -> None:
    assert g.status_for_target_http(http_status) == grpc


@given(st.text())
def test_grpc_message_round_trips_and_is_a_plain_header_value(text: str) -> None:
    encoded = g.encode_message(text)
    assert all(0x20 <= b <= 0x7E for b in encoded)
    assert g.decode_message(encoded) == text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1S", 1.0), (b"250m", 0.25), (b"3M", 180.0), (b"2H", 7200.0), (b"99999999n", 0.099999999), (b"7u", 7e-6)],
)
def test_grpc_timeout_is_read_in_seconds(value: bytes, seconds: float) -> None:
    assert g.parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"1", b"123456789S", b"1s", b"-1S", b"1.5S", b"\xd9\xa1S"])
def test_malformed_grpc_timeouts_are_no_deadline(value: bytes) -> None:
    assert g.parse_timeout(value) is None


@given(st.floats(min_value=0, max_value=1e7, allow_nan=False))
def test_a_formatted_timeout_parses_back_no_longer_than_it_was(seconds: float) -> None:
    value = g.format_timeout(seconds)
    parsed = g.parse_timeout(value)
    assert parsed is not None
    assert parsed <= seconds * (1 + 1e-9) + 1e-12
    # The next coarser unit is 1000x or 60x: at least 5 of the 8 digits are significant.
    assert parsed >= seconds * (1 - 1e-4) - 1e-9
