"""The entity registry and what every entity shares: validation, merge, shorthands, JSON schemas.

:data:`ENTITIES` lists one :class:`~control_plane.schemas.typedefs.EntitySchema` per
entity module, in dependency order; adding an entity is one module and one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError
from pydantic.json_schema import JsonSchemaValue

from control_plane.errors import SchemaViolation
from control_plane.schemas import (
    ca_certificates,
    certificates,
    routes,
    services,
    snis,
    targets,
    upstreams,
)
from control_plane.schemas.messages import translate, unicode_violations
from control_plane.schemas.typedefs import EntitySchema, ForeignKey, Record, unwrap_annotation

#: Every entity, in dependency order (a target needs its upstream, a route its service,
#: an SNI its certificate, an upstream or a service its client certificate).
ENTITIES: tuple[EntitySchema, ...] = (
    certificates.SCHEMA,
    ca_certificates.SCHEMA,
    snis.SCHEMA,
    upstreams.SCHEMA,
    targets.SCHEMA,
    services.SCHEMA,
    routes.SCHEMA,
)

#: The entity kinds the store keeps, in dependency order.
KINDS: tuple[str, ...] = tuple(entity.kind for entity in ENTITIES)

_BY_KIND: dict[str, EntitySchema] = {entity.kind: entity for entity in ENTITIES}

MODELS: dict[str, type[Record]] = {entity.kind: entity.model for entity in ENTITIES}


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
    shorthands = _BY_KIND[kind].shorthands if kind in _BY_KIND else None
    return shorthands(body) if shorthands is not None else body


def validate_entity(kind: str, candidate: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a complete ``kind`` entity and return its canonical stored form.

    ``candidate`` must already carry ``id``, ``created_at`` and ``updated_at``
    and have its shorthands expanded. Field errors and entity-level checks are
    collected together, as Kong does, into one :class:`SchemaViolation`.
    """
    model = MODELS[kind]
    # First, and alone: such a string cannot even be shown in a message by pydantic
    # (a 500), nor stored, nor applied by a data plane.
    fields: dict[str, Any] = unicode_violations(candidate)
    if fields:
        raise SchemaViolation(fields)
    result: dict[str, Any] | None = None
    try:
        result = model.model_validate(dict(candidate)).model_dump(mode="json")
        checked: Mapping[str, Any] = result
    except PydanticValidationError as exc:
        fields = translate(exc)
        # Entity checks still see the fields that were valid (and defaults for
        # the missing ones), so one response reports every problem.
        checked = {**_defaults(model), **candidate}
    check = _BY_KIND[kind].checks
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


def _record_model(model: type[BaseModel], field: str) -> type[BaseModel] | None:
    info = model.model_fields.get(field)
    if info is None:
        return None
    annotation = unwrap_annotation(info.annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        # A foreign key is a reference, replaced whole, not merged.
        return None if annotation is ForeignKey else annotation
    return None


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
