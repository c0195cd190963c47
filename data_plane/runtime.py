"""The data plane's compiled, immutable view of one config version.

:func:`compile_config` turns the entity dicts of a snapshot (Kong 3.x Admin API shapes)
into a :class:`RuntimeConfig`: a precompiled router, per-service objects with
everything the proxy needs per request (balancer or direct address, timeouts in
seconds, retries, Host header), and the upstreams' balancers. Anything it cannot apply
raises :class:`ConfigError`; the caller NACKs and keeps serving the previous config.

Why this module is past 600 lines: the compiled types and the one-entity compile
functions that build them (``compile_upstream``, ``compile_service``,
``compile_route``, shared by the whole compile here and the incremental one in
:mod:`data_plane.incremental_compile`) belong together; splitting them would
separate each function from the type it fills.

Swapping configs: the cluster client assigns a new :class:`RuntimeConfig` to
:attr:`ConfigHolder.current` (one reference assignment, atomic under the GIL and on
the single event-loop thread); the proxy reads ``holder.current`` once per request, so
a request is served entirely by the old or entirely by the new config.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from data_plane import upstream_try
from data_plane.balancers import (
    Address,
    Balancer,
    BalancerHandle,
    BalancerOptions,
    create_balancer,
    parse_target,
)
from data_plane.balancers.sticky_sessions import StickyCookie
from data_plane.hash_key import STICKY_SESSIONS, HashSpec, compile_hash_spec, sticky_cookie_settings
from data_plane.health.settings import HealthSettings, compile_health_settings
from data_plane.overload import OverloadCaps, OverloadGuard
from data_plane.retry_budget import RetryBudget
from data_plane.router import RouteMatch, Router, RouteSpec
from data_plane.tls_termination import (
    NO_SERVER_CERTIFICATES,
    CertificateError,
    ServerCertificates,
    compile_server_certificates,
)
from data_plane.upstream_tls import TlsEntities, TlsMaterialError, UpstreamTls

if TYPE_CHECKING:
    from data_plane.health.checker import HealthChecker

__all__ = [
    "CompiledService",
    "CompiledUpstream",
    "ConfigError",
    "ConfigHolder",
    "RuntimeConfig",
    "compile_config",
]

_MAX_TIMEOUT_MS = 2**31 - 2  # Kong's upper bound for *_timeout
_MAX_RETRIES = 32767
#: The control plane's INT32_MAX (Kong's 2^31), the largest hash_balance_factor.
_FACTOR_MAX = 2**31
_MAX_CAP = 2**31 - 1  # max_connections, max_pending_requests, max_requests (INT32_MAX)
#: Each service protocol's scheme port. grpc/grpcs services compile (a config holding
#: one is not refused); their grpc/grpcs routes are proxied by data_plane/proxy/grpc_proxy.py.
_DEFAULT_PORTS = {"http": 80, "https": 443, "grpc": 80, "grpcs": 443}


class ConfigError(ValueError):
    """A config this data plane cannot apply; the message says which entity and why."""


@dataclass(frozen=True, slots=True)
class CompiledUpstream:
    """An upstream with its balancer, hash settings and retry budget.

    ``targets`` are the configured targets (sorted by key, hostnames unresolved): the
    DNS resolver expands them and hands the result to ``balancer.after_targets_changed``,
    so ``balancer.addresses`` may differ from ``targets``. ``hash_spec`` is ``None`` unless
    the algorithm is consistent hashing with a ``hash_on`` other than ``none``.
    ``retry_budget`` is ``None`` unless ``retry_budget_percent`` is set. ``slots`` and
    ``slow_start`` (seconds) are the balancer options as configured.

    The balancer and the retry budget are mutable (positions, health marks, counters)
    and are shared with the previous config version when what they depend on did not
    change: the balancer when algorithm, options and targets are the same, the budget
    when its percent is the same.
    """

    id: str
    name: str
    algorithm: str
    host_header: bytes | None
    balancer: Balancer
    targets: tuple[Address, ...] = ()
    hash_spec: HashSpec | None = None
    retry_budget: RetryBudget | None = None
    slots: int = 10000
    slow_start: float = 0.0
    #: Kong's ``healthchecks``, compiled (immutable; what the checker runs).
    health_settings: HealthSettings = field(default_factory=lambda: compile_health_settings(None))
    #: ``host_header`` as configured (text; the health checker's Host and SNI).
    host_name: str | None = None
    #: Configured target key (``host:port``) -> target entity id.
    target_ids: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    #: Kong's ``use_srv_name``: an SRV target's addresses send the SRV record's target
    #: name as Host/SNI instead of the target's name (read by the DNS resolver).
    use_srv_name: bool = False
    #: The target entities as the snapshot carries them (the status API serves them).
    target_entities: tuple[Mapping[str, Any], ...] = ()
    #: Kong's ``client_certificate`` (its id): presented to targets by the services
    #: that set none of their own, and by ``https`` probes.
    client_certificate_id: str | None = None
    #: ``sticky-sessions``: the cookie the proxy sets after each pick (``None`` for
    #: every other algorithm, so the proxy's check is one slot read).
    sticky: StickyCookie | None = None
    #: The upstream's live health checker (Kong's healthchecks; also when all checks
    #: are off, so that manual overrides work). Not compiled: the config installer
    #: creates it (or carries the previous version's over) and sets this slot once,
    #: before the config serves (:meth:`attach_health`); the proxy reads it per
    #: request as a plain slot. ``None`` until then.
    health: HealthChecker | None = field(init=False, default=None, compare=False)
    #: The overload caps per target and their live counts (:mod:`data_plane.overload`);
    #: ``None`` when ``max_connections``, ``max_pending_requests`` and ``max_requests``
    #: are all 0 (the proxy then checks nothing more). Shares its counts with the
    #: previous version's.
    overload: OverloadGuard | None = field(default=None, compare=False)

    def begin_try(self, handle: BalancerHandle) -> upstream_try.Try | None:
        """The proxy's door into the upstream (:func:`data_plane.upstream_try.begin_try`)."""
        return upstream_try.begin_try(self, handle)

    def allow_retry(self, handle: BalancerHandle) -> bool:
        """See :func:`data_plane.upstream_try.allow_retry`."""
        return upstream_try.allow_retry(self, handle)

    def attach_health(self, checker: HealthChecker) -> None:
        """Set :attr:`health` (the installer, once, before this config serves)."""
        object.__setattr__(self, "health", checker)

    @property
    def options(self) -> BalancerOptions:
        """The balancer options this upstream was built with."""
        return self.balancer.options


@dataclass(frozen=True, slots=True)
class CompiledService:
    """What the proxy needs to send a request to a service.

    Exactly one of ``balancer`` (the service's ``host`` names an upstream) and
    ``address`` (a plain ``host:port``) is set. Timeouts are in **seconds** (Kong
    configures milliseconds). ``host_header`` is the upstream's ``host_header`` (bytes)
    or ``None``; ``default_port`` is the scheme's port, omitted from a Host header.
    """

    id: str
    name: str | None
    protocol: str
    host: str
    port: int
    path: str | None
    retries: int
    connect_timeout: float
    write_timeout: float
    read_timeout: float
    balancer: Balancer | None
    address: Address | None
    host_header: bytes | None
    upstream_id: str | None
    default_port: int
    enabled: bool = True
    #: The balanced upstream (its ``hash_spec`` and ``retry_budget``), or ``None``.
    upstream: CompiledUpstream | None = None
    #: The TLS identity connections to targets use (``https`` only; see
    #: :mod:`data_plane.upstream_tls`): context, verified-chain bound, pool key prefix.
    upstream_tls: UpstreamTls | None = None
    #: ``protocol == "https"`` (derived; a field so the proxy reads it without a call).
    tls: bool = field(init=False, default=False)
    #: The upstream's consistent-hashing spec, if any (derived, as ``tls``).
    hash_spec: HashSpec | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "tls", self.protocol == "https")
        if self.tls and self.upstream_tls is None:  # built by hand: Kong's defaults
            object.__setattr__(
                self,
                "upstream_tls",
                TlsEntities().for_service(
                    verify=False, depth=None, ca_ids=(), client_certificate_id=None
                ),
            )
        object.__setattr__(self, "hash_spec", self.upstream.hash_spec if self.upstream else None)


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    """One applied config version. Immutable; share it freely between requests.

    ``hash`` is the snapshot hash the control plane computed (echoed in ACKs).
    """

    version: int
    hash: str
    router: Router[CompiledService]
    services: Mapping[str, CompiledService]
    upstreams: Mapping[str, CompiledUpstream]
    #: The ``certificates`` and ``snis`` served on the proxy's TLS listeners.
    server_certificates: ServerCertificates = NO_SERVER_CERTIFICATES

    @property
    def uses_headers(self) -> bool:
        """Whether :meth:`match` needs the request headers (a route matches on them)."""
        return self.router.uses_headers

    def match(
        self,
        method: bytes,
        host: bytes | None,
        path: bytes,
        headers: Mapping[bytes, bytes | list[bytes]] | None = None,
        sni: bytes | None = None,
    ) -> RouteMatch[CompiledService] | None:
        """Route a request; see :meth:`data_plane.router.Router.match`."""
        return self.router.match(method, host, path, headers, sni)

    def upstream_by_name(self, name: str) -> CompiledUpstream | None:
        for upstream in self.upstreams.values():
            if upstream.name == name:
                return upstream
        return None


class ConfigHolder:
    """The current config of a data plane, swapped by one reference assignment.

    Writers (the cluster client) assign :attr:`current`; readers (the proxy) read it once
    per request and use that object throughout. ``None`` until a config is loaded.
    """

    __slots__ = ("current",)

    def __init__(self, current: RuntimeConfig | None = None) -> None:
        self.current: RuntimeConfig | None = current


# --------------------------------------------------------------------------- helpers


def _label(kind: str, entity: Mapping[str, Any]) -> str:
    name = entity.get("name")
    ident = entity.get("id")
    if name:
        return f"{kind} {name!r} ({ident})"
    return f"{kind} {ident}"


def _str(entity: Mapping[str, Any], key: str, label: str, *, required: bool = True) -> str | None:
    value = entity.get(key)
    if value is None:
        if required:
            raise ConfigError(f"{label}: '{key}' is required")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{label}: '{key}' must be a non-empty string")
    return value


def _int(entity: Mapping[str, Any], key: str, label: str, default: int, lo: int, hi: int) -> int:
    value = entity.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{label}: '{key}' must be an integer between {lo} and {hi}")
    return value


def _number(
    entity: Mapping[str, Any], key: str, label: str, default: float | None, lo: float, hi: float
) -> float | None:
    value = entity.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not lo <= value <= hi  # also refuses NaN
    ):
        raise ConfigError(f"{label}: '{key}' must be a number between {lo:g} and {hi:g}")
    return float(value)


def _bool(entity: Mapping[str, Any], key: str, label: str, default: bool) -> bool:
    value = entity.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{label}: '{key}' must be a boolean")
    return value


def _str_list(entity: Mapping[str, Any], key: str, label: str) -> tuple[str, ...]:
    value = entity.get(key)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{label}: '{key}' must be a list of non-empty strings")
    return tuple(value)


def _ref(entity: Mapping[str, Any], key: str, label: str) -> str | None:
    value = entity.get(key)
    if value is None:
        return None
    if isinstance(value, Mapping) and isinstance(value.get("id"), str):
        return str(value["id"])
    raise ConfigError(f"{label}: '{key}' must be null or an object with an 'id'")


def _entities(entities: Mapping[str, Any], kind: str) -> list[Mapping[str, Any]]:
    items = entities.get(kind) or []
    if not isinstance(items, list) or not all(isinstance(e, Mapping) for e in items):
        raise ConfigError(f"'{kind}' must be a list of objects")
    seen: set[str] = set()
    for e in items:
        ident = e.get("id")
        if not isinstance(ident, str) or not ident:
            raise ConfigError(f"{kind}: an entity has no 'id'")
        if ident in seen:
            raise ConfigError(f"{kind}: duplicate id {ident}")
        seen.add(ident)
    return items


def created_order(entity: Mapping[str, Any]) -> tuple[float, str]:
    created = entity.get("created_at")
    if isinstance(created, bool) or not isinstance(created, int | float):
        created = 0
    return float(created), str(entity["id"])


# --------------------------------------------------------------------------- compile


def compile_config(
    version: int,
    config_hash: str,
    entities: Mapping[str, list[dict[str, Any]]],
    previous: RuntimeConfig | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> RuntimeConfig:
    """Validate and compile a snapshot into a :class:`RuntimeConfig`.

    ``entities`` maps ``upstreams``/``targets``/``services``/``routes`` to lists of entity
    dicts; other kinds are ignored. When ``previous`` has an upstream with the same id,
    algorithm, balancer options and configured targets, its balancer object
    (positions, statistics, health marks, DNS expansion) is reused; when only targets or
    options changed, a new balancer is seeded from it (health marks, slow-start ramps,
    statistics of addresses that stay) without modifying it. ``clock`` (monotonic
    seconds) is for tests of slow start. Raises :class:`ConfigError`. Pure apart from
    that sharing; takes no locks and does no I/O.
    """
    return compile_config_with_routes(version, config_hash, entities, previous, clock=clock)[0]


def compile_config_with_routes(
    version: int,
    config_hash: str,
    entities: Mapping[str, Sequence[Mapping[str, Any]]],
    previous: RuntimeConfig | None = None,
    *,
    clock: Callable[[], float] | None = None,
) -> tuple[RuntimeConfig, dict[str, RouteSpec[CompiledService] | None]]:
    """:func:`compile_config`, plus each route's compiled spec by route id (``None``
    for a route this HTTP proxy does not serve), which an incremental compile
    (:mod:`data_plane.incremental_compile`) reuses for the routes a change leaves alone."""
    try:
        server_certificates = compile_server_certificates(
            _entities(entities, "certificates"),
            _entities(entities, "snis"),
            previous.server_certificates if previous is not None else None,
        )
    except CertificateError as exc:
        raise ConfigError(str(exc)) from None
    tls = TlsEntities(
        _entities(entities, "certificates"), _entities(entities, "ca_certificates")
    )
    upstreams = _compile_upstreams(entities, previous, clock, tls)
    services = _compile_services(entities, UpstreamNames(upstreams.values()), tls)
    routes: dict[str, RouteSpec[CompiledService] | None] = {}
    # Kong breaks ties between equally specific routes by creation time, oldest first.
    for route in sorted(_entities(entities, "routes"), key=created_order):
        routes[route["id"]] = compile_route(route, services)
    return (
        RuntimeConfig(
            version=version,
            hash=config_hash,
            router=build_router(routes.values()),
            services=types.MappingProxyType(services),
            upstreams=types.MappingProxyType(upstreams),
            server_certificates=server_certificates,
        ),
        routes,
    )


def build_router(
    specs: Iterable[RouteSpec[CompiledService] | None],
    previous: Router[CompiledService] | None = None,
) -> Router[CompiledService]:
    """The router over ``specs`` (in creation order; ``None`` entries skipped);
    ``previous`` lends the precompiled candidates of the specs it shares."""
    try:
        return Router([s for s in specs if s is not None], previous=previous)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


#: The targets of one upstream: ``(target entity, its parsed address)``, in snapshot order.
UpstreamTargets = list[tuple[Mapping[str, Any], Address]]


def add_target(
    grouped: dict[str, UpstreamTargets], keys: dict[str, set[str]], target: Mapping[str, Any]
) -> None:
    """Validate ``target`` and append it to its upstream's list in ``grouped`` (which
    holds a list for every existing upstream); ``keys`` holds each upstream's target
    keys so far, for the duplicate check."""
    label = f"target {target.get('target')!r} ({target['id']})"
    upstream_id = _ref(target, "upstream", label)
    if upstream_id is None:
        raise ConfigError(f"{label}: 'upstream' is required")
    if upstream_id not in grouped:
        raise ConfigError(f"{label}: upstream {upstream_id} does not exist")
    text = _str(target, "target", label)
    assert text is not None
    weight = target.get("weight", 100)
    failover = target.get("failover", False)  # Kong 3.12's field; absent: a primary
    try:
        address = parse_target(
            text, 100 if weight is None else weight, False if failover is None else failover
        )
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    seen = keys.setdefault(upstream_id, set())
    if address.key in seen:
        raise ConfigError(f"{label}: duplicate target {address.key} in upstream {upstream_id}")
    seen.add(address.key)
    grouped[upstream_id].append((target, address))


def _compile_upstreams(
    entities: Mapping[str, Any],
    previous: RuntimeConfig | None,
    clock: Callable[[], float] | None,
    tls: TlsEntities,
) -> dict[str, CompiledUpstream]:
    raw = _entities(entities, "upstreams")
    grouped: dict[str, UpstreamTargets] = {u["id"]: [] for u in raw}
    keys: dict[str, set[str]] = {}
    for target in _entities(entities, "targets"):
        add_target(grouped, keys, target)
    compiled: dict[str, CompiledUpstream] = {}
    names: set[str] = set()
    for upstream in raw:
        label = _label("upstream", upstream)
        name = _str(upstream, "name", label)
        if name in names:
            raise ConfigError(f"{label}: duplicate upstream name {name!r}")
        assert name is not None
        names.add(name)
        upstream_id = upstream["id"]
        old = previous.upstreams.get(upstream_id) if previous is not None else None
        compiled[upstream_id] = compile_upstream(
            upstream, grouped[upstream_id], old, clock, tls=tls
        )
    return compiled


def compile_upstream(
    upstream: Mapping[str, Any],
    targets: UpstreamTargets,
    old: CompiledUpstream | None,
    clock: Callable[[], float] | None = None,
    *,
    tls: TlsEntities | None = None,
) -> CompiledUpstream:
    """Compile one upstream with its (validated) targets; ``old`` is the previous
    version's upstream of the same id, whose balancer and retry budget are reused or
    seeded from (see :func:`compile_config`). ``tls`` holds the config's certificates
    (its ``client_certificate`` and ``https`` probes; none when omitted). Does not
    check name uniqueness."""
    label = _label("upstream", upstream)
    name = _str(upstream, "name", label)
    assert name is not None
    algorithm = _str(upstream, "algorithm", label, required=False) or "round-robin"
    host_header = _str(upstream, "host_header", label, required=False)
    slots = _int(upstream, "slots", label, 10000, 10, 65536)
    slow_start = _number(upstream, "slow_start", label, 0.0, 0.0, 3600.0)
    assert slow_start is not None
    budget_percent = _number(upstream, "retry_budget_percent", label, None, 0.0, 100.0)
    hash_balance_factor = _int(upstream, "hash_balance_factor", label, 0, 0, _FACTOR_MAX)
    if hash_balance_factor and (hash_balance_factor < 100 or algorithm != "consistent-hashing"):
        raise ConfigError(
            f"{label}: 'hash_balance_factor' must be 0 or at least 100, and only with"
            " algorithm 'consistent-hashing'"
        )
    sticky: StickyCookie | None = None
    try:
        hash_spec = compile_hash_spec(upstream)
        if algorithm == STICKY_SESSIONS:
            sticky = StickyCookie(*sticky_cookie_settings(upstream))
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    # The sticky cookie's salt is the upstream's id: every data plane maps a cookie to
    # the same address, and a client cannot compute it (data_plane/balancers/sticky_sessions.py).
    options = BalancerOptions(
        slots=slots,
        slow_start=slow_start,
        hash_balance_factor=hash_balance_factor,
        sticky_salt=str(upstream["id"]) if algorithm == STICKY_SESSIONS else "",
    )
    if clock is not None:
        options = replace(options, clock=clock)
    # Sorted so that every data plane (and every config version) sees the same
    # order whatever order the snapshot or a delta listed the targets in.
    addresses = tuple(sorted((a for _, a in targets), key=lambda a: a.key))
    if (
        old is not None
        and old.algorithm == algorithm
        and old.balancer.options == options
        and _identity(old.targets) == _identity(addresses)
    ):
        balancer = old.balancer
    else:
        try:
            balancer = create_balancer(
                algorithm, addresses, options, previous=old.balancer if old else None
            )
        except ValueError as exc:
            raise ConfigError(f"{label}: {exc}") from None
    try:
        settings = compile_health_settings(upstream.get("healthchecks"))
    except ValueError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    client_certificate_id = _ref(upstream, "client_certificate", label)
    certificates = tls or TlsEntities()
    try:
        if settings.active.type in ("https", "grpcs"):
            probe_tls = certificates.for_probes(
                verify=settings.active.https_verify_certificate,
                client_certificate_id=client_certificate_id,
                alpn=("h2",) if settings.active.type == "grpcs" else (),
            )
            settings = replace(settings, active=replace(settings.active, tls=probe_tls))
        elif client_certificate_id is not None:
            # Loaded now: a bad certificate is refused with the config, not when a
            # service first connects with it.
            certificates.for_service(
                verify=False, depth=None, ca_ids=(), client_certificate_id=client_certificate_id
            )
    except TlsMaterialError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    caps = OverloadCaps(
        max_connections=_int(upstream, "max_connections", label, 0, 0, _MAX_CAP),
        max_pending_requests=_int(upstream, "max_pending_requests", label, 0, 0, _MAX_CAP),
        max_requests=_int(upstream, "max_requests", label, 0, 0, _MAX_CAP),
    )
    overload = OverloadGuard.carried_over(
        caps, str(upstream["id"]), old.overload if old is not None else None
    )
    retry_budget: RetryBudget | None = None
    if budget_percent is not None:
        if old is not None and old.retry_budget is not None and (
            old.retry_budget.percent == budget_percent
        ):
            retry_budget = old.retry_budget  # keep the counts of requests in flight
        else:
            retry_budget = RetryBudget(budget_percent)
    return CompiledUpstream(
        id=upstream["id"],
        name=name,
        algorithm=algorithm,
        host_header=host_header.encode("idna") if host_header else None,
        balancer=balancer,
        targets=addresses,
        hash_spec=hash_spec,
        retry_budget=retry_budget,
        slots=slots,
        slow_start=slow_start,
        health_settings=settings,
        host_name=host_header,
        target_ids=types.MappingProxyType({a.key: str(t["id"]) for t, a in targets}),
        target_entities=tuple(t for t, _ in targets),
        use_srv_name=_bool(upstream, "use_srv_name", label, False),
        client_certificate_id=client_certificate_id,
        sticky=sticky,
        overload=overload,
    )


def _identity(addresses: tuple[Address, ...]) -> tuple[tuple[str, int, bool], ...]:
    return tuple((a.key, a.weight, a.failover) for a in addresses)


class UpstreamNames:
    """Finds the upstream a service ``host`` names: the exact name first, else the one
    name equal ignoring case (host names are case-insensitive). Names the Admin API
    keeps apart only by case (``Shop`` and ``shop``) are matched exactly only, so the
    config still applies instead of being refused as ambiguous."""

    def __init__(self, upstreams: Iterable[CompiledUpstream]) -> None:
        self._exact: dict[str, CompiledUpstream] = {}
        self._folded: dict[str, CompiledUpstream | None] = {}
        for upstream in upstreams:
            self._exact[upstream.name] = upstream
            key = upstream.name.lower()
            self._folded[key] = None if key in self._folded else upstream

    def find(self, host: str) -> CompiledUpstream | None:
        found = self._exact.get(host)
        return found if found is not None else self._folded.get(host.lower())


def _compile_services(
    entities: Mapping[str, Any], upstream_names: UpstreamNames, tls: TlsEntities
) -> dict[str, CompiledService]:
    return {
        service["id"]: compile_service(service, upstream_names, tls=tls)
        for service in _entities(entities, "services")
    }


def compile_service(
    service: Mapping[str, Any],
    upstream_names: UpstreamNames,
    *,
    tls: TlsEntities | None = None,
) -> CompiledService:
    """Compile one service; ``upstream_names`` finds the upstream its ``host`` names,
    ``tls`` holds the config's certificates (none when omitted)."""
    label = _label("service", service)
    protocol = _str(service, "protocol", label, required=False) or "http"
    if protocol not in _DEFAULT_PORTS:
        raise ConfigError(
            f"{label}: protocol {protocol!r} is not supported (http, https, grpc, grpcs)"
        )
    host = _str(service, "host", label)
    assert host is not None
    # Kong accepts port 0; it only matters (as a refused connection) for a plain host.
    port = _int(service, "port", label, _DEFAULT_PORTS[protocol], 0, 65535)
    path = _str(service, "path", label, required=False)
    if path is not None and not path.startswith("/"):
        raise ConfigError(f"{label}: 'path' must start with '/'")
    timeouts = [
        _int(service, key, label, 60000, 1, _MAX_TIMEOUT_MS) / 1000.0
        for key in ("connect_timeout", "write_timeout", "read_timeout")
    ]
    upstream = upstream_names.find(host)
    address: Address | None = None
    if upstream is None:
        # Port 0 is parsed as 1 and then set: connecting to it fails (502), as in Kong.
        text_port = port or 1
        try:
            address = parse_target(
                # The Admin API accepts an IPv6 host bare (::1) or bracketed ([::1]).
                f"{host}:{text_port}" if host.startswith("[") or ":" not in host
                else f"[{host}]:{text_port}"
            )
        except ValueError as exc:
            raise ConfigError(f"{label}: invalid host: {exc}") from None
        if port == 0:
            address = Address(address.host, 0)
    upstream_tls: UpstreamTls | None = None
    if protocol in ("https", "grpcs"):
        try:
            upstream_tls = (tls or TlsEntities()).for_service_entity(
                service,
                upstream.client_certificate_id if upstream is not None else None,
                # grpcs targets speak HTTP/2 only (data_plane/h2_upstream.py)
                alpn=("h2",) if protocol == "grpcs" else (),
            )
        except TlsMaterialError as exc:
            raise ConfigError(f"{label}: {exc}") from None
    return CompiledService(
        id=service["id"],
        name=service.get("name"),
        protocol=protocol,
        host=host,
        port=port,
        path=path,
        retries=_int(service, "retries", label, 5, 0, _MAX_RETRIES),
        connect_timeout=timeouts[0],
        write_timeout=timeouts[1],
        read_timeout=timeouts[2],
        balancer=upstream.balancer if upstream is not None else None,
        address=address,
        host_header=upstream.host_header if upstream is not None else None,
        upstream_id=upstream.id if upstream is not None else None,
        default_port=_DEFAULT_PORTS[protocol],
        enabled=_bool(service, "enabled", label, True),
        upstream=upstream,
        upstream_tls=upstream_tls,
    )


#: Kong's choices for ``https_redirect_status_code``.
_HTTPS_REDIRECT_CODES = frozenset({426, 301, 302, 307, 308})


def compile_route(
    route: Mapping[str, Any], services: Mapping[str, CompiledService]
) -> RouteSpec[CompiledService] | None:
    """Compile one route; ``None`` when it is not served by this HTTP proxy."""
    label = _label("route", route)
    service_id = _ref(route, "service", label)
    service: CompiledService | None = None
    if service_id is not None:
        service = services.get(service_id)
        if service is None:
            raise ConfigError(f"{label}: service {service_id} does not exist")
        if not service.enabled:
            return None  # Kong leaves routes of a disabled service out of the router
    protocols = _str_list(route, "protocols", label) or ("http", "https")
    grpc = "grpc" in protocols or "grpcs" in protocols
    if not grpc and "http" not in protocols and "https" not in protocols:
        return None  # tcp/tls/ws-only routes are not served by the HTTP proxy
    paths = _str_list(route, "paths", label)
    for path in paths:
        if not (path.startswith("/") or path.startswith("~")):
            raise ConfigError(f"{label}: path {path!r} must start with '/' or '~'")
    hosts = tuple(h.lower() for h in _str_list(route, "hosts", label))
    methods = tuple(m.upper() for m in _str_list(route, "methods", label))
    raw_headers = route.get("headers") or {}
    if not isinstance(raw_headers, Mapping):
        raise ConfigError(f"{label}: 'headers' must be an object of name -> list of values")
    headers: list[tuple[str, tuple[str, ...]]] = []
    for name, values in raw_headers.items():
        if isinstance(values, str):
            values = [values]
        if not isinstance(name, str) or not isinstance(values, list) or not values or not all(
            isinstance(v, str) for v in values
        ):
            raise ConfigError(f"{label}: 'headers' must be an object of name -> list of values")
        if name.lower() == "host":
            raise ConfigError(f"{label}: use 'hosts' to match on Host, not 'headers'")
        headers.append((name, tuple(values)))
    snis = tuple(name.lower() for name in _str_list(route, "snis", label))
    if not (paths or hosts or methods or headers or snis):
        raise ConfigError(
            f"{label}: must set at least one of 'paths', 'hosts', 'methods', 'headers', 'snis'"
        )
    redirect = route.get("https_redirect_status_code", 426)
    if redirect is None:
        redirect = 426
    if redirect not in _HTTPS_REDIRECT_CODES or isinstance(redirect, bool):
        raise ConfigError(
            f"{label}: 'https_redirect_status_code' must be one of 426, 301, 302, 307, 308"
        )
    # Any integer: the Admin API bounds none, and a bound only DPs had (int64) made every
    # DP NACK the config (issue 12).
    regex_priority = route.get("regex_priority")
    if regex_priority is None:
        regex_priority = 0
    elif isinstance(regex_priority, bool) or not isinstance(regex_priority, int):
        raise ConfigError(f"{label}: 'regex_priority' must be an integer")
    return RouteSpec(
        id=route["id"],
        name=route.get("name"),
        service=service,
        service_path=service.path if service is not None else None,
        paths=paths,
        hosts=hosts,
        methods=methods,
        headers=tuple(headers),
        strip_path=_bool(route, "strip_path", label, True),
        preserve_host=_bool(route, "preserve_host", label, False),
        regex_priority=regex_priority,
        # A gRPC route's plaintext refusal is gRPC's own (grpcs_only), not a 426.
        https_only=not grpc and "http" not in protocols,
        https_redirect_status_code=redirect,
        snis=snis,
        grpc=grpc,
        grpcs_only=grpc and "grpc" not in protocols,
    )
