"""One exception hierarchy for the control plane, mapped to HTTP only at the edge.

Every error the Admin API can answer with is a :class:`FerryError`. Code below
the HTTP layer raises these and never builds responses; the aiohttp middleware in
:mod:`control_plane.admin_api` turns ``status`` and :meth:`FerryError.body` into
the response. Bodies and codes follow Kong 3.x (``kong/db/errors.lua``), so
tools written against Kong's Admin API parse Ferry's errors unchanged.
"""

from __future__ import annotations

import re
from typing import Any

#: Kong's DAO error codes (``kong.db.errors``); the subset Ferry produces.
CODE_SCHEMA_VIOLATION = 2
CODE_PRIMARY_KEY_VIOLATION = 3
CODE_FOREIGN_KEY_VIOLATION = 4
CODE_UNIQUE_VIOLATION = 5
CODE_INVALID_OFFSET = 7
CODE_DATABASE_ERROR = 8
CODE_INVALID_SIZE = 9
CODE_INVALID_OPTIONS = 11
CODE_FOREIGN_KEYS_UNRESOLVED = 13
CODE_DECLARATIVE_CONFIG = 14
CODE_REFERENCED_BY_OTHERS = 19


def lua_pretty(value: Any) -> str:
    """Render ``value`` the way Kong's messages print Lua tables, compactly.

    ``{"name": "x"}`` -> ``{name="x"}``; nested dicts nest; keys are sorted so
    the text is deterministic.
    """
    if isinstance(value, dict):
        inner = ",".join(f"{key}={lua_pretty(value[key])}" for key in sorted(value))
        return "{" + inner + "}"
    if isinstance(value, list):
        return "{" + ",".join(lua_pretty(item) for item in value) + "}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value) + '"'


class FerryError(Exception):
    """Base of every error the control plane reports to an API client.

    Subclasses set ``status`` (the HTTP status the edge answers with) and
    implement :meth:`body` (the JSON document sent).
    """

    status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        """The JSON body of the HTTP response for this error."""
        return {"message": self.message}


class _CodedError(FerryError):
    """A Kong DAO error: ``{"code", "name", "message", "fields"?}``."""

    code: int = 0
    name: str = ""

    def __init__(self, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.fields = fields

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "name": self.name, "message": self.message}
        if self.fields is not None:
            body["fields"] = self.fields
        return body


def _flatten(prefix: str, value: Any, out: list[str]) -> None:
    """Append ``path: message`` lines for every leaf message under ``value``."""
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}", value[key], out)
    elif isinstance(value, list):
        # Arrays report element errors by 1-based position, as Lua does; valid
        # elements are ``None`` placeholders.
        for index, item in enumerate(value, start=1):
            if item is not None:
                _flatten(f"{prefix}.{index}", item, out)
    else:
        out.append(f"{prefix}: {value}")


def schema_violation_message(fields: dict[str, Any]) -> str:
    """Kong's summary line for a schema violation.

    Entity-level messages (``fields["@entity"]``) come first, then field errors
    in sorted field order; one error gives ``schema violation (f: msg)``, several
    ``N schema violations (a: msg; b: msg)``. Nested records are printed with
    their full dotted path (Kong pretty-prints the inner Lua table instead).
    """
    parts: list[str] = list(fields.get("@entity", []))
    for name in sorted(key for key in fields if key != "@entity"):
        _flatten(name, fields[name], parts)
    if len(parts) == 1:
        return f"schema violation ({parts[0]})"
    return f"{len(parts)} schema violations ({'; '.join(parts)})"


class SchemaViolation(_CodedError):
    """400: the entity failed validation. ``fields`` mirrors the entity's shape."""

    status = 400
    code = CODE_SCHEMA_VIOLATION
    name = "schema violation"

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(schema_violation_message(fields), fields)


class PrimaryKeyViolation(_CodedError):
    """400: an insert carried an ``id`` that already exists."""

    status = 400
    code = CODE_PRIMARY_KEY_VIOLATION
    name = "primary key violation"

    def __init__(self, primary_key: dict[str, Any]) -> None:
        super().__init__(
            f"primary key violation on key '{lua_pretty(primary_key)}'", primary_key
        )


class UniqueViolation(_CodedError):
    """409: another entity already holds this unique value (``{"name": "x"}``)."""

    status = 409
    code = CODE_UNIQUE_VIOLATION
    name = "unique constraint violation"

    def __init__(self, unique_key: dict[str, Any]) -> None:
        super().__init__(f"UNIQUE violation detected on '{lua_pretty(unique_key)}'", unique_key)


class ForeignKeyViolation(_CodedError):
    """400: a reference to a missing parent, or a delete of a referenced parent."""

    status = 400
    code = CODE_FOREIGN_KEY_VIOLATION
    name = "foreign key violation"

    @classmethod
    def invalid_reference(
        cls, foreign_key: dict[str, Any], field_name: str, parent: str
    ) -> ForeignKeyViolation:
        """``field_name`` = ``foreign_key`` names no existing ``parent`` entity."""
        return cls(
            f"the foreign key '{lua_pretty(foreign_key)}' does not reference "
            f"an existing '{parent}' entity.",
            {field_name: foreign_key},
        )

    @classmethod
    def restricted(cls, parent: str, child: str) -> ForeignKeyViolation:
        """A ``parent`` entity cannot be deleted while ``child`` entities refer to it."""
        return cls(
            f"an existing '{child}' entity references this '{parent}' entity",
            {"@referenced_by": child},
        )


class ReferencedByOthers(_CodedError):
    """400: an entity other entities still use outside foreign keys (a CA certificate
    in a service's ``ca_certificates``), Kong's ``referenced by others``."""

    status = 400
    code = CODE_REFERENCED_BY_OTHERS
    name = "referenced by others"


class ForeignKeysUnresolved(_CodedError):
    """400: a foreign key given by name (``{"name": "x"}``) matches no entity."""

    status = 400
    code = CODE_FOREIGN_KEYS_UNRESOLVED
    name = "foreign keys unresolved"

    def __init__(self, field_name: str, key_name: str, value: Any, parent: str) -> None:
        detail = (
            f"the foreign key cannot be resolved with '{lua_pretty({key_name: value})}' "
            f"for an existing '{parent}' entity"
        )
        super().__init__(
            f"foreign key unresolved ({field_name}.{key_name}: {detail})",
            {field_name: {key_name: detail}},
        )


def lua_table(value: Any) -> str:
    """Render a nested error tree as Kong prints declarative errors (``pl.pretty``).

    Like :func:`lua_pretty`, but arrays holding ``None`` placeholders (valid
    elements) show only their failing elements, by 1-based position:
    ``{"services": [None, {"host": "x"}]}`` -> ``{services={[2]={host="x"}}}``.
    Keys that are not Lua identifiers are bracketed (``["@entity"]=``).
    """
    if isinstance(value, dict):
        parts = []
        for key in sorted(value):
            name = key if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f'["{key}"]'
            parts.append(f"{name}={lua_table(value[key])}")
        return "{" + ",".join(parts) + "}"
    if isinstance(value, list):
        if all(item is not None for item in value):
            return "{" + ",".join(lua_table(item) for item in value) + "}"
        return "{" + ",".join(
            f"[{index}]={lua_table(item)}"
            for index, item in enumerate(value, start=1)
            if item is not None
        ) + "}"
    return lua_pretty(value)


class DeclarativeConfigInvalid(_CodedError):
    """400: a declarative configuration document (``POST /config``) is invalid.

    ``fields`` mirrors the document: ``{"services": [None, {"host": "..."}]}``
    (array elements by position, ``None`` for valid ones; document-level
    problems under the top-level key or ``"@entity"``). ``flattened_errors``
    lists one item per invalid entity, as Kong 3.x's ``flatten_errors``:
    ``{"entity_type", "entity_id", "entity_name", "entity_tags", "entity",
    "errors": [{"type": "field"|"entity", "field"?, "message"}]}``.
    """

    status = 400
    code = CODE_DECLARATIVE_CONFIG
    name = "invalid declarative configuration"

    def __init__(
        self,
        fields: dict[str, Any],
        flattened_errors: list[dict[str, Any]],
        problems: list[str] | None = None,
    ) -> None:
        super().__init__(f"declarative config is invalid: {lua_table(fields)}", fields)
        self.flattened_errors = flattened_errors
        #: One line per problem, ``location (what): field: message``, for a terminal.
        self.problems = problems if problems is not None else [self.message]

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["flattened_errors"] = self.flattened_errors
        return body


class ConfigVersionMismatch(FerryError):
    """409: ``POST /config?expected_version=N`` while the configuration is at another version.

    Nothing was written; ``version`` is the configuration's current version.
    """

    status = 409

    def __init__(self, expected: int, version: int) -> None:
        super().__init__(
            f"the configuration is at version {version}, not the expected {expected}: "
            "it changed since it was read; nothing was applied"
        )
        self.expected = expected
        self.version = version

    def body(self) -> dict[str, Any]:
        return {"message": self.message, "version": self.version}


class InvalidSize(_CodedError):
    """400: the ``size`` paging argument is not an integer in 1..1000."""

    status = 400
    code = CODE_INVALID_SIZE
    name = "invalid size"


class InvalidOffset(_CodedError):
    """400: the ``offset`` paging token was not produced by this API."""

    status = 400
    code = CODE_INVALID_OFFSET
    name = "invalid offset"

    def __init__(self, offset: str, reason: str) -> None:
        super().__init__(f"'{offset}' is not a valid offset: {reason}")


class InvalidOptions(_CodedError):
    """400: a query option (e.g. a ``tags`` filter) has an unusable syntax."""

    status = 400
    code = CODE_INVALID_OPTIONS
    name = "invalid options"

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(f"invalid option ({option}: {reason})", {option: reason})


class NotFound(FerryError):
    """404 ``{"message": "Not found"}``: no such entity or path."""

    status = 404

    def __init__(self, message: str = "Not found") -> None:
        super().__init__(message)


class InvalidBody(FerryError):
    """400 ``{"message": "Cannot parse JSON body"}``: the request body is unreadable."""

    status = 400

    def __init__(self, message: str = "Cannot parse JSON body") -> None:
        super().__init__(message)


class BadRequest(FerryError):
    """400 ``{"message": "..."}``: a request Kong refuses with a plain message
    (e.g. an address that is not ``ip[:port]`` in a health override)."""

    status = 400


class MethodNotAllowed(FerryError):
    """405 ``{"message": "Method not allowed"}``."""

    status = 405

    def __init__(self, message: str = "Method not allowed") -> None:
        super().__init__(message)


class StoreUnavailable(_CodedError, ConnectionError):
    """503: Redis could not be reached; nothing was written.

    (After a timeout, a write may have run: read before retrying it.) The body
    carries Kong's ``database error`` code; Kong itself answers 500 with a
    generic message where Ferry says what is down. Also a builtin
    :class:`ConnectionError` (an ``OSError``), so code that retries on
    connection failures (the config follower) treats it as one.
    """

    status = 503
    code = CODE_DATABASE_ERROR
    name = "database error"


class Unauthorized(FerryError):
    """401: no valid admin token (Kong RBAC's message)."""

    status = 401

    def __init__(self, message: str = "Invalid credentials. Token or User credentials required") -> None:
        super().__init__(message)


class Forbidden(FerryError):
    """403: the token's role does not allow this request (Kong RBAC's wording)."""

    status = 403


class PayloadTooLarge(FerryError):
    """413: the request body is over the Admin API's limit (nginx's status)."""

    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"Request body too large: the limit is {limit} bytes")
        self.limit = limit
