"""Kong's ``routes`` entity: which requests go to which service."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field

from control_plane.schemas.typedefs import (
    EntitySchema,
    ForeignKey,
    HeaderValue,
    Name,
    Record,
    Rule,
    RuleError,
    Sni,
    Tags,
    Timestamp,
    UUIDStr,
    check_header_name,
    check_percent_encoding,
    dedupe,
    has_value,
    must_be_null,
    non_empty,
    parse_host,
)
from ferry_shared.route_regex import RouteRegexError, compile_header_regex, compile_path_regex

Protocol = Literal["grpc", "grpcs", "http", "https"]
_DEFAULT_PROTOCOLS: tuple[Protocol, ...] = ("http", "https")
#: Kong's ``mutually_exclusive_subsets`` of ``protocols`` (those Ferry serves).
_EXCLUSIVE_SUBSETS: tuple[tuple[str, ...], ...] = (("http", "https"), ("grpc", "grpcs"))
_GRPC = frozenset({"grpc", "grpcs"})
#: Kong's grpc route subschema: these fields are refused on a grpc/grpcs route.
_NOT_GRPC = "cannot set '{}' when 'protocols' is 'grpc' or 'grpcs'"


def _check_router_path(value: str) -> str:
    """Kong's ``typedefs.router_path``: ``/prefix`` or ``~/regex``."""
    non_empty(value)
    if not (value.startswith("/") or value.startswith("~/")):
        raise RuleError("should start with: / (fixed path) or ~/ (regex path)")
    if "//" in value:
        raise RuleError("must not have empty segments")
    check_percent_encoding(value)
    if value.startswith("~"):
        try:
            compile_path_regex(value[1:])
        except RouteRegexError as exc:
            raise RuleError(f"invalid regex: '{value[1:]}' (PCRE returned: {exc})") from None
    return value


def _check_route_host(value: str) -> str:
    non_empty(value)
    if value.count("*") > 1:
        raise RuleError("invalid wildcard: must have at most one wildcard")
    if "*" in value and not (value.startswith("*.") or value.endswith(".*")):
        raise RuleError("invalid wildcard: must be placed at leftmost or rightmost label")
    parse_host(value.replace("*", "abc"))
    return value


def _check_route_header_name(value: str) -> str:
    check_header_name(value)
    if value.lower() == "host":
        raise RuleError(
            "cannot contain 'host' header, which must be specified in the 'hosts' attribute"
        )
    return value


def _check_route_header_values(values: list[str]) -> list[str]:
    """A route header condition needs a value to match; ``~*`` values are regexes."""
    if not values:
        raise RuleError("length must be at least 1")
    for value in values:
        if value.startswith("~*"):
            try:
                compile_header_regex(value[2:])
            except RouteRegexError as exc:
                raise RuleError(f"invalid regex: '{value[2:]}' (PCRE returned: {exc})") from None
    return values


_METHOD_RE = re.compile(r"[A-Z]+")


def _check_method(value: str) -> str:
    non_empty(value)
    if not _METHOD_RE.fullmatch(value):
        raise RuleError(f"invalid value: {value}")
    return value


RouterPath = Annotated[str, Rule(_check_router_path)]


class Route(Record):
    """Kong's ``routes`` entity: which requests go to which service."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: Name | None = None
    protocols: Annotated[list[Protocol], Rule(dedupe, (("uniqueItems", True),))] = Field(
        default_factory=lambda: list(_DEFAULT_PROTOCOLS)
    )
    methods: Annotated[
        list[Annotated[str, Rule(_check_method)]] | None, Rule(dedupe, (("uniqueItems", True),))
    ] = None
    hosts: list[Annotated[str, Rule(_check_route_host)]] | None = None
    paths: list[RouterPath] | None = None
    headers: (
        dict[
            Annotated[str, Rule(_check_route_header_name)],
            Annotated[list[HeaderValue], Rule(_check_route_header_values, (("minItems", 1),))],
        ]
        | None
    ) = None
    https_redirect_status_code: Literal[426, 301, 302, 307, 308] = 426
    regex_priority: int = 0
    strip_path: bool = True
    path_handling: Literal["v0", "v1"] = "v0"
    preserve_host: bool = False
    request_buffering: bool = True
    response_buffering: bool = True
    snis: Annotated[list[Sni] | None, Rule(dedupe, (("uniqueItems", True),))] = None
    # Stream-only in Kong; an http route must leave them null.
    sources: Annotated[Any, Rule(must_be_null, (("type", "null"),))] = None
    destinations: Annotated[Any, Rule(must_be_null, (("type", "null"),))] = None
    tags: Tags = None
    service: ForeignKey | None = None


def _is_grpc(protocols: Any) -> bool:
    return isinstance(protocols, list) and any(p in _GRPC for p in protocols)


def _route_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> list[str]:
    """Kong's route rules: protocols from one family (http/https or grpc/grpcs),
    something to match on, ``snis`` only with a TLS protocol, and for grpc routes
    Kong's grpc subschema (no ``methods``, no ``strip_path``, no stream fields)."""
    messages: list[str] = []
    protocols = entity.get("protocols")
    if not isinstance(protocols, list) or "protocols" in fields:
        return messages
    families = [s for s in _EXCLUSIVE_SUBSETS if any(p in s for p in protocols)]
    if len(families) > 1:
        listed = ", ".join("(" + ", ".join(f"'{p}'" for p in s) + ")" for s in families)
        fields["protocols"] = f"these sets are mutually exclusive: {listed}"
        return messages
    if _is_grpc(protocols):
        _grpc_route_checks(entity, fields)
    tls = ("https" in protocols or "grpcs" in protocols)
    if not tls and has_value(entity.get("snis")) and "snis" not in fields:
        fields["snis"] = "length must be 0"
        messages.append("'snis' can only be set when 'protocols' is 'grpcs', 'https' or 'tls'")
    if "grpcs" in protocols:
        needed, protocol = ["hosts", "headers", "paths", "snis"], "grpcs"
    elif "grpc" in protocols:
        needed, protocol = ["hosts", "headers", "paths"], "grpc"
    elif "https" in protocols:
        needed, protocol = ["methods", "hosts", "headers", "paths", "snis"], "https"
    elif "http" in protocols:
        needed, protocol = ["methods", "hosts", "headers", "paths"], "http"
    else:
        return messages
    if not any(has_value(entity.get(name)) for name in needed):
        quoted = ", ".join(f"'{name}'" for name in needed)
        messages.append(f"must set one of {quoted} when 'protocols' is '{protocol}'")
    return messages


def _grpc_route_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """Kong's grpc subschema: a gRPC method is a path, requests are POSTs and the path
    goes to the target as it came (the service has no ``path`` either)."""
    if entity.get("strip_path") is True:
        fields.setdefault("strip_path", _NOT_GRPC.format("strip_path"))
    if entity.get("methods") is not None:
        fields.setdefault("methods", _NOT_GRPC.format("methods"))
    for name in ("sources", "destinations"):
        if name in fields:  # the http wording came from the field's own rule
            fields[name] = _NOT_GRPC.format(name)


def _grpc_strip_path_default(body: dict[str, Any]) -> dict[str, Any]:
    """Kong's grpc subschema defaults ``strip_path`` to false (true is refused): a
    grpc route written without it gets false instead of the http default."""
    if "strip_path" in body or not _is_grpc(body.get("protocols")):
        return body
    return {**body, "strip_path": False}


SCHEMA = EntitySchema(
    "routes", Route, checks=_route_checks, shorthands=_grpc_strip_path_default
)
