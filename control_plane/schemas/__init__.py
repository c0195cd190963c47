"""Entity schemas for the Admin API: Kong 3.x field names, defaults, ranges and messages.

The package has Kong's shape (``kong/db/schema/``): :mod:`.typedefs` (rules, field
types, host parsing), :mod:`.messages` (Kong's error wording), :mod:`.forms` (form
bodies), :mod:`.engine` (the registry and what every entity shares) and one module
per entity (:mod:`.upstreams`, :mod:`.targets`, :mod:`.services`, :mod:`.routes`).
Adding an entity is one new module and one line in :data:`.engine.ENTITIES`.

The pydantic model of each entity is its single definition: validation, the stored
shape, form-body coercion and the OpenAPI document all derive from it.

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

from control_plane.schemas.engine import (
    ENTITIES,
    KINDS,
    MODELS,
    expand_shorthands,
    json_schemas,
    merge_patch,
    validate_entity,
)
from control_plane.schemas.forms import decode_form
from control_plane.schemas.messages import has_lone_surrogate
from control_plane.schemas.routes import Route
from control_plane.schemas.services import Service
from control_plane.schemas.targets import Target, normalize_target
from control_plane.schemas.typedefs import (
    DEFAULT_TARGET_PORT,
    EntitySchema,
    HostPort,
    Rule,
    RuleError,
    between,
    is_uuid,
    parse_host,
)
from control_plane.schemas.upstreams import (
    HASH_ON_VALUES,
    Healthchecks,
    Upstream,
    check_upstream_name,
)

__all__ = [
    "DEFAULT_TARGET_PORT",
    "ENTITIES",
    "HASH_ON_VALUES",
    "KINDS",
    "MODELS",
    "EntitySchema",
    "Healthchecks",
    "HostPort",
    "Route",
    "Rule",
    "RuleError",
    "Service",
    "Target",
    "Upstream",
    "between",
    "check_upstream_name",
    "decode_form",
    "expand_shorthands",
    "has_lone_surrogate",
    "is_uuid",
    "json_schemas",
    "merge_patch",
    "normalize_target",
    "parse_host",
    "validate_entity",
]
