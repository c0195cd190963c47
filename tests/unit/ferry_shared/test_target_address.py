"""One target grammar for both planes: what the control plane accepts, every data plane
parses to the same address."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.schemas import normalize_target
from control_plane.schemas.typedefs import RuleError
from data_plane.balancers import parse_target
from ferry_shared.target_address import DEFAULT_TARGET_PORT, HostPortError, parse_host

_ALPHABET = "abcXYZ019.-_:[]/ @\n" + "\u00e9"


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=_ALPHABET, min_size=1, max_size=24))
def test_a_target_the_control_plane_accepts_parses_on_the_data_plane_to_its_canonical_key(
    text: str,
) -> None:
    try:
        canonical = normalize_target(text)
    except RuleError:
        return
    address = parse_target(canonical)
    assert address.key == canonical.lower()


@pytest.mark.parametrize("text", ["bad:port", "a b", "a:70000", "[zz]:1", "x-.a", "a..b", "a\n"])
def test_both_planes_refuse_the_same_malformed_targets(text: str) -> None:
    with pytest.raises(RuleError):
        normalize_target(text)
    with pytest.raises(ValueError):
        parse_target(text)


def test_a_target_without_a_port_gets_kongs_default_on_both_planes() -> None:
    assert normalize_target("svc.internal") == f"svc.internal:{DEFAULT_TARGET_PORT}"
    assert parse_target("svc.internal").port == DEFAULT_TARGET_PORT


def test_ipv6_is_expanded_for_the_admin_api_and_kept_as_written_on_the_data_plane() -> None:
    assert parse_host("[::1]:81").host == "0000:0000:0000:0000:0000:0000:0000:0001"
    assert parse_host("[::1]:81", expand_ipv6=False).host == "::1"
    assert parse_target("[::1]:81").key == "[::1]:81"


def test_the_error_text_is_kongs() -> None:
    with pytest.raises(HostPortError, match="^invalid port number$"):
        parse_host("a:65536")
    with pytest.raises(HostPortError, match="^invalid ipv4 address: 1.2.3.999$"):
        parse_host("1.2.3.999")
