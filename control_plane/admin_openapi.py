"""The Admin API's OpenAPI 3.1 document, generated from its route table and the pydantic models."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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


_STATUS_TEXT = {
    "GET": ("200", "OK"),
    "POST": ("201", "Created"),
    "PATCH": ("200", "Updated"),
    "PUT": ("200", "Created or replaced"),
    "DELETE": ("204", "Deleted (or did not exist)"),
}


def build_openapi(routes: list[AdminRoute], version: str) -> dict[str, Any]:
    """An OpenAPI 3.1 document for ``routes``; entity schemas come from the pydantic models."""
    error = {"$ref": "#/components/schemas/Error"}
    paths: dict[str, Any] = {}
    for route in routes:
        params = [
            {"name": part[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for part in route.path.split("/")
            if part.startswith("{")
        ]
        operations: dict[str, Any] = {}
        for method in route.handlers:
            code, text = _STATUS_TEXT[method]
            op: dict[str, Any] = {"summary": f"{route.summary} ({method})", "responses": {}}
            if params:
                op["parameters"] = list(params)
            ref = {"$ref": f"#/components/schemas/{route.schema}"} if route.schema else {}
            if route.schema and method in ("POST", "PUT", "PATCH"):
                op["requestBody"] = {
                    "content": {
                        "application/json": {"schema": ref},
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                    }
                }
            if method == "DELETE":
                op["responses"][code] = {"description": text}
            elif route.collection and method == "GET":
                op["parameters"] = [
                    *op.get("parameters", []),
                    {"name": "size", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": DEFAULT_PAGE_SIZE}},
                    {"name": "offset", "in": "query", "schema": {"type": "string"}},
                    {"name": "tags", "in": "query", "schema": {"type": "string"}, "description": "a,b: all of; a/b: any of"},
                ]
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
            for status in ("400", "404", "405", "409", "503"):
                op["responses"][status] = {
                    "description": "Error", "content": {"application/json": {"schema": error}}
                }
            operations[method.lower()] = op
        paths[route.path] = operations
    schemas = json_schemas()
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
        "info": {"title": "Ferry Admin API (Kong 3.x compatible)", "version": version},
        "paths": paths,
        "components": {"schemas": schemas},
    }


