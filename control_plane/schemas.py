"""Entity schemas for the Admin API: Kong 3.x field names, defaults, ranges and messages.

The pydantic models below are the single definition of each entity
(``services``, ``routes``, ``upstreams``, ``targets``): validation, the stored
shape, form-body coercion and the OpenAPI document all derive from them.

Contract:

* :func:`validate_entity` takes a complete candidate (the body merged with what
  is already stored, plus ``id``/timestamps) and returns the canonical dict that
  is stored and served, or raises :class:`~control_plane.errors.SchemaViolation`
  whose ``fields`` follow Kong's shape and wording (``"expected an integer"``,
  ``"value should be between 10 and 65536"``, ``"unknown field"``,
  entity-level checks under ``"@entity"``).
* Models are strict: JSON ``"10"`` is not an integer. Form bodies are decoded and
  coerced by :func:`decode_form` first, as Kong infers form values from its schema.
"""

from __future__ import annotations

import ipaddress
import re
import types
import typing
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

from control_plane.errors import SchemaViolation
from ferry.cookie_path import cookie_path_problem
from ferry.route_regex import RouteRegexError, compile_header_regex, compile_path_regex
from ferry.target_health import (
    ACTIVE_HEALTHY_STATUSES,
    ACTIVE_UNHEALTHY_STATUSES,
    PASSIVE_HEALTHY_STATUSES,
    PASSIVE_UNHEALTHY_STATUSES,
)

#: The entity kinds the store keeps, in dependency order.
KINDS: tuple[str, ...] = ("upstreams", "targets", "services", "routes")

#: Kong's default port for a target given without one.
DEFAULT_TARGET_PORT = 8000

_INT32_MAX = 2**31


# --------------------------------------------------------------------------- rules


class RuleError(ValueError):
    """A validation rule failed; ``str(self)`` is Kong's message."""


@dataclass(frozen=True)
class Rule:
    """``Annotated`` metadata: run ``check`` after type validation.

    ``check`` returns the (possibly normalised) value or raises
    :class:`RuleError` with Kong's message. ``json_schema`` is merged into the
    field's JSON schema so the OpenAPI document states the same constraint.
    """

    check: Callable[[Any], Any]
    json_schema: tuple[tuple[str, Any], ...] = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._run, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        result = handler(schema)
        result.update(dict(self.json_schema))
        return result

    def _run(self, value: Any) -> Any:
        try:
            return self.check(value)
        except RuleError as exc:
            # The message travels in the context so braces in it are never
            # interpreted as a template.
            raise PydanticCustomError("kong", "{msg}", {"msg": str(exc)}) from None


def between(lo: float, hi: float) -> Rule:
    """Kong's ``between`` validator: ``value should be between lo and hi``."""

    def check(value: Any) -> Any:
        # Written so that NaN (from a form's "nan") fails too.
        if not lo <= value <= hi:
            raise RuleError(f"value should be between {int(lo)} and {int(hi)}")
        return value

    return Rule(check, (("minimum", lo), ("maximum", hi)))


def _chain(*checks: Callable[[Any], Any], **json_schema: Any) -> Rule:
    def check(value: Any) -> Any:
        for step in checks:
            value = step(value)
        return value

    return Rule(check, tuple(json_schema.items()))


def _non_empty(value: str) -> str:
    # Kong refuses empty strings for every string field (implicit len_min = 1).
    if value == "":
        raise RuleError("length must be at least 1")
    return value


# ------------------------------------------------------------------ host parsing


@dataclass(frozen=True)
class HostPort:
    """A parsed ``host[:port]``: ``kind`` is ``ipv4``, ``ipv6`` or ``name``."""

    kind: Literal["ipv4", "ipv6", "name"]
    host: str
    port: int | None

    def format(self, default_port: int | None = None) -> str:
        """``host:port`` (``[v6]:port``), the port defaulting to ``default_port``."""
        port = self.port if self.port is not None else default_port
        host = f"[{self.host}]" if self.kind == "ipv6" else self.host
        return host if port is None else f"{host}:{port}"


# Every pattern below is applied with ``fullmatch`` (or ends in ``\Z``), never ``match``
# with ``$``: ``$`` also matches before a final newline, so "x-a\n" would pass, reach
# every data plane and be refused there (or be written into a request). Digits are
# ``[0-9]``: ``\d`` matches any Unicode digit ("\u0668\u0660" is int() 80).
_HOSTNAME_CHARS = re.compile(r"[A-Za-z0-9\-._]+")
_IPV4_LIKE = re.compile(r"[0-9.]+(?::[0-9]+)?")
_BRACKETED_IPV6 = re.compile(r"\[([^\]]+)\](?::([0-9]+))?")
_TRAILING_PORT = re.compile(r":([0-9]+)\Z")


def _parse_port(text: str) -> int:
    port = int(text)
    if port > 65535:
        raise RuleError("invalid port number")
    return port


def parse_host(address: str) -> HostPort:
    """Parse a hostname, IPv4 or ``[IPv6]`` with an optional port, as Kong does.

    Raises :class:`RuleError` with Kong's text (``invalid hostname: x``,
    ``invalid port number``, ``invalid ipv4 address: x``, ``invalid ipv6 address: x``).
    IPv6 addresses are returned fully expanded, as Kong normalises them.
    """
    if address.count(":") > 1 or address.startswith("["):
        match = _BRACKETED_IPV6.fullmatch(address)
        text, port_text = (match.group(1), match.group(2)) if match else (address, None)
        try:
            ip6 = ipaddress.IPv6Address(text)
        except ValueError:
            raise RuleError(f"invalid ipv6 address: {address}") from None
        return HostPort("ipv6", ip6.exploded, _parse_port(port_text) if port_text else None)
    if _IPV4_LIKE.fullmatch(address):
        host, _, port_text = address.partition(":")
        try:
            ip4 = ipaddress.IPv4Address(host)
        except ValueError:
            raise RuleError(f"invalid ipv4 address: {address}") from None
        return HostPort("ipv4", str(ip4), _parse_port(port_text) if port_text else None)
    name, port = address, None
    port_match = _TRAILING_PORT.search(address)
    if port_match:
        name = address[: port_match.start()]
        port = _parse_port(port_match.group(1))
    if not _HOSTNAME_CHARS.fullmatch(name):
        raise RuleError(f"invalid hostname: {address}")
    labels = name.split(".")
    for index, label in enumerate(labels):
        # Empty labels only at the end (an FQDN's trailing dot); no label ends in '-'.
        if label.endswith("-") or (label == "" and index != len(labels) - 1):
            raise RuleError(f"invalid hostname: {address}")
    return HostPort("name", name, port)


# -------------------------------------------------------------- field validators


def _check_uuid(value: str) -> str:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise RuleError("expected a valid UUID") from None
    if len(value) != 36:
        raise RuleError("expected a valid UUID")
    return str(parsed)


def is_uuid(value: str) -> bool:
    """True when ``value`` is a UUID in its 36-character text form."""
    try:
        _check_uuid(value)
    except RuleError:
        return False
    return True


def _check_timestamp(value: int) -> int:
    if value <= 0:
        raise RuleError("expected a valid timestamp")
    return value


# Non-ASCII: any code point but a surrogate (no UTF-8 form; see _unicode_problems).
_NAME_RE = re.compile(r"[A-Za-z0-9.\-_~\u0080-\ud7ff\ue000-\U0010ffff]+")


def _check_name(value: str) -> str:
    _non_empty(value)
    if not _NAME_RE.fullmatch(value):
        raise RuleError(
            f"invalid value '{value}': the only accepted ascii characters are "
            "alphanumerics or ., -, _, and ~"
        )
    return value


_TAG_RE = re.compile(r"[ !-+\-.0-~\u0080-\ud7ff\ue000-\U0010ffff]+")


def _check_tag(value: str) -> str:
    _non_empty(value)
    if not _TAG_RE.fullmatch(value):
        raise RuleError(
            f"invalid tag '{value}': expected printable ascii (except `,` and `/`) "
            "or valid utf-8 sequences"
        )
    return value


def _check_service_host(value: str) -> str:
    _non_empty(value)
    try:
        parsed = parse_host(value)
    except RuleError as exc:
        if str(exc) == "invalid port number":
            raise RuleError("must not have a port") from None
        raise RuleError(f"invalid value: {value}") from None
    if parsed.port is not None:
        raise RuleError("must not have a port")
    return value


def _check_host_with_optional_port(value: str) -> str:
    _non_empty(value)
    parse_host(value)
    return value


def _check_sni(value: str) -> str:
    _non_empty(value)
    try:
        parsed = parse_host(value)
    except RuleError as exc:
        if str(exc) == "invalid port number":
            raise RuleError("must not have a port") from None
        raise RuleError(f"invalid value: {value}") from None
    if parsed.kind != "name":
        raise RuleError("must not be an IP")
    if parsed.port is not None:
        raise RuleError("must not have a port")
    if value.endswith("."):
        # A server name carries no root label (RFC 6066 §3): Kong refuses "example.".
        raise RuleError(f"invalid value: {value}")
    return value


_RFC3986_PATH = re.compile(r"/[A-Za-z0-9.\-_~/%:@!$&'()*+,;=]*")


def _check_percent_encoding(value: str) -> None:
    raw = re.sub(r"%[0-9A-Fa-f]{2}", "___", value)
    position = raw.find("%")
    if position >= 0:
        raise RuleError(f"invalid url-encoded value: '{raw[position:position + 3]}'")


def _check_path(value: str) -> str:
    """Kong's ``typedefs.path`` (service path, probe path, cookie path)."""
    _non_empty(value)
    if not value.startswith("/"):
        raise RuleError("should start with: /")
    if "//" in value:
        raise RuleError("must not have empty segments")
    if not _RFC3986_PATH.fullmatch(value):
        raise RuleError(
            f"invalid path: '{value}' (characters outside of the reserved list of RFC 3986 found)"
        )
    _check_percent_encoding(value)
    return value


def _check_cookie_path(value: str) -> str:
    """``hash_on_cookie_path``: Kong's ``typedefs.path`` that is also a cookie ``Path``.

    Data planes write it into ``Set-Cookie``; they refuse a config whose path could end
    the attribute (``;``), with the function used here, so it is refused first here.
    """
    _check_path(value)
    problem = cookie_path_problem(value)
    if problem is not None:
        raise RuleError(f"invalid cookie path: '{value}' ({problem})")
    return value


def _check_router_path(value: str) -> str:
    """Kong's ``typedefs.router_path``: ``/prefix`` or ``~/regex``."""
    _non_empty(value)
    if not (value.startswith("/") or value.startswith("~/")):
        raise RuleError("should start with: / (fixed path) or ~/ (regex path)")
    if "//" in value:
        raise RuleError("must not have empty segments")
    _check_percent_encoding(value)
    if value.startswith("~"):
        try:
            compile_path_regex(value[1:])
        except RouteRegexError as exc:
            raise RuleError(f"invalid regex: '{value[1:]}' (PCRE returned: {exc})") from None
    return value


def _check_route_host(value: str) -> str:
    _non_empty(value)
    if value.count("*") > 1:
        raise RuleError("invalid wildcard: must have at most one wildcard")
    if "*" in value and not (value.startswith("*.") or value.endswith(".*")):
        raise RuleError("invalid wildcard: must be placed at leftmost or rightmost label")
    parse_host(value.replace("*", "abc"))
    return value


_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")


def _check_header_name(value: str) -> str:
    # Kong's implicit len_min = 1 runs before the header-name validator.
    _non_empty(value)
    if not _TOKEN_RE.fullmatch(value):
        raise RuleError(
            f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        )
    return value


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _check_header_value(value: str) -> str:
    """A header value Ferry matches (route ``headers``) or sends (probe ``headers``).

    No control character but HTAB (RFC 9110 field-value): a CR or LF would split a
    probe request, and no request can carry one to match a route.
    """
    _non_empty(value)
    if _CONTROL_CHARS.search(value):
        raise RuleError(f"bad header value '{value}': control characters are not allowed")
    return value


def _check_route_header_name(value: str) -> str:
    _check_header_name(value)
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


#: An RFC 9110 token: printable ASCII but separators (Kong's ``validate_http_token``).
_HTTP_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_cookie_name(value: str) -> str:
    """Kong 3.x's cookie name rule: an HTTP token (as the data planes check it)."""
    _non_empty(value)
    if not _HTTP_TOKEN_RE.fullmatch(value):
        raise RuleError(
            "contains one or more invalid characters. ASCII control characters (0-31;127), "
            'space, tab and the characters ()<>@,;:\\"/?={}[] are not allowed.'
        )
    return value


_METHOD_RE = re.compile(r"[A-Z]+")


def _check_method(value: str) -> str:
    _non_empty(value)
    if not _METHOD_RE.fullmatch(value):
        raise RuleError(f"invalid value: {value}")
    return value


def _check_upstream_name(value: str) -> str:
    _non_empty(value)
    try:
        parsed = parse_host(value)
    except RuleError:
        raise RuleError(f"Invalid name ('{value}'); must be a valid hostname") from None
    if parsed.kind != "name":
        raise RuleError(f"Invalid name ('{value}'); no ip addresses allowed")
    if parsed.port is not None:
        raise RuleError(f"Invalid name ('{value}'); no port allowed")
    return value


def check_upstream_name(value: str) -> str:
    """An upstream's ``name`` as Kong checks it; :class:`RuleError` with Kong's message."""
    return _check_upstream_name(value)


def normalize_target(value: str) -> str:
    """``host[:port]`` -> Kong's canonical target text, port defaulting to 8000."""
    try:
        parsed = parse_host(value)
    except RuleError:
        raise RuleError("Invalid target; not a valid hostname or ip address") from None
    return parsed.format(DEFAULT_TARGET_PORT)


def _check_target(value: str) -> str:
    _non_empty(value)
    return normalize_target(value)


def _dedupe(values: list[Any] | None) -> list[Any] | None:
    """Kong's ``set`` type: duplicates are dropped, first occurrence kept."""
    if values is None:
        return None
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def _must_be_null(value: Any) -> Any:
    if value is not None:
        raise RuleError("value must be null")
    return value


# ----------------------------------------------------------------- field types

Str = Annotated[str, Rule(_non_empty)]
UUIDStr = Annotated[str, Rule(_check_uuid, (("format", "uuid"),))]
Timestamp = Annotated[int, Rule(_check_timestamp, (("minimum", 1),))]
Name = Annotated[str, Rule(_check_name)]
Tag = Annotated[str, Rule(_check_tag)]
Tags = Annotated[list[Tag] | None, Rule(_dedupe, (("uniqueItems", True),))]
Port = Annotated[int, between(0, 65535)]
PathStr = Annotated[str, Rule(_check_path)]
CookiePath = Annotated[str, Rule(_check_cookie_path)]
RouterPath = Annotated[str, Rule(_check_router_path)]
HeaderName = Annotated[str, Rule(_check_header_name)]
HeaderValue = Annotated[str, Rule(_check_header_value)]
CookieName = Annotated[str, Rule(_check_cookie_name)]
Sni = Annotated[str, Rule(_check_sni)]
def _compact_number(value: float) -> float | int:
    # Kong (cjson) prints 1, not 1.0: integral numbers serialise as integers.
    return int(value) if float(value).is_integer() else value


Seconds = Annotated[float, between(0, 65535), PlainSerializer(_compact_number, return_type=int | float)]


def _check_timestamp_ms(value: float) -> float:
    # Written so that NaN and infinities fail too.
    if not 0 < value < 1e15:
        raise RuleError("expected a valid timestamp")
    return round(value, 3)


#: Kong 3.x's ``auto_timestamp_ms`` (targets): epoch seconds with millisecond precision.
TimestampMs = Annotated[
    float,
    Rule(_check_timestamp_ms, (("exclusiveMinimum", 0),)),
    PlainSerializer(_compact_number, return_type=int | float),
]
Counter = Annotated[int, between(0, 255)]
HttpStatus = Annotated[int, between(100, 999)]
Timeout = Annotated[int, between(1, _INT32_MAX - 2)]
NullOnly = Annotated[Any, Rule(_must_be_null, (("type", "null"),))]

#: ``hash_on`` / ``hash_fallback`` values.
HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"]
HASH_ON_VALUES: tuple[str, ...] = typing.get_args(HashOn)
Protocol = Literal["http", "https"]
_DEFAULT_PROTOCOLS: tuple[Protocol, ...] = ("http", "https")


class _Model(BaseModel):
    # Strict: Kong refuses "10" for an integer in a JSON body; unknown fields are
    # reported as "unknown field" rather than silently dropped.
    model_config = ConfigDict(extra="forbid", strict=True)


class ForeignKey(_Model):
    """A reference to another entity by primary key: ``{"id": "<uuid>"}``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: UUIDStr


# ---------------------------------------------------------------- health checks


class ActiveHealthy(_Model):
    """Active probing of healthy targets; ``interval`` 0 disables it."""

    interval: Seconds = 0
    http_statuses: list[HttpStatus] = Field(default_factory=lambda: list(ACTIVE_HEALTHY_STATUSES))
    successes: Counter = 0


class ActiveUnhealthy(_Model):
    """Active probing of unhealthy targets; a counter of 0 is inert."""

    interval: Seconds = 0
    http_statuses: list[HttpStatus] = Field(
        default_factory=lambda: list(ACTIVE_UNHEALTHY_STATUSES)
    )
    tcp_failures: Counter = 0
    timeouts: Counter = 0
    http_failures: Counter = 0


class ActiveHealthcheck(_Model):
    """``healthchecks.active``: probes sent by the balancer."""

    type: Literal["tcp", "http", "https"] = "http"
    timeout: Seconds = 1
    concurrency: Annotated[int, between(1, _INT32_MAX)] = 10
    http_path: PathStr = "/"
    https_sni: Sni | None = None
    https_verify_certificate: bool = True
    headers: dict[HeaderName, list[HeaderValue]] | None = None
    healthy: ActiveHealthy = Field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = Field(default_factory=ActiveUnhealthy)


class PassiveHealthy(_Model):
    """Proxied responses that count as successes."""

    http_statuses: list[HttpStatus] = Field(
        default_factory=lambda: list(PASSIVE_HEALTHY_STATUSES)
    )
    successes: Counter = 0


class PassiveUnhealthy(_Model):
    """Proxied outcomes that count as failures (the circuit breaker)."""

    http_statuses: list[HttpStatus] = Field(default_factory=lambda: list(PASSIVE_UNHEALTHY_STATUSES))
    tcp_failures: Counter = 0
    timeouts: Counter = 0
    http_failures: Counter = 0


class PassiveHealthcheck(_Model):
    """``healthchecks.passive``: health learned from proxied traffic."""

    type: Literal["tcp", "http", "https"] = "http"
    healthy: PassiveHealthy = Field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = Field(default_factory=PassiveUnhealthy)
    # Ferry extensions (Envoy's outlier detection; see docs/health-checks.md): a target
    # ejected by passive checks is let through again (half-open) after this many
    # seconds, doubled on each consecutive ejection up to max_ejection_time; 0 keeps it
    # out until an active check or an operator brings it back (Kong's behaviour).
    base_ejection_time: Seconds = 30
    max_ejection_time: Seconds = 300


class Healthchecks(_Model):
    """An upstream's ``healthchecks`` record."""

    active: ActiveHealthcheck = Field(default_factory=ActiveHealthcheck)
    passive: PassiveHealthcheck = Field(default_factory=PassiveHealthcheck)
    threshold: Annotated[
        float, between(0, 100), PlainSerializer(_compact_number, return_type=int | float)
    ] = 0


# --------------------------------------------------------------------- entities


class Upstream(_Model):
    """Kong's ``upstreams`` entity: a virtual hostname balanced over targets."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: Annotated[str, Rule(_check_upstream_name)]
    algorithm: Literal["round-robin", "consistent-hashing", "least-connections", "latency"] = (
        "round-robin"
    )
    hash_on: HashOn = "none"
    hash_fallback: HashOn = "none"
    hash_on_header: HeaderName | None = None
    hash_fallback_header: HeaderName | None = None
    hash_on_cookie: CookieName | None = None
    hash_on_cookie_path: CookiePath = "/"
    hash_on_query_arg: Str | None = None
    hash_fallback_query_arg: Str | None = None
    hash_on_uri_capture: Str | None = None
    hash_fallback_uri_capture: Str | None = None
    slots: Annotated[int, between(10, 65536)] = 10000
    healthchecks: Healthchecks = Field(default_factory=Healthchecks)
    tags: Tags = None
    host_header: Annotated[str, Rule(_check_host_with_optional_port)] | None = None
    # Ferry has no certificates entity: only null is accepted (kept for Kong-shaped dumps).
    client_certificate: NullOnly = None
    use_srv_name: bool = False
    # Ferry extensions (Envoy's ideas, opt-in; see docs/load-balancing.md):
    # seconds over which a new or recovered target ramps its weight from 10% to 100%.
    slow_start: Annotated[
        float, between(0, 3600), PlainSerializer(_compact_number, return_type=int | float)
    ] = 0
    # retries allowed as a percentage of the upstream's active requests (null: no budget).
    retry_budget_percent: Annotated[
        float, between(0, 100), PlainSerializer(_compact_number, return_type=int | float)
    ] | None = None


class Target(_Model):
    """Kong's ``targets`` entity: one ``host:port`` of an upstream, with a weight."""

    id: UUIDStr
    created_at: TimestampMs
    updated_at: TimestampMs
    upstream: ForeignKey
    target: Annotated[str, Rule(_check_target)]
    weight: Annotated[int, between(0, 65535)] = 100
    tags: Tags = None


class Service(_Model):
    """Kong's ``services`` entity: where matched requests are proxied to."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: Name | None = None
    retries: Annotated[int, between(0, 32767)] = 5
    protocol: Literal["http", "https"] = "http"
    host: Annotated[str, Rule(_check_service_host)]
    port: Port = 80
    path: PathStr | None = None
    connect_timeout: Timeout = 60000
    write_timeout: Timeout = 60000
    read_timeout: Timeout = 60000
    tags: Tags = None
    client_certificate: NullOnly = None
    tls_verify: bool | None = None
    tls_verify_depth: Annotated[int, between(0, 64)] | None = None
    ca_certificates: NullOnly = None
    enabled: bool = True


class Route(_Model):
    """Kong's ``routes`` entity: which requests go to which service."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: Name | None = None
    protocols: Annotated[list[Protocol], Rule(_dedupe, (("uniqueItems", True),))] = Field(
        default_factory=lambda: list(_DEFAULT_PROTOCOLS)
    )
    methods: Annotated[
        list[Annotated[str, Rule(_check_method)]] | None, Rule(_dedupe, (("uniqueItems", True),))
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
    snis: Annotated[list[Sni] | None, Rule(_dedupe, (("uniqueItems", True),))] = None
    # Stream-only in Kong; an http route must leave them null.
    sources: Annotated[Any, Rule(_must_be_null, (("type", "null"),))] = None
    destinations: Annotated[Any, Rule(_must_be_null, (("type", "null"),))] = None
    tags: Tags = None
    service: ForeignKey | None = None


MODELS: dict[str, type[_Model]] = {
    "upstreams": Upstream,
    "targets": Target,
    "services": Service,
    "routes": Route,
}

#: Fields holding Kong ``set`` values (their type error says "expected a set").
_SET_FIELDS = frozenset({"tags", "methods", "protocols", "snis"})
#: Fields holding Kong ``map`` values; errors inside a map are reported on the map.
_MAP_FIELDS = frozenset({"headers"})
#: Kong's message for fields that must be null on an http route.
_NULL_FIELD_MESSAGES = {
    "sources": "cannot set 'sources' when 'protocols' is 'http' or 'https'",
    "destinations": "cannot set 'destinations' when 'protocols' is 'http' or 'https'",
}


# ------------------------------------------------------------ error translation


def _literal_message(error: Mapping[str, Any]) -> str:
    expected = str(error.get("ctx", {}).get("expected", ""))
    options = [
        part.strip().strip("'")
        for part in re.split(r",\s*|\s+or\s+", expected)
        if part.strip()
    ]
    value = error.get("input")
    literal_is_int = all(option.lstrip("-").isdigit() for option in options)
    if literal_is_int and (not isinstance(value, int) or isinstance(value, bool)):
        return "expected an integer"
    if not literal_is_int and not isinstance(value, str):
        return "expected a string"
    return "expected one of: " + ", ".join(options)


_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected a boolean",
    "bool_parsing": "expected a boolean",
    "dict_type": "expected a map",
    "model_type": "expected a record",
    "model_attributes_type": "expected a record",
}


def _message_for(error: Mapping[str, Any], field: str | None) -> str:
    kind = error["type"]
    if kind == "kong":
        message = str(error["ctx"]["msg"])
        if field in _NULL_FIELD_MESSAGES and message == "value must be null":
            return _NULL_FIELD_MESSAGES[field]
        return message
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if error.get("input") is None and (kind in _TYPE_MESSAGES or kind == "list_type"):
        # An explicit null for a field that is not nullable.
        return "required field missing"
    if kind == "literal_error":
        return _literal_message(error)
    if kind == "list_type":
        return "expected a set" if field in _SET_FIELDS else "expected an array"
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    return str(error.get("msg", "invalid value"))


def _place(tree: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    """Store ``message`` at ``loc`` in Kong's nested error shape."""
    node: Any = tree
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        if isinstance(part, int):
            # Array element errors: a list with None at valid positions.
            if not isinstance(node, list):
                return
            while len(node) <= part:
                node.append(None)
            if last:
                node[part] = node[part] or message
                return
            if not isinstance(node[part], dict | list):
                nxt: Any = [] if isinstance(loc[depth + 1], int) else {}
                node[part] = nxt
            node = node[part]
            continue
        if last:
            if part not in node:
                node[part] = message
            return
        child = node.get(part)
        if not isinstance(child, dict | list):
            child = [] if isinstance(loc[depth + 1], int) else {}
            node[part] = child
        node = child


def _kong_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Kong reports one message for a whole map, never per key or value."""
    for index, part in enumerate(loc):
        if part in _MAP_FIELDS:
            return loc[: index + 1]
    return loc


def _translate(exc: PydanticValidationError) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for error in exc.errors():
        loc = _kong_loc(tuple(error["loc"]))
        field = next((part for part in reversed(loc) if isinstance(part, str)), None)
        _place(fields, loc, _message_for(error, field))
    return fields


# ------------------------------------------------------------ unicode text


def _lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (U+D800..U+DFFF), or ``None``.

    Such a string is not Unicode text: it has no UTF-8 form, so it cannot be stored,
    sent to a data plane or put in a request. JSON lets a body write one
    (``"\\ud800"``), as can a form in UTF-7.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _unicode_problems(value: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """``(location, message)`` for each lone surrogate in a JSON value, keys included.

    A bad key is reported at the object holding it (its text is never echoed).
    Iterative: a body nested as deep as the JSON parser allows does not recurse.
    """
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, str):
            position = _lone_surrogate(node)
            if position is not None:
                yield loc, f"invalid unicode: a lone surrogate at position {position}"
        elif isinstance(node, dict):
            for key, item in node.items():
                position = _lone_surrogate(key) if isinstance(key, str) else None
                if position is not None:
                    yield loc, f"invalid unicode in a key: a lone surrogate at position {position}"
                else:
                    stack.append(((*loc, key), item))
        elif isinstance(node, list):
            stack.extend(((*loc, index), item) for index, item in enumerate(node))


def has_lone_surrogate(value: Any) -> bool:
    """True when a string of ``value`` (nested dicts and lists, keys too) is not
    Unicode text because it holds a lone surrogate."""
    return next(_unicode_problems(value), None) is not None


def _unicode_violations(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """Kong-shaped ``fields`` for every lone surrogate in ``candidate`` (empty: none)."""
    fields: dict[str, Any] = {}
    for loc, message in _unicode_problems(dict(candidate)):
        if not loc:
            fields.setdefault("@entity", []).append(message)
        else:
            _place(fields, _kong_loc(loc), message)
    return fields


# ---------------------------------------------------------------- entity checks

_CONDITIONAL = "failed conditional validation given value of field '{}'"


def _nonempty(value: Any) -> bool:
    return value not in (None, "", [], {})


def _upstream_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> list[str]:
    """Kong's ``hash_on`` companion and fallback rules."""
    messages: list[str] = []

    def conditional(
        if_field: str, if_value: str, then_field: str, *, one_of: Iterable[str] | None = None
    ) -> None:
        if entity.get(if_field) != if_value or if_field in fields:
            return
        value = entity.get(then_field)
        if one_of is None:
            if value is None:
                fields.setdefault(then_field, "required field missing")
                messages.append(_CONDITIONAL.format(if_field))
            return
        allowed = list(one_of)
        if value is not None and value not in allowed:
            # Kong lists the values allowed here, also for a value of no mode at all
            # (its type check's longer list gives way to the conditional's).
            current = fields.get(then_field)
            if current is None or (isinstance(current, str) and current.startswith("expected one of: ")):
                fields[then_field] = "expected one of: " + ", ".join(allowed)
            messages.append(_CONDITIONAL.format(if_field))

    def distinct(*names: str) -> None:
        values = [repr(entity.get(name)) for name in names if _nonempty(entity.get(name))]
        if len(values) != len(set(values)):
            quoted = ", ".join(f"'{name}'" for name in names)
            messages.append(f"values of these fields must be distinct: {quoted}")

    def others(excluded: str) -> list[str]:
        return [value for value in HASH_ON_VALUES if value != excluded]

    conditional("hash_on", "header", "hash_on_header")
    conditional("hash_fallback", "header", "hash_fallback_header")
    conditional("hash_on", "cookie", "hash_on_cookie")
    conditional("hash_fallback", "cookie", "hash_on_cookie")
    conditional("hash_on", "none", "hash_fallback", one_of=["none"])
    conditional("hash_on", "cookie", "hash_fallback", one_of=["none"])
    conditional("hash_on", "consumer", "hash_fallback", one_of=others("consumer"))
    conditional("hash_on", "ip", "hash_fallback", one_of=others("ip"))
    conditional("hash_on", "path", "hash_fallback", one_of=others("path"))
    distinct("hash_on_header", "hash_fallback_header")
    conditional("hash_on", "query_arg", "hash_on_query_arg")
    conditional("hash_fallback", "query_arg", "hash_fallback_query_arg")
    distinct("hash_on_query_arg", "hash_fallback_query_arg")
    conditional("hash_on", "uri_capture", "hash_on_uri_capture")
    conditional("hash_fallback", "uri_capture", "hash_fallback_uri_capture")
    distinct("hash_on_uri_capture", "hash_fallback_uri_capture")
    return messages


def _route_checks(entity: Mapping[str, Any], fields: dict[str, Any]) -> list[str]:
    """Kong's http-route rules: something to match on; ``snis`` only with https."""
    messages: list[str] = []
    protocols = entity.get("protocols")
    if not isinstance(protocols, list) or "protocols" in fields:
        return messages
    if "https" not in protocols and _nonempty(entity.get("snis")) and "snis" not in fields:
        fields["snis"] = "length must be 0"
        messages.append("'snis' can only be set when 'protocols' is 'grpcs', 'https' or 'tls'")
    if "https" in protocols:
        needed = ["methods", "hosts", "headers", "paths", "snis"]
        protocol = "https"
    elif "http" in protocols:
        needed = ["methods", "hosts", "headers", "paths"]
        protocol = "http"
    else:
        return messages
    if not any(_nonempty(entity.get(name)) for name in needed):
        quoted = ", ".join(f"'{name}'" for name in needed)
        messages.append(f"must set one of {quoted} when 'protocols' is '{protocol}'")
    return messages


_ENTITY_CHECKS: dict[str, Callable[[Mapping[str, Any], dict[str, Any]], list[str]]] = {
    "upstreams": _upstream_checks,
    "routes": _route_checks,
}


# ------------------------------------------------------------------- public API


def expand_shorthands(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Replace Kong's shorthand fields by the fields they stand for.

    A service's ``url`` (``https://example.com:8443/api``) sets ``protocol``,
    ``host``, ``port`` and ``path``; a port absent from the URL follows the
    scheme (80/443). Raises :class:`SchemaViolation` for a ``url`` that is not
    a string or has no host.

    An upstream's ``hash_on`` other than ``none``, given without an ``algorithm``,
    sets ``algorithm: consistent-hashing``, as Kong's upstreams schema does (so a
    Kong 1.x-style upstream, which had no algorithm, keeps hashing). It applies to
    what the request carries: a PATCH of ``hash_on`` alone switches a stored
    ``round-robin`` upstream to hashing; a PATCH without ``hash_on`` leaves the
    algorithm alone.
    """
    if kind == "upstreams":
        return _hash_on_implies_algorithm(body)
    if kind != "services" or "url" not in body:
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


def _hash_on_implies_algorithm(body: dict[str, Any]) -> dict[str, Any]:
    hash_on = body.get("hash_on")
    if body.get("algorithm") is not None or not isinstance(hash_on, str) or hash_on in ("", "none"):
        return body
    return {**body, "algorithm": "consistent-hashing"}


def validate_entity(kind: str, candidate: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a complete ``kind`` entity and return its canonical stored form.

    ``candidate`` must already carry ``id``, ``created_at`` and ``updated_at``
    and have its shorthands expanded. Field errors and entity-level checks are
    collected together, as Kong does, into one :class:`SchemaViolation`.
    """
    model = MODELS[kind]
    # First, and alone: such a string cannot even be shown in a message by pydantic
    # (a 500), nor stored, nor applied by a data plane.
    fields: dict[str, Any] = _unicode_violations(candidate)
    if fields:
        raise SchemaViolation(fields)
    result: dict[str, Any] | None = None
    try:
        result = model.model_validate(dict(candidate)).model_dump(mode="json")
        checked: Mapping[str, Any] = result
    except PydanticValidationError as exc:
        fields = _translate(exc)
        # Entity checks still see the fields that were valid (and defaults for
        # the missing ones), so one response reports every problem.
        checked = {**_defaults(model), **candidate}
    check = _ENTITY_CHECKS.get(kind)
    messages = check(checked, fields) if check else []
    if messages:
        fields["@entity"] = messages
    if fields or result is None:
        raise SchemaViolation(fields)
    return result


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    defaults: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        if not info.is_required():
            defaults[name] = info.get_default(call_default_factory=True)
    return defaults


def merge_patch(kind: str, current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """Kong's update merge: records merge field by field; arrays and maps are replaced."""
    return _merge_record(MODELS[kind], current, patch)


def _merge_record(
    model: type[BaseModel] | None, current: Mapping[str, Any], patch: Mapping[str, Any]
) -> dict[str, Any]:
    merged = dict(current)
    for key, value in patch.items():
        sub = _record_model(model, key) if model is not None else None
        old = merged.get(key)
        if sub is not None and isinstance(value, dict) and isinstance(old, dict):
            merged[key] = _merge_record(sub, old, value)
        else:
            merged[key] = value
    return merged


def _unwrap(annotation: Any) -> Any:
    """Strip ``Annotated`` and ``| None`` from a field annotation."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _record_model(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    info = model.model_fields.get(field)
    if info is None:
        return None
    annotation = _unwrap(info.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A foreign key is a reference, replaced whole, not merged.
        return None if annotation is ForeignKey else annotation
    return None


# ------------------------------------------------------------------ form bodies


def _scalar_kind(annotation: Any) -> str:
    annotation = _unwrap(annotation)
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        return "int" if all(isinstance(v, int) for v in values) else "str"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "str"


def _coerce_scalar(value: str, kind: str) -> Any:
    if value == "":
        return None
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            number = float(value)
            return int(number) if number.is_integer() and "." not in value else number
    except ValueError:
        return value  # left as text: validation reports the type error
    if kind == "bool":
        return {"true": True, "false": False}.get(value.lower(), value)
    return value


def _coerce(annotation: Any, value: Any) -> Any:
    annotation = _unwrap(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return value
        return {
            key: _coerce(
                annotation.model_fields[key].annotation if key in annotation.model_fields else str,
                item,
            )
            for key, item in value.items()
        }
    if origin is list:
        (element,) = typing.get_args(annotation)
        if isinstance(value, dict):  # paths[1]=/a&paths[2]=/b
            value = [value[key] for key in sorted(value, key=_form_index)]
        if value == "":
            return None
        items = value if isinstance(value, list) else [value]
        return [_coerce(element, item) for item in items]
    if origin is dict:
        if not isinstance(value, dict):
            return value
        _, value_type = typing.get_args(annotation)
        return {key: _coerce(value_type, item) for key, item in value.items()}
    if isinstance(value, list):
        value = value[-1]
    if isinstance(value, str):
        return _coerce_scalar(value, _scalar_kind(annotation))
    return value


def _form_index(key: str) -> int:
    """The position an ``a[n]`` form key gives (ASCII digits; anything else first)."""
    return int(key) if key.isascii() and key.isdigit() and len(key) <= 9 else 0


_FORM_KEY_PART = re.compile(r"\[([^\]]*)\]|\.?([^\[.]+)")


def _form_key_parts(key: str) -> list[str]:
    """``a.b[]`` -> ``["a", "b", ""]``; ``paths[2]`` -> ``["paths", "2"]``."""
    return [bracket if bracket is not None and name == "" else name
            for bracket, name in _FORM_KEY_PART.findall(key)] or [key]


def decode_form(kind: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decode a form body (``a=1&b.c=2&d[]=x&d[]=y``) into typed values for ``kind``.

    Like Kong, dotted keys nest records, ``[]``/``[n]`` suffixes and repeated
    keys build arrays, and values are converted by the schema's field types
    (``"10"`` -> 10 for an integer field, ``"true"`` -> True for a boolean,
    ``""`` -> null); a value that does not convert is left for validation to
    report.
    """
    tree: dict[str, Any] = {}
    for key, value in pairs:
        parts = _form_key_parts(key)
        append = len(parts) > 1 and parts[-1] == ""
        if append:
            parts = parts[:-1]
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = parts[-1]
        if last in node:
            existing = node[last]
            node[last] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            node[last] = [value] if append else value
    model = MODELS[kind]
    return {
        key: _coerce(model.model_fields[key].annotation, value)
        if key in model.model_fields
        else value
        for key, value in tree.items()
    }


# ---------------------------------------------------------------------- OpenAPI


def json_schemas() -> dict[str, JsonSchemaValue]:
    """JSON schemas of every entity (and nested record) for the OpenAPI document.

    Keys are component names (``Service``, ``Upstream``, ``Healthchecks`` ...);
    references point at ``#/components/schemas/<name>``.
    """
    from pydantic.json_schema import models_json_schema

    _, top = models_json_schema(
        [(model, "serialization") for model in MODELS.values()],
        ref_template="#/components/schemas/{model}",
    )
    return dict(top.get("$defs", {}))
