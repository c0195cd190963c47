"""The Admin API's OpenAPI 3.1 document, generated from its route table and the pydantic models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from control_plane.schemas import json_schemas

#: Paging defaults, as Kong's Admin API.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AdminRoute:
    """One Admin API path: its handlers by method and what the OpenAPI document says."""

    path: str
    handlers: dict[str, Handler]
    summary: str
    schema: str | None = None  # the entity schema of bodies and responses
    collection: bool = False
    #: Every method answers 204 without a body (health overrides).
    no_content: bool = False
    #: The JSON schema of a 200 answer when it is not ``schema`` (health views).
    response: dict[str, Any] | None = None
    #: Extra query parameters, as OpenAPI parameter objects.
    query: tuple[dict[str, Any], ...] = field(default=())
    #: The OpenAPI request body of POST when it is not ``schema`` (``/config``).
    request_body: dict[str, Any] | None = None
    #: Answers beyond the method's usual one and the errors, by method (``/config``'s 304).
    extra_responses: dict[str, dict[str, Any]] = field(default_factory=dict)


_STATUS_TEXT = {
    "GET": ("200", "OK"),
    "POST": ("201", "Created"),
    "PATCH": ("200", "Updated"),
    "PUT": ("200", "Created or replaced"),
    "DELETE": ("204", "Deleted (or did not exist)"),
}


#: Every error the Admin API can answer, by status (each with the ``Error`` body).
ERROR_RESPONSES: dict[str, str] = {
    "400": "Invalid request: schema violation (code 2), primary key violation (3), foreign key "
    "violation (4), invalid offset (7), size (9) or options (11), unresolved foreign key (13), "
    "invalid declarative configuration (14), or an unreadable body ({\"message\": \"Cannot parse "
    "JSON body\"} / \"Cannot parse form body: ...\")",
    "401": "No valid admin token (only with admin tokens configured)",
    "403": "The token's role does not allow this method",
    "404": "No such entity (or path)",
    "405": "Method not allowed; the Allow header lists the path's methods",
    "409": "Unique constraint violation (code 5), or POST /config?expected_version=N at another version",
    "413": "Request body over the Admin API's limit",
    "503": "The store (Redis) is unreachable, or too many concurrent writes; nothing was written",
}

#: What the path parameters, ``size``, ``offset`` and ``tags`` accept.
PAGING_QUERY: tuple[dict[str, Any], ...] = (
    {"name": "size", "in": "query",
     "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE},
     "description": f"page size, an integer in 1..{MAX_PAGE_SIZE}; anything else is 400 (invalid size)"},
    {"name": "offset", "in": "query", "schema": {"type": "string"},
     "description": "the opaque token of a previous page's `offset` (or `next`); "
     "any other value is 400 (invalid offset)"},
)

#: A ``tags`` filter: tags joined by ``,`` (entities with all of them) or ``/``
#: (any of them); a tag is printable ASCII except ``,`` and ``/``, or non-ASCII.
TAGS_PATTERN = (
    "^(?:[^\\u0000-\\u001f,/\\u007f]+(?:,|$))+$|^(?:[^\\u0000-\\u001f,/\\u007f]+(?:/|$))+$"
)
TAGS_QUERY: dict[str, Any] = {
    "name": "tags", "in": "query", "schema": {"type": "string", "pattern": TAGS_PATTERN},
    "description": "a,b: entities with all of these tags; a/b: with any of them. "
    "Anything else is 400 (invalid options)",
}

#: Input-only fields: given by the server (``id``, timestamps) or by the path (a target's upstream).
_SERVER_FIELDS = frozenset({"id", "created_at", "updated_at", "upstream"})
_ENTITY_SCHEMAS = ("Service", "Route", "Upstream", "Target", "Certificate", "Sni", "CaCertificate")


def _request_schemas(schemas: dict[str, Any]) -> dict[str, Any]:
    """``<Entity>Create`` (POST, PUT) and ``<Entity>Update`` (PATCH) request bodies.

    As the entity, but the server's fields are optional (POST, PUT) or every
    field is (PATCH); a service also takes Kong's ``url`` shorthand.
    """
    out: dict[str, Any] = {}
    for name in _ENTITY_SCHEMAS:
        base = schemas[name]
        properties = dict(base.get("properties", {}))
        if name == "Service":
            properties["url"] = {
                "type": ["string", "null"],
                "description": "shorthand for protocol, host, port and path",
            }
        if name == "Certificate":
            properties["snis"] = {
                "type": ["array", "null"],
                "items": {"type": "string"},
                "description": "shorthand: the SNI names of this certificate (null: none); "
                "absent, a write leaves them as they are",
            }
        create = {**base, "properties": properties,
                  "required": [f for f in base.get("required", []) if f not in _SERVER_FIELDS]}
        update = {**base, "properties": properties}
        update.pop("required", None)
        out[f"{name}Create"] = create
        out[f"{name}Update"] = update
    return out


def _error_responses(with_body: bool) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, text in ERROR_RESPONSES.items():
        response: dict[str, Any] = {"description": text}
        if with_body:
            response["content"] = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        if status == "405":
            response["headers"] = {"Allow": {"schema": {"type": "string"},
                                             "description": "the methods this path serves"}}
        responses[status] = response
    return responses


def build_openapi(routes: list[AdminRoute], version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``routes``; entity schemas come from the pydantic models.

    Every ``GET`` has its ``HEAD`` (same answer, no body).
    """
    paths: dict[str, Any] = {}
    for route in routes:
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in route.path.split("/")
            if part.startswith("{")
        ]
        operations: dict[str, Any] = {}
        for method in route.handlers:
            code, text = ("204", "No Content") if route.no_content else _STATUS_TEXT[method]
            op: dict[str, Any] = {"summary": f"{route.summary} ({method})", "responses": {}}
            if params:
                op["parameters"] = list(params)
            ref = {"$ref": f"#/components/schemas/{route.schema}"} if route.schema else {}
            if route.schema and method in ("POST", "PUT", "PATCH"):
                suffix = "Update" if method == "PATCH" else "Create"
                body = {"$ref": f"#/components/schemas/{route.schema}{suffix}"}
                op["requestBody"] = {
                    "content": {
                        "application/json": {"schema": body},
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                    }
                }
            if route.request_body is not None and method == "POST":
                op["requestBody"] = route.request_body
            if route.query:
                op["parameters"] = [*op.get("parameters", []), *route.query]
            if method == "DELETE" or route.no_content:
                op["responses"][code] = {"description": text}
            elif route.response is not None:
                op["responses"][code] = {
                    "description": text,
                    "content": {"application/json": {"schema": route.response}},
                }
            elif route.collection and method == "GET":
                op["parameters"] = [*op.get("parameters", []), *PAGING_QUERY, TAGS_QUERY]
                op["responses"][code] = {
                    "description": text,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "properties": {
                            "data": {"type": "array", "items": ref},
                            "next": {"type": ["string", "null"]},
                            "offset": {"type": "string"},
                        },
                    }}},
                }
            else:
                schema = ref or {"type": "object"}
                op["responses"][code] = {
                    "description": text, "content": {"application/json": {"schema": schema}}
                }
            op["responses"].update(route.extra_responses.get(method, {}))
            op["responses"].update(_error_responses(with_body=True))
            operations[method.lower()] = op
            if method == "GET":
                operations["head"] = {
                    "summary": f"{route.summary} (HEAD: GET's answer without its body)",
                    "parameters": op.get("parameters", []),
                    "responses": {
                        code: {"description": text},
                        **_error_responses(with_body=False),
                    },
                }
        paths[route.path] = operations
    schemas = json_schemas()
    schemas.update(_request_schemas(schemas))
    schemas.update(_health_schemas())
    schemas["DeclarativeConfig"] = _declarative_config_schema()
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "code": {"type": "integer"},
            "name": {"type": "string"},
            "message": {"type": "string"},
            "fields": {"type": "object"},
        },
        "required": ["message"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ferry Admin API (Kong 3.x compatible)",
            "version": version,
            "description": "Every path below also answers with a trailing slash "
            "(`/upstreams/`, `/upstreams/{upstream}/targets/`), as Kong's router does.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }


#: The values of a boolean query option (``balancer_health``, ``check_hash``).
FLAG_VALUES = ["1", "true", "0", "false", ""]

_HEALTH_STATES = ["HEALTHY", "UNHEALTHY", "MIXED", "DNS_ERROR", "HEALTHCHECKS_OFF"]


def _health_schemas() -> dict[str, Any]:
    """Schemas of ``GET /upstreams/{u}/health`` (list and ``?balancer_health=1``)."""
    state = {"type": "string", "enum": _HEALTH_STATES}
    weight = {
        "type": "object",
        "properties": {k: {"type": "integer"} for k in ("total", "available", "unavailable")},
    }
    number = {"type": "number"}
    return {
        "TargetHealth": {
            "type": "object",
            "description": "A target entity plus its cluster-wide health",
            "properties": {
                "id": {"type": "string"},
                "target": {"type": "string"},
                "weight": {"type": "integer"},
                "health": state,
                "data": {
                    "type": "object",
                    "properties": {
                        "host": {"type": "string"},
                        "port": {"type": "integer"},
                        "nodeWeight": {"type": "integer"},
                        "addresses": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "ip": {"type": "string"},
                                "port": {"type": "integer"},
                                "weight": {"type": "integer"},
                                "health": state,
                            },
                        }},
                        "weight": weight,
                    },
                },
                "data_planes": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "hostname": {"type": "string"},
                        "health": state,
                        "reason": {"type": "string"},
                        "updated_at": number,
                        "addresses": {"type": "array", "items": {
                            "type": "object",
                            "properties": {
                                "address": {"type": "string"},
                                "health": state,
                                "reason": {"type": "string"},
                                "updated_at": number,
                            },
                        }},
                    },
                }},
            },
        },
        "UpstreamHealthList": {
            "type": "object",
            "properties": {
                "data": {"type": "array", "items": {"$ref": "#/components/schemas/TargetHealth"}},
                "next": {"type": ["string", "null"]},
                "offset": {"type": "string"},
                "node_id": {"type": ["string", "null"]},
                "panic": {
                    "type": "object",
                    "description": "Only with healthchecks.panic_threshold > 0: the data "
                    "planes whose balancer for this upstream is in panic mode",
                    "properties": {
                        "threshold": number,
                        "data_planes": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "UpstreamBalancerHealth": {
            "type": "object",
            "properties": {
                "data": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "health": {"type": "string", "enum": ["HEALTHY", "UNHEALTHY", "HEALTHCHECKS_OFF"]},
                        "balancer_health": {"type": "string", "enum": ["HEALTHY", "UNHEALTHY"]},
                        "details": {
                            "type": "object",
                            "properties": {
                                "healthy": {"type": "boolean"},
                                "weight": weight,
                                "healthy_weight": {"type": "integer"},
                                "total_weight": {"type": "integer"},
                                "threshold": number,
                                # Only with healthchecks.panic_threshold > 0:
                                "panic_threshold": number,
                                "panic": {"type": "boolean"},
                                "data_planes": {"type": "object", "additionalProperties": {
                                    "type": "object",
                                    "properties": {
                                        "hostname": {"type": "string"},
                                        "balancer_health": {"type": "string", "enum": ["HEALTHY", "UNHEALTHY"]},
                                        "healthy_weight": {"type": "integer"},
                                        "total_weight": {"type": "integer"},
                                        "panic": {"type": "boolean"},
                                    },
                                }},
                            },
                        },
                    },
                },
                "next": {"type": "null"},
                "node_id": {"type": ["string", "null"]},
            },
        },
    }


#: The 200 answer of ``GET /upstreams/{u}/health``.
UPSTREAM_HEALTH_RESPONSE: dict[str, Any] = {
    "oneOf": [
        {"$ref": "#/components/schemas/UpstreamHealthList"},
        {"$ref": "#/components/schemas/UpstreamBalancerHealth"},
    ]
}

_STATE = {"type": "string", "enum": ["HEALTHY", "UNHEALTHY", "DNS_ERROR", "HEALTHCHECKS_OFF"]}

#: The 200 answer of ``GET /upstreams/{u}/health/events`` (``control_plane/health_history.py``).
HEALTH_EVENTS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "data": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "The event's id (a Redis stream id)"},
                "time": {"type": "number", "description": "When the data plane saw the "
                         "transition (epoch seconds)"},
                "recorded_at": {"type": "number", "description": "When the control plane "
                                "stored it (epoch seconds)"},
                "data_plane": {"type": "object", "properties": {
                    "id": {"type": "string"}, "hostname": {"type": "string"}}},
                "target": {"type": "string"},
                "target_id": {"type": "string"},
                "address": {"type": "string", "description": "ip:port; empty for DNS_ERROR"},
                "from": {**_STATE, "type": ["string", "null"], "enum": [*_STATE["enum"], None],
                         "description": "The data plane's previous state; null for a new row"},
                "to": _STATE,
                "reason": {"type": "string"},
                "weight": {"type": "integer"},
            },
        }},
        "next": {"type": ["string", "null"]},
        "offset": {"type": "string"},
    },
}

#: The answer of ``GET /status/ready`` (Kong's): ``{"message": "ready"}`` (200), or why not (503).
READINESS_RESPONSE: dict[str, Any] = {
    "type": "object",
    "properties": {"message": {"type": "string"}},
    "required": ["message"],
}

#: The query parameters of ``GET /upstreams/{u}/health``.
UPSTREAM_HEALTH_QUERY: tuple[dict[str, Any], ...] = (
    {"name": "balancer_health", "in": "query", "schema": {"type": "string", "enum": FLAG_VALUES},
     "description": "1 or true: the upstream's balancer health instead of the target list "
     "(0, false or empty: the list); anything else is 400 (invalid options)"},
    *PAGING_QUERY,
)


def _declarative_config_schema() -> dict[str, Any]:
    """Schema of the declarative document of ``GET``/``POST /config``."""

    def entities(name: str, nested: str | None = None) -> dict[str, Any]:
        description = (
            f"{name} entities as the Admin API returns them; on input, id and "
            "timestamps may be left out and foreign keys given as {name: ...}"
        )
        if nested:
            description += f"; {nested} may be nested in them"
        return {
            "type": "array",
            "items": {"$ref": f"#/components/schemas/{name}"},
            "description": description,
        }

    return {
        "type": "object",
        "required": ["_format_version"],
        "properties": {
            "_format_version": {"type": "string", "enum": ["3.0"]},
            "_transform": {"type": "boolean"},
            "_config_version": {"type": "integer", "readOnly": True,
                                "description": "the configuration version (ignored on input)"},
            "_config_hash": {"type": "string", "readOnly": True,
                             "description": "the configuration hash data planes get (ignored on input)"},
            "certificates": entities("Certificate", "snis"),
            "ca_certificates": entities("CaCertificate"),
            "snis": entities("Sni"),
            "upstreams": entities("Upstream", "targets"),
            "targets": entities("Target"),
            "services": entities("Service", "routes"),
            "routes": entities("Route"),
        },
    }


#: The 200 (GET) and 201 (POST) answers of ``/config``.
DECLARATIVE_CONFIG_SCHEMA: dict[str, Any] = {"$ref": "#/components/schemas/DeclarativeConfig"}

#: The request body of ``POST /config``: JSON, YAML, or Kong's ``config`` form field.
DECLARATIVE_CONFIG_REQUEST: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {"schema": DECLARATIVE_CONFIG_SCHEMA},
        "application/yaml": {"schema": DECLARATIVE_CONFIG_SCHEMA},
        "multipart/form-data": {"schema": {
            "type": "object", "properties": {"config": {"type": "string", "format": "binary"}},
        }},
        "application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {"config": {"type": "string"}},
        }},
    },
}

#: The query parameters of ``POST /config``.
DECLARATIVE_CONFIG_QUERY: tuple[dict[str, Any], ...] = (
    {"name": "check_hash", "in": "query", "schema": {"type": "string", "enum": FLAG_VALUES},
     "description": "POST, 1 or true: 304 without writing when the configuration would not "
     "change (0, false or empty: off); anything else is 400 (invalid options)"},
    {"name": "expected_version", "in": "query",
     "schema": {"type": "integer", "minimum": 0, "maximum": 10**18 - 1},
     "description": "POST: apply only if the configuration is at this version, else 409; "
     "not a non-negative integer: 400 (invalid options)"},
)

#: ``POST /config``'s answers beyond 201 and the errors.
DECLARATIVE_CONFIG_RESPONSES: dict[str, dict[str, Any]] = {
    "POST": {"304": {"description": "?check_hash=1 and the configuration would not change: "
                                    "nothing written"}},
}
