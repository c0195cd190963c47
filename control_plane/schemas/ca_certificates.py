"""Kong's ``ca_certificates`` entity: one trusted CA certificate (services'
``ca_certificates`` list them to verify upstream certificates)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import model_validator

from control_plane.schemas.certificates import CertificatePem
from control_plane.schemas.typedefs import EntitySchema, Record, Tags, Timestamp, UUIDStr
from ferry_shared.certificates import CertificateError, ca_certificate_problems, cert_digest


class CaCertificate(Record):
    """Kong's ``ca_certificates`` entity; ``cert_digest`` is computed from ``cert``."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    cert: CertificatePem
    cert_digest: str | None = None
    tags: Tags = None

    @model_validator(mode="before")
    @classmethod
    def _digest(cls, data: Any) -> Any:
        # Kong's on-write transformation: the digest always follows the certificate,
        # whatever a body says.
        if isinstance(data, dict) and isinstance(data.get("cert"), str):
            try:
                return {**data, "cert_digest": cert_digest(data["cert"])}
            except CertificateError:
                return data  # the cert field reports it
        return data


def _ca_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> list[str]:
    cert = entity.get("cert")
    if not isinstance(cert, str) or "cert" in fields:
        return []
    return ca_certificate_problems(cert)


SCHEMA = EntitySchema("ca_certificates", CaCertificate, checks=_ca_checks, endpoint_key="id")
