"""Kong's ``targets`` entity: one ``host:port`` of an upstream, with a weight (and
Kong 3.12's ``failover`` flag)."""

from __future__ import annotations

from typing import Annotated

from control_plane.schemas.typedefs import (
    DEFAULT_TARGET_PORT,
    EntitySchema,
    ForeignKey,
    Record,
    Rule,
    RuleError,
    Tags,
    TimestampMs,
    UUIDStr,
    between,
    non_empty,
    parse_host,
)


def normalize_target(value: str) -> str:
    """``host[:port]`` -> Kong's canonical target text, port defaulting to 8000."""
    try:
        parsed = parse_host(value)
    except RuleError:
        raise RuleError("Invalid target; not a valid hostname or ip address") from None
    return parsed.format(DEFAULT_TARGET_PORT)


def _check_target(value: str) -> str:
    non_empty(value)
    return normalize_target(value)


class Target(Record):
    """Kong's ``targets`` entity: one ``host:port`` of an upstream, with a weight."""

    id: UUIDStr
    created_at: TimestampMs
    updated_at: TimestampMs
    upstream: ForeignKey
    target: Annotated[str, Rule(_check_target)]
    weight: Annotated[int, between(0, 65535)] = 100
    tags: Tags = None
    # Kong 3.12's: a failover target gets traffic only while no other target of the
    # upstream is usable (weight > 0 and healthy); every algorithm honours it here,
    # consistent-hashing included (see docs/load-balancing.md).
    failover: bool = False


SCHEMA = EntitySchema("targets", Target, endpoint_key="target")
