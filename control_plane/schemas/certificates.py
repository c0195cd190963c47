"""Kong's ``certificates`` entity: a certificate and its key (plus an optional
alternative pair of the other key type), served by SNI.

The PEM checks are :mod:`ferry_shared.certificates`, the functions data planes run on
the same entity. The ``snis`` shorthand (a list of names) is not a field of the stored
entity: :mod:`control_plane.certificate_service` turns it into ``snis`` entities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from control_plane.schemas.typedefs import (
    EntitySchema,
    Record,
    Rule,
    RuleError,
    Tags,
    Timestamp,
    UUIDStr,
    non_empty,
)
from ferry_shared.certificates import certificate_pair_problems, certificate_problem, key_problem


def check_certificate_pem(value: str) -> str:
    """Kong's ``typedefs.certificate``: ``invalid certificate: <why>``."""
    non_empty(value)
    problem = certificate_problem(value)
    if problem is not None:
        raise RuleError(problem)
    return value


def check_key_pem(value: str) -> str:
    """Kong's ``typedefs.key``: ``invalid key: <why>`` (never quoting the key)."""
    non_empty(value)
    problem = key_problem(value)
    if problem is not None:
        raise RuleError(problem)
    return value


CertificatePem = Annotated[str, Rule(check_certificate_pem, (("format", "pem"),))]
KeyPem = Annotated[str, Rule(check_key_pem, (("format", "pem"),))]


class Certificate(Record):
    """Kong's ``certificates`` entity (as stored: without the ``snis`` shorthand)."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    cert: CertificatePem
    key: KeyPem
    cert_alt: CertificatePem | None = None
    key_alt: KeyPem | None = None
    tags: Tags = None


def _certificate_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> list[str]:
    """Kong's entity checks (pairs complete and matching, key types differ) and expiry."""
    cert, key = entity.get("cert"), entity.get("key")
    cert_alt, key_alt = entity.get("cert_alt"), entity.get("key_alt")
    if not isinstance(cert, str) or not isinstance(key, str) or "cert" in fields or "key" in fields:
        return []
    if not isinstance(cert_alt, str | None) or not isinstance(key_alt, str | None):
        return []
    if "cert_alt" in fields or "key_alt" in fields:
        cert_alt = key_alt = None
    return certificate_pair_problems(cert, key, cert_alt, key_alt)


SCHEMA = EntitySchema("certificates", Certificate, checks=_certificate_checks, endpoint_key="id")
