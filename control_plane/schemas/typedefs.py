"""Kong's typedefs: the rules, field types and validators every entity shares.

A :class:`Rule` is ``Annotated`` metadata that runs after pydantic's type check and
raises :class:`RuleError` with Kong's message; the field types below (``Name``,
``Tags``, ``PathStr`` ...) are Kong's ``typedefs.lua`` in pydantic's terms.
:func:`parse_host` is Kong's ``host[:port]`` grammar. An entity module declares an
:class:`EntitySchema`; the registry in :mod:`control_plane.schemas.engine` lists them.
"""

from __future__ import annotations

import re
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import PydanticCustomError, core_schema

# Re-exported: entity modules and the Admin API take the grammar from here.
from ferry_shared.target_address import DEFAULT_TARGET_PORT as DEFAULT_TARGET_PORT
from ferry_shared.target_address import HostPort as HostPort
from ferry_shared.target_address import HostPortError
from ferry_shared.target_address import parse_host as _parse_host

INT32_MAX = 2**31


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


def non_empty(value: str) -> str:
    # Kong refuses empty strings for every string field (implicit len_min = 1).
    if value == "":
        raise RuleError("length must be at least 1")
    return value


# ------------------------------------------------------------------ host parsing


def parse_host(address: str) -> HostPort:
    """Kong's ``host[:port]`` grammar (:func:`ferry_shared.target_address.parse_host`,
    shared with the data plane), raising :class:`RuleError` with Kong's text."""
    try:
        return _parse_host(address)
    except HostPortError as exc:
        raise RuleError(str(exc)) from None


# -------------------------------------------------------------- field validators


def check_uuid(value: str) -> str:
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
        check_uuid(value)
    except RuleError:
        return False
    return True


def check_timestamp(value: int) -> int:
    if value <= 0:
        raise RuleError("expected a valid timestamp")
    return value

# Non-ASCII: any code point but a surrogate (no UTF-8 form; see _unicode_problems).
_NAME_RE = re.compile(r"[A-Za-z0-9.\-_~\u0080-\ud7ff\ue000-\U0010ffff]+")


def check_name(value: str) -> str:
    non_empty(value)
    if not _NAME_RE.fullmatch(value):
        raise RuleError(
            f"invalid value '{value}': the only accepted ascii characters are "
            "alphanumerics or ., -, _, and ~"
        )
    return value


_TAG_RE = re.compile(r"[ !-+\-.0-~\u0080-\ud7ff\ue000-\U0010ffff]+")


def check_tag(value: str) -> str:
    non_empty(value)
    if not _TAG_RE.fullmatch(value):
        raise RuleError(
            f"invalid tag '{value}': expected printable ascii (except `,` and `/`) "
            "or valid utf-8 sequences"
        )
    return value


def check_sni(value: str) -> str:
    non_empty(value)
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


def check_percent_encoding(value: str) -> None:
    raw = re.sub(r"%[0-9A-Fa-f]{2}", "___", value)
    position = raw.find("%")
    if position >= 0:
        raise RuleError(f"invalid url-encoded value: '{raw[position:position + 3]}'")


def check_path(value: str) -> str:
    """Kong's ``typedefs.path`` (service path, probe path, cookie path)."""
    non_empty(value)
    if not value.startswith("/"):
        raise RuleError("should start with: /")
    if "//" in value:
        raise RuleError("must not have empty segments")
    if not _RFC3986_PATH.fullmatch(value):
        raise RuleError(
            f"invalid path: '{value}' (characters outside of the reserved list of RFC 3986 found)"
        )
    check_percent_encoding(value)
    return value


_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]+")


def check_header_name(value: str) -> str:
    # Kong's implicit len_min = 1 runs before the header-name validator.
    non_empty(value)
    if not _TOKEN_RE.fullmatch(value):
        raise RuleError(
            f"bad header name '{value}', allowed characters are A-Z, a-z, 0-9, '_', and '-'"
        )
    return value


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def check_header_value(value: str) -> str:
    """A header value Ferry matches (route ``headers``) or sends (probe ``headers``).

    No control character but HTAB (RFC 9110 field-value): a CR or LF would split a
    probe request, and no request can carry one to match a route.
    """
    non_empty(value)
    if _CONTROL_CHARS.search(value):
        raise RuleError(f"bad header value '{value}': control characters are not allowed")
    return value


def dedupe(values: list[Any] | None) -> list[Any] | None:
    """Kong's ``set`` type: duplicates are dropped, first occurrence kept."""
    if values is None:
        return None
    seen: list[Any] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return seen


def must_be_null(value: Any) -> Any:
    if value is not None:
        raise RuleError("value must be null")
    return value


# ----------------------------------------------------------------- field types

Str = Annotated[str, Rule(non_empty)]
UUIDStr = Annotated[str, Rule(check_uuid, (("format", "uuid"),))]
Timestamp = Annotated[int, Rule(check_timestamp, (("minimum", 1),))]
Name = Annotated[str, Rule(check_name)]
Tag = Annotated[str, Rule(check_tag)]
Tags = Annotated[list[Tag] | None, Rule(dedupe, (("uniqueItems", True),))]
Port = Annotated[int, between(0, 65535)]
PathStr = Annotated[str, Rule(check_path)]
HeaderName = Annotated[str, Rule(check_header_name)]
HeaderValue = Annotated[str, Rule(check_header_value)]
Sni = Annotated[str, Rule(check_sni)]


def compact_number(value: float) -> float | int:
    # Kong (cjson) prints 1, not 1.0: integral numbers serialise as integers.
    return int(value) if float(value).is_integer() else value


Seconds = Annotated[float, between(0, 65535), PlainSerializer(compact_number, return_type=int | float)]


def _check_timestamp_ms(value: float) -> float:
    # Written so that NaN and infinities fail too.
    if not 0 < value < 1e15:
        raise RuleError("expected a valid timestamp")
    return round(value, 3)


#: Kong 3.x's ``auto_timestamp_ms`` (targets): epoch seconds with millisecond precision.
TimestampMs = Annotated[
    float,
    Rule(_check_timestamp_ms, (("exclusiveMinimum", 0),)),
    PlainSerializer(compact_number, return_type=int | float),
]
Counter = Annotated[int, between(0, 255)]
HttpStatus = Annotated[int, between(100, 999)]
Timeout = Annotated[int, between(1, INT32_MAX - 2)]
NullOnly = Annotated[Any, Rule(must_be_null, (("type", "null"),))]


def has_value(value: Any) -> bool:
    """Kong's "set" for entity checks: neither null nor an empty string, array or map."""
    return value not in (None, "", [], {})


def unwrap_annotation(annotation: Any) -> Any:
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


class Record(BaseModel):
    # Strict: Kong refuses "10" for an integer in a JSON body; unknown fields are
    # reported as "unknown field" rather than silently dropped.
    model_config = ConfigDict(extra="forbid", strict=True)


class ForeignKey(Record):
    """A reference to another entity by primary key: ``{"id": "<uuid>"}``."""

    model_config = ConfigDict(extra="ignore", strict=True)

    id: UUIDStr


#: An entity-level check: ``(entity, fields)`` -> ``@entity`` messages; it may add
#: field messages to ``fields`` (Kong's conditional validators do).
EntityCheck = Callable[[Mapping[str, Any], dict[str, Any]], list[str]]


@dataclass(frozen=True)
class EntitySchema:
    """What one entity module declares (Kong's ``kong/db/schema/entities/<name>.lua``)."""

    kind: str  # the collection, the store kind and the Admin API path segment
    model: type[Record]
    checks: EntityCheck | None = None  # entity-level rules, after field validation
    shorthands: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # e.g. a service's url
    endpoint_key: str = "name"  # the unique field that can stand for the id in a path
