"""Kong's ``snis`` entity: a server name (or wildcard) served with a certificate."""

from __future__ import annotations

from typing import Annotated

from control_plane.schemas.typedefs import (
    EntitySchema,
    ForeignKey,
    Record,
    Rule,
    RuleError,
    Tags,
    Timestamp,
    UUIDStr,
)
from ferry_shared.certificates import sni_name_problem


def check_sni_name(value: str) -> str:
    """Kong's ``wildcard_host``; the name is stored lower-cased (server names are
    case-insensitive: ``Example.com`` and ``example.com`` are one SNI)."""
    problem = sni_name_problem(value)
    if problem is not None:
        raise RuleError(problem)
    return value.lower()


SniName = Annotated[str, Rule(check_sni_name)]


class Sni(Record):
    """Kong's ``snis`` entity: ``name`` (unique) → ``certificate``."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: SniName
    certificate: ForeignKey
    tags: Tags = None


SCHEMA = EntitySchema("snis", Sni)
