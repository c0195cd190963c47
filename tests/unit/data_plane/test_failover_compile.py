"""The target field ``failover`` through the data plane's compile: read from the target
entity, validated (NACKed when unusable), and a flag change rebuilds the balancer."""

from __future__ import annotations

from typing import Any

import pytest

from data_plane.balancers import BalancerHandle
from data_plane.runtime import ConfigError, compile_config


def entities(*targets: tuple[str, object]) -> dict[str, list[dict[str, Any]]]:
    target_rows = []
    for i, (text, failover) in enumerate(targets):
        row: dict[str, Any] = {"id": f"t{i}", "target": text, "weight": 100, "upstream": {"id": "u1"}}
        if failover is not ...:
            row["failover"] = failover
        target_rows.append(row)
    return {
        "upstreams": [{"id": "u1", "name": "shop"}],
        "targets": target_rows,
        "services": [],
        "routes": [],
    }


def test_failover_is_read_from_the_target_and_absent_or_null_means_a_primary() -> None:
    config = compile_config(
        1, "h1", entities(("10.2.0.1:80", ...), ("10.2.0.2:80", None), ("10.2.0.3:80", True))
    )
    upstream = config.upstreams["u1"]
    assert [(a.key, a.failover) for a in upstream.targets] == [
        ("10.2.0.1:80", False),
        ("10.2.0.2:80", False),
        ("10.2.0.3:80", True),
    ]
    assert {upstream.balancer.pick(BalancerHandle()).key for _ in range(6)} == {  # type: ignore[union-attr]
        "10.2.0.1:80",
        "10.2.0.2:80",
    }


def test_a_failover_value_that_is_not_a_boolean_is_refused_naming_the_target() -> None:
    with pytest.raises(ConfigError, match=r"target '10.2.0.1:80'.*failover"):
        compile_config(1, "h1", entities(("10.2.0.1:80", "yes")))


def test_a_failover_flag_change_rebuilds_the_balancer_and_an_unchanged_one_keeps_it() -> None:
    first = compile_config(1, "h1", entities(("10.2.0.1:80", False), ("10.2.0.2:80", False)))
    same = compile_config(2, "h2", entities(("10.2.0.1:80", False), ("10.2.0.2:80", False)), first)
    assert same.upstreams["u1"].balancer is first.upstreams["u1"].balancer
    flipped = compile_config(3, "h3", entities(("10.2.0.1:80", False), ("10.2.0.2:80", True)), same)
    balancer = flipped.upstreams["u1"].balancer
    assert balancer is not same.upstreams["u1"].balancer
    assert {balancer.pick(BalancerHandle()).key for _ in range(4)} == {"10.2.0.1:80"}  # type: ignore[union-attr]
