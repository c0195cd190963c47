"""Kong's ``services`` entity: where matched requests are proxied to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from control_plane.errors import SchemaViolation
from control_plane.schemas.typedefs import (
    EntitySchema,
    ForeignKey,
    Name,
    PathStr,
    Port,
    Record,
    Rule,
    RuleError,
    Tags,
    Timeout,
    Timestamp,
    UUIDStr,
    between,
    non_empty,
    parse_host,
)


def _check_service_host(value: str) -> str:
    non_empty(value)
    try:
        parsed = parse_host(value)
    except RuleError as exc:
        if str(exc) == "invalid port number":
            raise RuleError("must not have a port") from None
        raise RuleError(f"invalid value: {value}") from None
    if parsed.port is not None:
        raise RuleError("must not have a port")
    return value


class Service(Record):
    """Kong's ``services`` entity: where matched requests are proxied to."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: Name | None = None
    retries: Annotated[int, between(0, 32767)] = 5
    protocol: Literal["grpc", "grpcs", "http", "https"] = "http"
    host: Annotated[str, Rule(_check_service_host)]
    port: Port = 80
    path: PathStr | None = None
    connect_timeout: Timeout = 60000
    write_timeout: Timeout = 60000
    read_timeout: Timeout = 60000
    tags: Tags = None
    # TLS to the upstream (https only, as Kong): the certificate presented to it, and
    # how its certificate is verified (CA certificates by id; null: the system store).
    client_certificate: ForeignKey | None = None
    tls_verify: bool | None = None
    tls_verify_depth: Annotated[int, between(0, 64)] | None = None
    ca_certificates: list[UUIDStr] | None = None
    enabled: bool = True


def _url_shorthand(body: dict[str, Any]) -> dict[str, Any]:
    """A service's ``url`` (``https://example.com:8443/api``) sets ``protocol``, ``host``,
    ``port`` and ``path``; a port absent from the URL follows the scheme (80/443)."""
    if "url" not in body:
        return body
    body = dict(body)
    url = body.pop("url")
    if url is None:
        return body
    if not isinstance(url, str):
        raise SchemaViolation({"url": "expected a string"})
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
    except ValueError as exc:  # e.g. "Invalid IPv6 URL" for an unbalanced bracket
        raise SchemaViolation({"url": f"could not parse url. {exc}"}) from None
    try:
        port = parts.port
    except ValueError:
        raise SchemaViolation({"url": "could not parse url. invalid port"}) from None
    protocol = parts.scheme or ("https" if port == 443 else "http")
    body["protocol"] = protocol
    body["host"] = parts.hostname
    body["port"] = port if port is not None else (443 if protocol == "https" else 80)
    body["path"] = parts.path or None
    return body


#: Fields Kong allows only when the service speaks TLS to its upstream.
TLS_FIELDS = ("client_certificate", "tls_verify", "tls_verify_depth", "ca_certificates")


def _service_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> list[str]:
    """Kong's conditionals: ``path`` must be null for ``grpc``/``grpcs`` (a gRPC method
    is the request's path); the TLS fields must be null unless ``protocol`` is
    ``https`` (Kong 3.x: also for ``grpcs``, whose targets get the upstream's
    ``client_certificate`` only)."""
    messages: list[str] = []
    if "protocol" in fields:
        return messages
    if entity.get("protocol") in ("grpc", "grpcs") and entity.get("path") is not None:
        fields.setdefault("path", "value must be null")
        messages.append("failed conditional validation given value of field 'protocol'")
    if entity.get("protocol") == "https":
        return messages
    for name in TLS_FIELDS:
        if entity.get(name) is not None:
            fields.setdefault(name, "value must be null")
            messages.append("failed conditional validation given value of field 'protocol'")
    return messages


SCHEMA = EntitySchema("services", Service, checks=_service_checks, shorthands=_url_shorthand)
