"""Declarative configuration: Kong's document format, validated, resolved and diffed whole.

One document describes the whole configuration (Kong 3.x's declarative format,
as ``kong config db_export`` writes it)::

    _format_version: "3.0"
    _transform: false
    certificates: [...]     # snis nested: [{name: ...}] (or plain names)
    ca_certificates: [...]
    upstreams: [...]   # entities in the Admin API's shape
    targets: [...]     # target.upstream: {id: ...}
    services: [...]
    routes: [...]      # route.service: {id: ...}

The Admin API's ``GET /config`` exports it (:func:`export_document`) and
``POST /config`` replaces the configuration with it; ``ferry dump`` and
``ferry apply`` run the same functions locally, so what ``ferry apply``
prints is what the control plane does. ``docs/hybrid-mode.md`` documents the
format for operators.

Contract of :func:`resolve_document`: it turns a parsed document into the
complete configuration it describes — every entity validated by the Admin
API's schemas, with its id, foreign keys and timestamps filled in — or raises
:class:`~control_plane.errors.DeclarativeConfigInvalid` listing every problem
(nothing partial). Resolution is deterministic given the stored configuration
and the clock:

* An entity without ``id`` takes the id of the stored entity with the same
  ``name`` (targets: the same ``target`` in the same upstream), else a UUIDv5
  of its kind and name, so applying one hand-written file to two empty
  clusters gives the same ids, and re-applying it changes nothing.
  Services and routes need an ``id`` or a ``name``.
* Foreign keys are ``{id: ...}`` as the Admin API writes them; ``{name: ...}``
  or a bare id or name string are accepted too. They must point at an entity
  *of the document*. Routes may be nested under their service (``routes:``)
  and targets under their upstream (``targets:``), as in Kong's format.
* ``created_at`` / ``updated_at`` given in the document are kept (that is what
  makes a dump applied to an empty cluster reproduce the config hash). A
  missing ``created_at`` is the stored entity's, or now; a missing
  ``updated_at`` is the stored one's — and ``updated_at`` becomes now when the
  entity changes and the document left it out or still carries the stored value.

Why past ~600 lines: resolving a whole document is one class (``_Resolver``) whose
passes share the document's index, the stored index and the error list; reading the
text is :mod:`control_plane.declarative_parsing`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

# Re-exported: callers read and write documents through this module.
from control_plane.declarative_parsing import DocumentParseError as DocumentParseError
from control_plane.declarative_parsing import dump_yaml as dump_yaml
from control_plane.declarative_parsing import parse_document as parse_document
from control_plane.errors import DeclarativeConfigInvalid, SchemaViolation
from control_plane.schemas import (
    KINDS,
    RuleError,
    expand_shorthands,
    is_uuid,
    normalize_target,
    validate_entity,
)
from control_plane.snapshot import build_snapshot

#: The ``_format_version`` Ferry reads and writes (Kong 3.x: ``~`` marks regex paths).
FORMAT_VERSION = "3.0"

#: Metadata keys a document may carry besides the entity lists. ``_config_version``
#: and ``_config_hash`` are what ``GET /config`` reports; they are ignored on input.
META_KEYS = frozenset(
    {"_format_version", "_transform", "_comment", "_info", "_config_version", "_config_hash"}
)

#: Ids of entities given without one: UUIDv5 in this namespace of ``"{kind}:{key}"``.
GENERATED_ID_NAMESPACE = uuid.UUID("5b6f2a8e-3c1d-5e7f-9a0b-1c2d3e4f5a6b")

#: Children that may be nested in a parent entity: parent kind -> (key, foreign key field).
_NESTED: dict[str, tuple[str, str]] = {
    "services": ("routes", "service"),
    "upstreams": ("targets", "upstream"),
    "certificates": ("snis", "certificate"),
}
#: Foreign keys: child kind -> (field, parent kind).
_FOREIGN: dict[str, tuple[str, str]] = {
    "routes": ("service", "services"),
    "targets": ("upstream", "upstreams"),
    "snis": ("certificate", "certificates"),
}
#: Optional references to TLS entities: kind -> (field, referenced kind); an array
#: field (a service's ``ca_certificates``) lists ids.
_TLS_REFERENCES: dict[str, tuple[tuple[str, str], ...]] = {
    "services": (("client_certificate", "certificates"), ("ca_certificates", "ca_certificates")),
    "upstreams": (("client_certificate", "certificates"),),
}
#: Kinds whose entities are matched by ``name`` when the document gives no id.
_NAMED_KINDS = ("snis", "upstreams", "services", "routes")
#: Kinds without a name, matched by their certificate when the document gives no id.
_CERTIFICATE_KINDS = ("certificates", "ca_certificates")
#: Each kind's singular, as Kong's ``flattened_errors`` name it (``entity_type``).
SINGULAR_NAMES = {
    "certificates": "certificate",
    "ca_certificates": "ca_certificate",
    "snis": "sni",
    "upstreams": "upstream",
    "targets": "target",
    "services": "service",
    "routes": "route",
}

Entities = Mapping[str, Sequence[Mapping[str, Any]]]


# -------------------------------------------------------------------- export


def entities_hash(entities: Entities) -> str:
    """The hash the control plane publishes for ``entities`` (see :func:`build_snapshot`)."""
    return build_snapshot(0, entities).hash


def export_document(version: int, entities: Entities) -> dict[str, Any]:
    """The document for ``entities`` at ``version``: what ``GET /config`` answers.

    Entity lists in dependency order (``certificates``, ``ca_certificates``,
    ``upstreams``, ``targets``, ``services``, ``routes``), each sorted by id,
    entities exactly as stored, plus the version and hash of the configuration
    (ignored when the document is read). SNIs are nested in their certificate
    (``snis: [{id, name, ...}]``, sorted by name, without their ``certificate``),
    as Kong's declarative format has them. The lists are new; the entity dicts
    are copied one level deep only.
    """
    document: dict[str, Any] = {
        "_format_version": FORMAT_VERSION,
        "_transform": False,
        "_config_version": version,
        "_config_hash": entities_hash(entities),
    }
    for kind in KINDS:
        document[kind] = sorted((dict(e) for e in entities.get(kind, ())), key=lambda e: str(e["id"]))
    nested: dict[str, list[dict[str, Any]]] = {}
    for sni in sorted(document.pop("snis"), key=lambda e: str(e["name"])):
        child = {k: v for k, v in sni.items() if k != "certificate"}
        nested.setdefault(str(sni["certificate"]["id"]), []).append(child)
    for certificate in document["certificates"]:
        certificate["snis"] = nested.get(str(certificate["id"]), [])
    return document


def entities_of(document: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The entity lists of an exported document (:func:`export_document`'s output)."""
    entities = {kind: [dict(e) for e in document.get(kind) or ()] for kind in KINDS}
    for certificate in entities["certificates"]:
        for sni in certificate.pop("snis", None) or ():
            entities["snis"].append({**sni, "certificate": {"id": certificate["id"]}})
    entities["snis"].sort(key=lambda e: str(e["id"]))
    return entities


# ---------------------------------------------------------------- resolution


def generated_id(kind: str, key: str) -> str:
    """The id given to a ``kind`` entity without one, from its natural key (name, target)."""
    return str(uuid.uuid5(GENERATED_ID_NAMESPACE, f"{kind}:{key}"))


@dataclass
class _Item:
    """One entity of the document while it is resolved."""

    kind: str
    raw: dict[str, Any]  # as written (nested children removed)
    where: tuple[str | int, ...]  # position in the document: ("services", 0, "routes", 1)
    parent: _Item | None = None  # the entity it is nested in
    id: str = ""
    parent_id: str | None = None  # the resolved foreign key (routes, targets)
    entity: dict[str, Any] | None = None  # validated
    errors: dict[str, Any] = field(default_factory=dict)

    def field_error(self, name: str, message: str) -> None:
        self.errors.setdefault(name, message)

    def entity_error(self, message: str) -> None:
        self.errors.setdefault("@entity", []).append(message)

    def merge(self, fields: Mapping[str, Any]) -> None:
        for name, message in fields.items():
            if name == "@entity":
                for text in message:
                    self.entity_error(text)
            else:
                self.field_error(name, message)

    @property
    def location(self) -> str:
        """Dotted, 1-based position: ``services.2.routes.1``."""
        return _location(self.where)


def _location(where: Sequence[str | int]) -> str:
    return ".".join(str(p + 1) if isinstance(p, int) else p for p in where)


class _StoredIndex:
    """The stored configuration, indexed for matching document entities."""

    def __init__(self, current: Entities) -> None:
        self.by_id: dict[str, dict[str, Mapping[str, Any]]] = {kind: {} for kind in KINDS}
        self.by_name: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
        self.targets: dict[tuple[str, str], str] = {}
        for kind in KINDS:
            for entity in current.get(kind, ()):
                entity_id = str(entity["id"])
                self.by_id[kind][entity_id] = entity
                if isinstance(entity.get("name"), str):
                    self.by_name[kind][entity["name"]] = entity_id
                if kind == "targets":
                    self.targets[(entity["upstream"]["id"], entity["target"])] = entity_id


def _put(tree: dict[str, Any], path: Sequence[str | int], value: Any) -> None:
    """Place ``value`` at ``path`` in an error tree (lists padded with None), merging dicts."""
    node: Any = tree
    for depth, part in enumerate(path):
        last = depth == len(path) - 1
        if isinstance(part, int):
            while len(node) <= part:
                node.append(None)
            if last:
                if isinstance(node[part], dict) and isinstance(value, dict):
                    node[part].update(value)
                else:
                    node[part] = value
                return
            if node[part] is None:
                node[part] = [] if isinstance(path[depth + 1], int) else {}
            node = node[part]
        else:
            if last:
                if isinstance(node.get(part), dict) and isinstance(value, dict):
                    node[part].update(value)
                else:
                    node[part] = value
                return
            if part not in node:
                node[part] = [] if isinstance(path[depth + 1], int) else {}
            node = node[part]


def _leaves(prefix: str, value: Any) -> Iterable[str]:
    """``path: message`` for every message under ``value`` (arrays 1-based)."""
    if isinstance(value, dict):
        for key in sorted(value, key=lambda k: (k != "@entity", k)):
            if key == "@entity":
                for message in value[key]:
                    yield f"{prefix}: {message}" if prefix else message
            else:
                yield from _leaves(f"{prefix}.{key}" if prefix else key, value[key])
    elif isinstance(value, list):
        for index, item in enumerate(value, start=1):
            if item is not None:
                yield from _leaves(f"{prefix}.{index}", item)
    else:
        yield f"{prefix}: {value}"


def _given_id(value: Any) -> str:
    """An ``id`` written in the document, as the schema will store it (UUIDs lower-cased)."""
    text = str(value)
    return str(uuid.UUID(text)) if isinstance(value, str) and is_uuid(text) else text


class _Resolver:
    """One resolution of one document: the steps :func:`resolve_document` runs, in order.

    Errors are collected on the items (and for the document itself) and
    raised together by :meth:`raise_errors`; later steps skip what an earlier
    one found invalid only where going on would repeat the same problem.
    """

    def __init__(self, document: Mapping[str, Any], current: Entities, now: int) -> None:
        self.document = document
        self.stored = _StoredIndex(current)
        self.now = now
        self.top_errors: dict[str, Any] = {}  # document-level: key -> message
        self.element_errors: list[tuple[tuple[str | int, ...], str]] = []  # non-record elements
        self.items: list[_Item] = []
        self.doc_ids: dict[str, set[str]] = {kind: set() for kind in KINDS}
        self.doc_names: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}

    # -- structure

    def check_metadata(self) -> None:
        version = self.document.get("_format_version")
        if version is None:
            self.top_errors["_format_version"] = "required field missing"
        elif not isinstance(version, str):
            self.top_errors["_format_version"] = f'expected a string (write "{FORMAT_VERSION}", quoted)'
        elif version != FORMAT_VERSION:
            self.top_errors["_format_version"] = f"expected one of: {FORMAT_VERSION}"
        if not isinstance(self.document.get("_transform", False), bool):
            self.top_errors["_transform"] = "expected a boolean"
        for key, value in self.document.items():
            if key in META_KEYS or key in KINDS:
                continue
            if key.startswith("_") or value not in (None, []):
                # An empty list of a kind Ferry does not have (a Kong dump's
                # "plugins: []") is harmless; anything else would be dropped.
                self.top_errors[key] = "unknown field"

    def collect(self) -> None:
        for kind in KINDS:
            section = self.document.get(kind)
            if section is None:
                continue
            if not isinstance(section, list):
                self.top_errors[kind] = "expected an array"
                continue
            for index, raw in enumerate(section):
                self._add(kind, raw, (kind, index), None)

    def _add(self, kind: str, raw: Any, where: tuple[str | int, ...], parent: _Item | None) -> None:
        if kind == "snis" and isinstance(raw, str) and parent is not None:
            raw = {"name": raw}  # a certificate's "snis: [a.example.com]", Kong's shorthand
        if not isinstance(raw, dict):
            self.element_errors.append((where, "expected a record"))
            return
        item = _Item(kind, dict(raw), where, parent)
        self.items.append(item)
        nested = _NESTED.get(kind)
        if nested is None:
            return
        child_kind = nested[0]
        children = item.raw.pop(child_kind, None)
        if children is None:
            return
        if not isinstance(children, list):
            item.field_error(child_kind, "expected an array")
            return
        for index, child in enumerate(children):
            self._add(child_kind, child, (*where, child_kind, index), item)

    # -- identity and references

    def _by_kind(self, *kinds: str) -> list[_Item]:
        return [item for item in self.items if item.kind in kinds]

    def identify_named(self) -> None:
        """Ids of upstreams, services and routes; then the document's id and name indexes."""
        for item in self._by_kind(*_NAMED_KINDS):
            given, name = item.raw.get("id"), item.raw.get("name")
            if item.kind == "snis" and isinstance(name, str):
                name = name.lower()  # as the schema stores it
            if given is not None:
                item.id = _given_id(given)
            elif isinstance(name, str) and name:
                item.id = self.stored.by_name[item.kind].get(name) or generated_id(item.kind, name)
            else:
                if item.kind != "upstreams":  # an upstream's missing name is a schema error
                    item.entity_error(
                        "needs an 'id' or a 'name' (to match it with the stored configuration)"
                    )
                item.id = generated_id(item.kind, "@" + item.location)
            self.doc_ids[item.kind].add(item.id)
            if isinstance(name, str):
                self.doc_names[item.kind].setdefault(name, item.id)

    def _reference(self, item: _Item, value: Any, parent_kind: str) -> str | None:
        """The id a foreign-key value names among the document's ``parent_kind`` entities."""
        fk_field = _FOREIGN[item.kind][0]
        key: str | None = None
        if isinstance(value, str):
            key = "id" if is_uuid(value) else "name"
        elif isinstance(value, dict) and isinstance(value.get("id"), str):
            key, value = "id", value["id"]
        elif isinstance(value, dict) and isinstance(value.get("name"), str):
            key, value = "name", value["name"]
        if key is None:
            item.field_error(fk_field, "expected a record with an 'id' or a 'name'")
            return None
        if key == "id" and _given_id(value) in self.doc_ids[parent_kind]:
            return _given_id(value)
        if key == "name" and value in self.doc_names[parent_kind]:
            return self.doc_names[parent_kind][value]
        item.field_error(
            fk_field,
            f"the foreign key '{{{key}=\"{value}\"}}' does not reference "
            f"an existing '{parent_kind}' entity of this configuration",
        )
        return None

    def resolve_parents(self) -> None:
        for item in self._by_kind(*_FOREIGN):
            fk_field, parent_kind = _FOREIGN[item.kind]
            value = item.raw.get(fk_field)
            if item.parent is not None:
                item.parent_id = item.parent.id
                if value is not None and self._reference(item, value, parent_kind) not in (
                    None,
                    item.parent_id,
                ):
                    item.field_error(
                        fk_field, f"must be the enclosing {SINGULAR_NAMES[parent_kind]} (or left out)"
                    )
            elif value is not None:
                item.parent_id = self._reference(item, value, parent_kind)
            elif item.kind in ("targets", "snis"):
                item.field_error(fk_field, "required field missing")

    def identify_certificates(self) -> None:
        """Ids of certificates and CA certificates: given, else the stored one with the
        same certificate, else a UUIDv5 of the certificate text."""
        stored_ids: dict[tuple[str, str], str] = {}
        for kind in _CERTIFICATE_KINDS:
            for entity_id, entity in self.stored.by_id[kind].items():
                if isinstance(entity.get("cert"), str):
                    stored_ids.setdefault((kind, entity["cert"].strip()), entity_id)
        for item in self._by_kind(*_CERTIFICATE_KINDS):
            given, cert = item.raw.get("id"), item.raw.get("cert")
            if given is not None:
                item.id = _given_id(given)
            elif isinstance(cert, str) and cert.strip():
                key = (item.kind, cert.strip())
                item.id = stored_ids.get(key) or generated_id(item.kind, cert.strip())
            else:
                item.id = generated_id(item.kind, "@" + item.location)
            self.doc_ids[item.kind].add(item.id)

    def check_tls_references(self) -> None:
        """Client certificates and CA certificates must be entities of the document."""
        for item in self._by_kind(*_TLS_REFERENCES):
            if item.entity is None:
                continue
            for fk_field, parent_kind in _TLS_REFERENCES[item.kind]:
                value = item.entity.get(fk_field)
                ids = [value["id"]] if isinstance(value, dict) else list(value or ())
                for ref in ids:
                    if ref not in self.doc_ids[parent_kind]:
                        item.field_error(
                            fk_field,
                            f"the foreign key '{{id=\"{ref}\"}}' does not reference "
                            f"an existing '{parent_kind}' entity of this configuration",
                        )

    def identify_targets(self) -> None:
        for item in self._by_kind("targets"):
            given = item.raw.get("id")
            target = item.raw.get("target")
            normalized: str | None = None
            if isinstance(target, str):
                try:
                    normalized = normalize_target(target)
                except RuleError:
                    normalized = None  # validation reports it
            if given is not None:
                item.id = _given_id(given)
            elif item.parent_id is not None and normalized is not None:
                key = (item.parent_id, normalized)
                item.id = self.stored.targets.get(key) or generated_id("targets", "|".join(key))
            else:
                item.id = generated_id("targets", "@" + item.location)
            self.doc_ids["targets"].add(item.id)

    # -- validation

    def validate(self) -> None:
        for item in self.items:
            try:
                candidate = expand_shorthands(item.kind, item.raw)
            except SchemaViolation as exc:
                item.merge(exc.fields or {})
                continue
            candidate = dict(candidate)
            if candidate.get("id") is None:
                candidate["id"] = item.id
            if item.kind in _FOREIGN:
                # A reference error was recorded already; it wins over the schema's
                # message for the same field (errors keep the first message).
                fk_field = _FOREIGN[item.kind][0]
                candidate[fk_field] = {"id": item.parent_id} if item.parent_id else None
            stored = self.stored.by_id[item.kind].get(item.id)
            given_updated_at = item.raw.get("updated_at")
            if candidate.get("created_at") is None:
                candidate["created_at"] = stored["created_at"] if stored else self.now
            if given_updated_at is None:
                candidate["updated_at"] = stored["updated_at"] if stored else self.now
            try:
                entity = validate_entity(item.kind, candidate)
            except SchemaViolation as exc:
                item.merge(exc.fields or {})
                continue
            if (
                stored is not None
                and entity != stored
                and given_updated_at in (None, stored["updated_at"])
            ):
                # Never earlier than the stored stamp (a target's has milliseconds).
                entity["updated_at"] = max(self.now, stored["updated_at"])
            item.entity = entity

    def check_uniqueness(self) -> None:
        """Ids unique per kind, names per kind, targets per upstream (later duplicates fail)."""
        seen: set[tuple[str, ...]] = set()
        for item in self.items:
            entity = item.entity
            if entity is None:
                continue
            kind = item.kind
            key: tuple[str, ...] | None = None
            if kind == "targets":
                key = (kind, "target", entity["upstream"]["id"], entity["target"])
                field_text = f"target set to '{entity['target']}' in its upstream"
            elif entity.get("name") is not None:
                key = (kind, "name", entity["name"])
                field_text = f"name set to '{entity['name']}'"
            elif entity.get("cert_digest") is not None:
                key = (kind, "cert_digest", entity["cert_digest"])
                field_text = f"cert_digest set to '{entity['cert_digest']}'"
            if key is not None and key in seen:
                # Entities without ids that share a name also share a generated id:
                # the name is the problem to report.
                item.entity_error(
                    f"uniqueness violation: '{kind}' entity with {field_text} already declared"
                )
            elif (kind, entity["id"]) in seen:
                item.entity_error(
                    f"uniqueness violation: '{kind}' entity with primary key set to "
                    f"'{entity['id']}' already declared"
                )
            seen.add((kind, entity["id"]))
            if key is not None:
                seen.add(key)

    # -- outcome

    def raise_errors(self) -> None:
        invalid = [item for item in self.items if item.errors]
        if not (invalid or self.top_errors or self.element_errors):
            return
        fields: dict[str, Any] = dict(self.top_errors)
        flattened: list[dict[str, Any]] = []
        # (position in the document, text): reported in document order.
        problems: list[tuple[tuple[Any, ...], str]] = [
            (self._position((key,)), f"{key}: {message}") for key, message in self.top_errors.items()
        ]
        for item in invalid:
            _put(fields, item.where, dict(item.errors))
            flattened.append(self._flattened(item))
            label = _item_label(item)
            position = self._position(item.where)
            problems += [(position, f"{label}: {line}") for line in _leaves("", item.errors)]
        for where, message in self.element_errors:
            _put(fields, where, message)
            problems.append((self._position(where), f"{_location(where)}: {message}"))
        problems.sort(key=lambda pair: pair[0])
        raise DeclarativeConfigInvalid(fields, flattened, [text for _, text in problems])

    def _position(self, where: tuple[str | int, ...]) -> tuple[Any, ...]:
        """A sort key following the document: its top-level key order, then positions."""
        keys = list(self.document)
        top = keys.index(where[0]) if where[0] in keys else len(keys)
        return (top, *where[1:])

    def _flattened(self, item: _Item) -> dict[str, Any]:
        """Kong's ``flattened_errors`` entry for one entity, plus Ferry's ``location``."""
        errors: list[dict[str, Any]] = []
        for name in sorted(item.errors, key=lambda k: (k != "@entity", k)):
            value = item.errors[name]
            if name == "@entity":
                errors += [{"type": "entity", "message": message} for message in value]
            else:
                for line in _leaves(name, value):
                    path, _, message = line.partition(": ")
                    errors.append({"type": "field", "field": path, "message": message})
        raw = item.raw
        tags = raw.get("tags")
        return {
            "entity_type": SINGULAR_NAMES[item.kind],
            "entity_id": raw["id"] if isinstance(raw.get("id"), str) and is_uuid(raw["id"]) else None,
            "entity_name": raw["name"] if isinstance(raw.get("name"), str) and raw["name"] else None,
            "entity_tags": tags if isinstance(tags, list) and all(isinstance(t, str) for t in tags) else None,
            "entity": raw,
            "location": item.location,
            "errors": errors,
        }

    def result(self) -> dict[str, list[dict[str, Any]]]:
        entities: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KINDS}
        for item in self.items:
            assert item.entity is not None
            entities[item.kind].append(item.entity)
        for kind in KINDS:
            entities[kind].sort(key=lambda e: str(e["id"]))
        return entities


def _item_label(item: _Item) -> str:
    """``services.2 (service 'orders')``: where an entity is, and what it is called."""
    name = item.raw.get("target") if item.kind == "targets" else item.raw.get("name")
    if isinstance(name, str) and name:
        return f"{item.location} ({SINGULAR_NAMES[item.kind]} '{name}')"
    if isinstance(item.raw.get("id"), str):
        return f"{item.location} ({SINGULAR_NAMES[item.kind]} {item.raw['id']})"
    return f"{item.location} ({SINGULAR_NAMES[item.kind]})"


def resolve_document(
    document: Mapping[str, Any], current: Entities, now: int
) -> dict[str, list[dict[str, Any]]]:
    """The complete configuration ``document`` describes, resolved against ``current``.

    ``document`` is a parsed document (:func:`parse_document`); ``current`` the
    stored configuration (kind -> entities, as :meth:`EntityStore.load_all`
    returns); ``now`` the epoch seconds used for new timestamps. Returns kind ->
    validated entities sorted by id, for every kind of :data:`KINDS`. Raises
    :class:`DeclarativeConfigInvalid` with every problem found (schema,
    references, uniqueness, metadata); validity never depends on ``current``,
    so resolving against an empty configuration validates a document.
    """
    resolver = _Resolver(document, current, now)
    resolver.check_metadata()
    resolver.collect()
    resolver.identify_certificates()
    resolver.identify_named()
    resolver.resolve_parents()
    resolver.identify_targets()
    resolver.validate()
    resolver.check_tls_references()
    resolver.check_uniqueness()
    resolver.raise_errors()
    return resolver.result()


# ---------------------------------------------------------------------- diff


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One changed field of an updated entity; ``path`` is dotted for nested records."""

    path: str
    old: Any
    new: Any


@dataclass(frozen=True, slots=True)
class EntityChange:
    """One entity to create, update or delete; ``entity`` is the new one (deleted: the old)."""

    op: Literal["create", "update", "delete"]
    kind: str
    entity: dict[str, Any]
    fields: tuple[FieldChange, ...] = ()

    @property
    def id(self) -> str:
        return str(self.entity["id"])


@dataclass(frozen=True)
class ConfigDiff:
    """What takes one configuration to another, entity by entity.

    ``changes`` lists creates and updates in dependency order (upstreams,
    targets, services, routes), then deletes in reverse order (children
    first), each group sorted by id.
    """

    changes: tuple[EntityChange, ...]

    @property
    def empty(self) -> bool:
        return not self.changes

    def count(self, op: str) -> int:
        return sum(1 for change in self.changes if change.op == op)

    @property
    def upserts(self) -> list[tuple[str, dict[str, Any]]]:
        """``(kind, entity)`` to write, for :meth:`EntityStore.replace_config`."""
        return [(c.kind, c.entity) for c in self.changes if c.op != "delete"]

    @property
    def deletes(self) -> list[tuple[str, str]]:
        """``(kind, id)`` to delete, for :meth:`EntityStore.replace_config`."""
        return [(c.kind, c.id) for c in self.changes if c.op == "delete"]


def _field_changes(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[FieldChange]:
    changes: list[FieldChange] = []
    for key in [*new, *(k for k in old if k not in new)]:
        before, after = old.get(key), new.get(key)
        path = f"{prefix}{key}"
        if isinstance(before, dict) and isinstance(after, dict):
            changes += _field_changes(before, after, f"{path}.")
        elif before != after:
            changes.append(FieldChange(path, before, after))
    return changes


def diff_configs(current: Entities, desired: Entities) -> ConfigDiff:
    """The entity changes that turn ``current`` into ``desired`` (entities compared whole)."""
    upserts: list[EntityChange] = []
    deletes: list[EntityChange] = []
    for kind in KINDS:
        before = {str(e["id"]): e for e in current.get(kind, ())}
        after = {str(e["id"]): e for e in desired.get(kind, ())}
        for entity_id in sorted(after):
            old, new = before.get(entity_id), dict(after[entity_id])
            if old is None:
                upserts.append(EntityChange("create", kind, new))
            elif dict(old) != new:
                upserts.append(EntityChange("update", kind, new, tuple(_field_changes(old, new))))
        gone = [EntityChange("delete", kind, dict(before[i])) for i in sorted(before) if i not in after]
        deletes = gone + deletes  # children (later kinds) first
    return ConfigDiff((*upserts, *deletes))
