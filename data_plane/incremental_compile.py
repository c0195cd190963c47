"""Compile only what a change touches (the data plane's side of a config delta).

A one-target delta to a 10 000-target config used to recompile every upstream,
service and route. :class:`CompiledState` keeps, beside the compiled
:class:`~data_plane.runtime.RuntimeConfig`, the decoded entities and three indexes
(the targets of each upstream, the services naming each host, the routes of each
service), so :func:`compile_change` recompiles:

- the upstreams changed, and those whose targets changed (a target moving between
  upstreams touches both);
- the services changed, and those whose ``host`` names (ignoring case, as the
  look-up does) a recompiled, added or removed upstream: they hold its balancer;
- the routes changed, and those of a recompiled or removed service;
- the router, only when a route was recompiled (untouched routes lend their
  precompiled candidates).

Everything else keeps its compiled object (the same object: an untouched
upstream keeps its balancer and its health checker). The result is the config
:func:`~data_plane.runtime.compile_config` builds from the whole merged config, in
the same order (ids sorted within a kind, as the merged snapshot lists them).

Errors: any :class:`~data_plane.runtime.ConfigError` the incremental path meets
makes it compile the whole merged config instead, so a refused change is refused
with exactly the message a whole compile gives (and should the incremental path
ever refuse a config the whole compile accepts, the whole compile's result is
used). A state whose entities' bodies do not carry their keys as ids, or are not
sorted by id, is also compiled whole (once: the result is sorted).

Pure: no I/O, no locks; the states are immutable and share unchanged parts.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from data_plane.router import RouteSpec
from data_plane.runtime import (
    CompiledService,
    CompiledUpstream,
    ConfigError,
    RuntimeConfig,
    UpstreamNames,
    UpstreamTargets,
    add_target,
    build_router,
    compile_config_with_routes,
    compile_route,
    compile_service,
    compile_upstream,
    created_order,
)
from data_plane.upstream_tls import TlsEntities
from ferry_shared.snapshot_format import KINDS

__all__ = ["CompiledState", "Entities", "compile_all", "compile_change"]

#: kind -> entity id -> decoded entity (ids sorted within a kind for incremental use).
Entities = Mapping[str, Mapping[str, Mapping[str, Any]]]
#: ``(kind, id)`` -> the entity's new dict, or ``None`` when it is removed.
Changes = Mapping[tuple[str, str], Mapping[str, Any] | None]

_EMPTY: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class CompiledState:
    """A compiled config and what lets a change recompile only what it touches."""

    config: RuntimeConfig
    entities: Entities
    #: Route id -> compiled spec (``None``: not served here), in creation order.
    routes: Mapping[str, RouteSpec[CompiledService] | None]
    #: Upstream id -> ids of its targets.
    targets_of: Mapping[str, frozenset[str]]
    #: A service ``host``, lower-cased -> ids of the services naming it.
    services_on: Mapping[str, frozenset[str]]
    #: Service id -> ids of its routes.
    routes_of: Mapping[str, frozenset[str]]
    #: Every body's ``id`` is its key and upstream and service ids are sorted (the
    #: order a whole compile of the merged config gives); else the next change
    #: compiles the whole config.
    incremental: bool


def _upstream_of(target: Mapping[str, Any]) -> str | None:
    ref = target.get("upstream")
    return ref.get("id") if isinstance(ref, Mapping) else None


def _service_of(route: Mapping[str, Any]) -> str | None:
    ref = route.get("service")
    return ref.get("id") if isinstance(ref, Mapping) else None


def _host_of(service: Mapping[str, Any]) -> str:
    host = service.get("host")
    return host.lower() if isinstance(host, str) else ""


def _group(pairs: Any) -> dict[str, frozenset[str]]:
    grouped: dict[str, set[str]] = {}
    for owner, member in pairs:
        grouped.setdefault(owner, set()).add(member)
    return {owner: frozenset(members) for owner, members in grouped.items()}


def _sorted_and_keyed(entities: Entities) -> bool:
    for kind, of_kind in entities.items():
        if any(entity.get("id") != key for key, entity in of_kind.items()):
            return False
        ids = list(of_kind)
        if kind in _ORDERED_KINDS and any(a >= b for a, b in zip(ids, ids[1:], strict=False)):
            return False
    return True


def compile_all(
    version: int,
    digest: str,
    entities: Entities,
    previous: RuntimeConfig | None,
    *,
    listed: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    clock: Callable[[], float] | None = None,
) -> CompiledState:
    """Compile the whole config (``compile_config``) and index it; raises ConfigError.

    ``listed`` (the entities as a snapshot listed them, when it listed a key twice)
    is what is compiled instead of ``entities``, which then only serve the next
    change, itself compiled whole (as a whole config merged by key always was).
    """
    config, routes = compile_config_with_routes(
        version,
        digest,
        listed
        if listed is not None
        else {kind: list(entities.get(kind, {}).values()) for kind in KINDS},
        previous,
        clock=clock,
    )
    # Compiled, so every reference below names an entity that exists.
    return CompiledState(
        config=config,
        entities=entities,
        routes=types.MappingProxyType(routes),
        targets_of=_group(
            (_upstream_of(t), tid) for tid, t in entities.get("targets", {}).items()
        ),
        services_on=_group((_host_of(s), sid) for sid, s in entities.get("services", {}).items()),
        routes_of=_group(
            (sid, rid)
            for rid, r in entities.get("routes", {}).items()
            if (sid := _service_of(r)) is not None
        ),
        incremental=listed is None and _sorted_and_keyed(entities),
    )


#: Kinds whose id order is the compiled config's order (``upstreams``, ``services``
#: mappings); targets and routes are ordered when compiled (by id, by creation).
_ORDERED_KINDS = frozenset({"upstreams", "services"})


def merge_entities(base: Entities, changes: Changes) -> dict[str, Mapping[str, Mapping[str, Any]]]:
    """``base`` with ``changes`` applied; upstreams and services stay sorted by id."""
    merged: dict[str, Mapping[str, Mapping[str, Any]]] = {
        kind: base.get(kind, {}) for kind in KINDS
    }
    by_kind: dict[str, dict[str, Mapping[str, Any] | None]] = {}
    for (kind, entity_id), entity in changes.items():
        by_kind.setdefault(kind, {})[entity_id] = entity
    for kind, changed in by_kind.items():
        of_kind = dict(merged.get(kind, {}))
        added = False
        for entity_id, entity in changed.items():
            if entity is None:
                of_kind.pop(entity_id, None)
            else:
                added = added or entity_id not in of_kind
                of_kind[entity_id] = entity
        if added and kind in _ORDERED_KINDS:
            of_kind = {entity_id: of_kind[entity_id] for entity_id in sorted(of_kind)}
        merged[kind] = of_kind
    return merged


def compile_change(
    base: CompiledState, version: int, digest: str, changes: Changes
) -> CompiledState:
    """The state ``changes`` lead to from ``base``; raises ConfigError as a whole compile would.

    ``changes`` holds only entities whose body differs from ``base``'s (or that
    ``base`` lacks, or removes ones it has).
    """
    entities = merge_entities(base.entities, changes)
    if base.incremental and all(
        entity_id and (entity is None or entity.get("id") == entity_id)
        for (_, entity_id), entity in changes.items()
    ):
        try:
            return _compile_touched(base, version, digest, entities, changes)
        except ConfigError:
            pass  # compiled whole below, which gives the canonical error
    # Sorted by id within each kind, as the merged snapshot lists them.
    ordered = {kind: {k: of_kind[k] for k in sorted(of_kind)} for kind, of_kind in entities.items()}
    return compile_all(version, digest, ordered, base.config)


def _ordered(
    entities: Mapping[str, Any], base: Mapping[str, Any], fresh: Mapping[str, Any]
) -> dict[str, Any]:
    """The compiled objects of ``entities``' ids, in their order: ``fresh`` ones, else ``base``'s."""
    return {key: fresh[key] if key in fresh else base[key] for key in entities}


def _compile_touched(
    base: CompiledState,
    version: int,
    digest: str,
    entities: Mapping[str, Mapping[str, Mapping[str, Any]]],
    changes: Changes,
) -> CompiledState:
    previous = base.config
    old_entities = base.entities
    new_upstreams, new_targets = entities["upstreams"], entities["targets"]
    new_services, new_routes = entities["services"], entities["routes"]

    # Upstreams: the changed ones and those whose targets changed.
    touched_upstreams: set[str] = set()
    targets_of = base.targets_of
    services_on = base.services_on
    routes_of = base.routes_of
    touched_services: set[str] = set()
    touched_routes: set[str] = set()
    edits: dict[str, dict[tuple[str, str], tuple[str | None, str | None]]] = {}
    for (kind, entity_id), entity in changes.items():
        old = old_entities.get(kind, {}).get(entity_id)
        if kind == "upstreams":
            touched_upstreams.add(entity_id)
        elif kind == "targets":
            before = _upstream_of(old) if old is not None else None
            after = _upstream_of(entity) if entity is not None else None
            if entity is not None and after is None:
                raise ConfigError("a target without an upstream")  # the whole compile says which
            edits.setdefault("targets", {})[(kind, entity_id)] = (before, after)
            touched_upstreams.update(u for u in (before, after) if u is not None)
        elif kind == "services":
            before = _host_of(old) if old is not None else None
            after = _host_of(entity) if entity is not None else None
            edits.setdefault("services", {})[(kind, entity_id)] = (before, after)
            touched_services.add(entity_id)
        elif kind == "routes":
            before = _service_of(old) if old is not None else None
            after = _service_of(entity) if entity is not None else None
            edits.setdefault("routes", {})[(kind, entity_id)] = (before, after)
            touched_routes.add(entity_id)
        else:
            raise ConfigError(f"unknown entity kind {kind!r}")
    if "targets" in edits:
        targets_of = _reindex(targets_of, edits["targets"])
    if "services" in edits:
        services_on = _reindex(services_on, edits["services"])
    if "routes" in edits:
        routes_of = _reindex(routes_of, edits["routes"])

    # Certificates are never changed here (a change to one compiles the whole config):
    # recompiled entities find theirs, and unchanged material keeps its context.
    tls = TlsEntities.of(entities)
    fresh_upstreams: dict[str, CompiledUpstream] = {}
    affected_names: set[str] = set()
    for upstream_id in touched_upstreams:
        old_upstream = previous.upstreams.get(upstream_id)
        if old_upstream is not None:
            affected_names.add(old_upstream.name.lower())
        entity = new_upstreams.get(upstream_id)
        if entity is None:
            if targets_of.get(upstream_id):
                raise ConfigError("targets of a missing upstream")  # the whole compile says which
            continue
        grouped: dict[str, UpstreamTargets] = {upstream_id: []}
        keys: dict[str, set[str]] = {}
        for target_id in sorted(targets_of.get(upstream_id, _EMPTY)):
            add_target(grouped, keys, new_targets[target_id])
        compiled = compile_upstream(entity, grouped[upstream_id], old_upstream, tls=tls)
        fresh_upstreams[upstream_id] = compiled
        affected_names.add(compiled.name.lower())
    upstreams = (
        _ordered(new_upstreams, previous.upstreams, fresh_upstreams)
        if touched_upstreams
        else previous.upstreams
    )
    if touched_upstreams and len({u.name for u in upstreams.values()}) != len(upstreams):
        raise ConfigError("duplicate upstream name")  # the whole compile says which

    # Services: the changed ones and those naming an upstream that was recompiled.
    for name in affected_names:
        touched_services.update(services_on.get(name, _EMPTY))
    fresh_services: dict[str, CompiledService] = {}
    if touched_services:
        names = UpstreamNames(upstreams.values())
        for service_id in touched_services:
            entity = new_services.get(service_id)
            if entity is not None:
                fresh_services[service_id] = compile_service(entity, names, tls=tls)
    services = (
        _ordered(new_services, previous.services, fresh_services)
        if touched_services
        else previous.services
    )

    # Routes: the changed ones and those of a recompiled (or removed) service.
    for service_id in touched_services:
        touched_routes.update(routes_of.get(service_id, _EMPTY))
        touched_routes.update(base.routes_of.get(service_id, _EMPTY))
    router = previous.router
    routes = base.routes
    if touched_routes:
        specs = dict(base.routes)
        for route_id in touched_routes:
            entity = new_routes.get(route_id)
            if entity is None:
                specs.pop(route_id, None)
            else:
                specs[route_id] = compile_route(entity, services)
        order = sorted(new_routes.values(), key=created_order)
        routes = types.MappingProxyType({r["id"]: specs[r["id"]] for r in order})
        router = build_router(routes.values(), previous.router)

    return CompiledState(
        config=RuntimeConfig(
            version=version,
            hash=digest,
            router=router,
            services=(
                types.MappingProxyType(services) if services is not previous.services else services
            ),
            upstreams=(
                types.MappingProxyType(upstreams)
                if upstreams is not previous.upstreams
                else upstreams
            ),
            # A change to a certificate or an SNI compiles the config whole (its kind is
            # not one this function handles), so the previous ones still hold.
            server_certificates=previous.server_certificates,
        ),
        entities=entities,
        routes=routes,
        targets_of=targets_of,
        services_on=services_on,
        routes_of=routes_of,
        incremental=True,
    )


def _reindex(
    index: Mapping[str, frozenset[str]],
    moves: Mapping[tuple[str, str], tuple[str | None, str | None]],
) -> dict[str, frozenset[str]]:
    """``index`` (owner -> member ids) after each member moved from one owner to another."""
    updated = dict(index)
    for (_, member), (before, after) in moves.items():
        if before == after:
            continue
        if before is not None:
            remaining = updated.get(before, _EMPTY) - {member}
            if remaining:
                updated[before] = remaining
            else:
                updated.pop(before, None)
        if after is not None:
            updated[after] = updated.get(after, _EMPTY) | {member}
    return updated
