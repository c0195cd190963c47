"""Kong's ``upstreams`` entity: a virtual hostname balanced over targets, and its health checks."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, PlainSerializer

from control_plane.schemas.typedefs import (
    INT32_MAX,
    Counter,
    EntitySchema,
    ForeignKey,
    HeaderName,
    HeaderValue,
    HttpStatus,
    PathStr,
    Record,
    Rule,
    RuleError,
    Seconds,
    Sni,
    Str,
    Tags,
    Timestamp,
    UUIDStr,
    between,
    check_path,
    compact_number,
    has_value,
    non_empty,
    parse_host,
)
from ferry_shared.cookie_path import cookie_path_problem
from ferry_shared.target_health import (
    ACTIVE_HEALTHY_STATUSES,
    ACTIVE_UNHEALTHY_STATUSES,
    PASSIVE_HEALTHY_STATUSES,
    PASSIVE_UNHEALTHY_STATUSES,
)

#: ``hash_on`` / ``hash_fallback`` values.
HashOn = Literal["none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"]
HASH_ON_VALUES: tuple[str, ...] = typing.get_args(HashOn)


def _check_upstream_name(value: str) -> str:
    non_empty(value)
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


def _check_host_with_optional_port(value: str) -> str:
    non_empty(value)
    parse_host(value)
    return value


def _check_cookie_path(value: str) -> str:
    """``hash_on_cookie_path``: Kong's ``typedefs.path`` that is also a cookie ``Path``.

    Data planes write it into ``Set-Cookie``; they refuse a config whose path could end
    the attribute (``;``), with the function used here, so it is refused first here.
    """
    check_path(value)
    problem = cookie_path_problem(value)
    if problem is not None:
        raise RuleError(f"invalid cookie path: '{value}' ({problem})")
    return value


#: An RFC 9110 token: printable ASCII but separators (Kong's ``validate_http_token``).
_HTTP_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _check_cookie_name(value: str) -> str:
    """Kong 3.x's cookie name rule: an HTTP token (as the data planes check it)."""
    non_empty(value)
    if not _HTTP_TOKEN_RE.fullmatch(value):
        raise RuleError(
            "contains one or more invalid characters. ASCII control characters (0-31;127), "
            'space, tab and the characters ()<>@,;:\\"/?={}[] are not allowed.'
        )
    return value


def _check_hash_balance_factor(value: int) -> int:
    """Envoy's ``hash_balance_factor``: 0 (off) or a percentage of at least 100."""
    if not 0 <= value <= INT32_MAX or 0 < value < 100:
        raise RuleError(f"must be 0 (off) or between 100 and {INT32_MAX}")
    return value


CookiePath = Annotated[str, Rule(_check_cookie_path)]
CookieName = Annotated[str, Rule(_check_cookie_name)]


# ---------------------------------------------------------------- health checks


class ActiveHealthy(Record):
    """Active probing of healthy targets; ``interval`` 0 disables it."""

    interval: Seconds = 0
    http_statuses: list[HttpStatus] = Field(default_factory=lambda: list(ACTIVE_HEALTHY_STATUSES))
    successes: Counter = 0


class ActiveUnhealthy(Record):
    """Active probing of unhealthy targets; a counter of 0 is inert."""

    interval: Seconds = 0
    http_statuses: list[HttpStatus] = Field(
        default_factory=lambda: list(ACTIVE_UNHEALTHY_STATUSES)
    )
    tcp_failures: Counter = 0
    timeouts: Counter = 0
    http_failures: Counter = 0
    #: Ferry's: a probe answer in neither ``http_statuses`` list counts as an HTTP
    #: failure (``false``, Kong's behaviour: it counts as nothing, so a target answering
    #: e.g. 426 keeps whatever health it had, Kong #14861).
    other_statuses: bool = False


class ActiveHealthcheck(Record):
    """``healthchecks.active``: probes sent by the balancer."""

    type: Literal["tcp", "http", "https", "grpc", "grpcs"] = "http"
    timeout: Seconds = 1
    concurrency: Annotated[int, between(1, INT32_MAX)] = 10
    http_path: PathStr = "/"
    https_sni: Sni | None = None
    https_verify_certificate: bool = True
    headers: dict[HeaderName, list[HeaderValue]] | None = None
    # Ferry's field (Kong has none: its grpc/grpcs probes are HTTP/1.0 GETs): the
    # ``service`` a grpc/grpcs probe's grpc.health.v1 Check asks about; null: "" (the
    # server's overall health). See docs/http2-grpc.md.
    grpc_service_name: Str | None = None
    healthy: ActiveHealthy = Field(default_factory=ActiveHealthy)
    unhealthy: ActiveUnhealthy = Field(default_factory=ActiveUnhealthy)


class PassiveHealthy(Record):
    """Proxied responses that count as successes."""

    http_statuses: list[HttpStatus] = Field(
        default_factory=lambda: list(PASSIVE_HEALTHY_STATUSES)
    )
    successes: Counter = 0


class PassiveUnhealthy(Record):
    """Proxied outcomes that count as failures (the circuit breaker)."""

    http_statuses: list[HttpStatus] = Field(default_factory=lambda: list(PASSIVE_UNHEALTHY_STATUSES))
    tcp_failures: Counter = 0
    timeouts: Counter = 0
    http_failures: Counter = 0


def _positive_seconds(value: float) -> float:
    if not value > 0:  # also refuses NaN
        raise RuleError("value must be greater than 0")
    return value


class OutlierSuccessRate(Record):
    """Envoy's success-rate detector: eject a target whose success rate is below
    mean - stdev_factor/1000 × stdev of those with >= request_volume requests, when at
    least minimum_hosts have."""

    minimum_hosts: Annotated[int, between(1, INT32_MAX)] = 5
    request_volume: Annotated[int, between(1, INT32_MAX)] = 100
    stdev_factor: Annotated[int, between(1, INT32_MAX)] = 1900


class OutlierFailurePercentage(Record):
    """Envoy's failure-percentage detector: eject a target whose failure % is >=
    threshold, among those with >= request_volume requests, when at least
    minimum_hosts have."""

    threshold: Annotated[int, between(0, 100)] = 85
    minimum_hosts: Annotated[int, between(1, INT32_MAX)] = 5
    request_volume: Annotated[int, between(1, INT32_MAX)] = 50


class OutlierDetection(Record):
    """Ferry's ``healthchecks.passive.outlier_detection`` (Envoy's): evaluated by each
    data plane every ``interval`` seconds over its own traffic. An omitted detector
    gets its defaults; ``null`` turns it off. See docs/health-checks.md."""

    interval: Annotated[Seconds, Rule(_positive_seconds)] = 10
    success_rate: OutlierSuccessRate | None = Field(default_factory=OutlierSuccessRate)
    failure_percentage: OutlierFailurePercentage | None = Field(
        default_factory=OutlierFailurePercentage
    )


class PassiveHealthcheck(Record):
    """``healthchecks.passive``: health learned from proxied traffic."""

    type: Literal["tcp", "http", "https", "grpc", "grpcs"] = "http"
    healthy: PassiveHealthy = Field(default_factory=PassiveHealthy)
    unhealthy: PassiveUnhealthy = Field(default_factory=PassiveUnhealthy)
    # Ferry extensions (Envoy's outlier detection; see docs/health-checks.md): a target
    # ejected by passive checks is let through again (half-open) after this many
    # seconds, doubled on each consecutive ejection up to max_ejection_time; 0 keeps it
    # out until an active check or an operator brings it back (Kong's behaviour).
    base_ejection_time: Seconds = 30
    max_ejection_time: Seconds = 300
    # Ferry's (Envoy's outlier detection); null: off, Kong's behaviour.
    outlier_detection: OutlierDetection | None = None


class Healthchecks(Record):
    """An upstream's ``healthchecks`` record."""

    active: ActiveHealthcheck = Field(default_factory=ActiveHealthcheck)
    passive: PassiveHealthcheck = Field(default_factory=PassiveHealthcheck)
    threshold: Annotated[
        float, between(0, 100), PlainSerializer(compact_number, return_type=int | float)
    ] = 0
    # Ferry's: passive and outlier ejections never take more than this % of the
    # upstream's weight out (100: uncapped, Kong's behaviour; Envoy's default is 10).
    max_ejection_percent: Annotated[
        float, between(0, 100), PlainSerializer(compact_number, return_type=int | float)
    ] = 100
    # Ferry's (Envoy's panic mode): below this % of healthy weight (of the tier
    # serving: primaries, or failover targets once no primary is usable) the balancer
    # ignores health. 0: off (Kong's behaviour). Kong's threshold is checked first.
    panic_threshold: Annotated[
        float, between(0, 100), PlainSerializer(compact_number, return_type=int | float)
    ] = 0


class Upstream(Record):
    """Kong's ``upstreams`` entity: a virtual hostname balanced over targets."""

    id: UUIDStr
    created_at: Timestamp
    updated_at: Timestamp
    name: Annotated[str, Rule(_check_upstream_name)]
    algorithm: Literal[
        "round-robin", "consistent-hashing", "least-connections", "latency", "sticky-sessions"
    ] = "round-robin"
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
    # Kong 3.11's sticky sessions: the cookie naming the target (required with
    # ``algorithm: sticky-sessions``, see _upstream_checks) and its Path.
    sticky_sessions_cookie: CookieName | None = None
    sticky_sessions_cookie_path: CookiePath = "/"
    healthchecks: Healthchecks = Field(default_factory=Healthchecks)
    tags: Tags = None
    host_header: Annotated[str, Rule(_check_host_with_optional_port)] | None = None
    # The certificate presented to targets over TLS (https services, https probes).
    client_certificate: ForeignKey | None = None
    use_srv_name: bool = False
    # Ferry extensions (Envoy's ideas, opt-in; see docs/load-balancing.md):
    # seconds over which a new or recovered target ramps its weight from 10% to 100%.
    slow_start: Annotated[
        float, between(0, 3600), PlainSerializer(compact_number, return_type=int | float)
    ] = 0
    # retries allowed as a percentage of the upstream's active requests (null: no budget).
    retry_budget_percent: Annotated[
        float, between(0, 100), PlainSerializer(compact_number, return_type=int | float)
    ] | None = None
    # consistent-hashing's bounded load (Envoy's hash_balance_factor): no target gets
    # more than factor/100 x the average in-flight load; 0 = off.
    hash_balance_factor: Annotated[
        int,
        Rule(_check_hash_balance_factor, (("minimum", 0), ("maximum", INT32_MAX))),
    ] = 0
    # Overload caps per target (Envoy's circuit breakers, per address; 0 = unlimited):
    # open connections, tries waiting for one, tries in flight. Past a cap: 503 at once.
    max_connections: Annotated[int, between(0, INT32_MAX - 1)] = 0
    max_pending_requests: Annotated[int, between(0, INT32_MAX - 1)] = 0
    max_requests: Annotated[int, between(0, INT32_MAX - 1)] = 0


_CONDITIONAL = "failed conditional validation given value of field '{}'"


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
        values = [repr(entity.get(name)) for name in names if has_value(entity.get(name))]
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
    # Kong 3.11: a sticky-sessions upstream names its cookie and hashes on nothing.
    conditional("algorithm", "sticky-sessions", "sticky_sessions_cookie")
    conditional("algorithm", "sticky-sessions", "hash_on", one_of=["none"])
    # Ferry's: the bounded load only means something to consistent hashing; refused
    # elsewhere rather than silently ignored.
    factor = entity.get("hash_balance_factor")
    if (
        "hash_balance_factor" not in fields
        and "algorithm" not in fields
        and isinstance(factor, int)
        and factor != 0
        and entity.get("algorithm") != "consistent-hashing"
    ):
        fields["hash_balance_factor"] = "only allowed with algorithm 'consistent-hashing'"
        messages.append(_CONDITIONAL.format("algorithm"))
    return messages


def _hash_on_implies_algorithm(body: dict[str, Any]) -> dict[str, Any]:
    hash_on = body.get("hash_on")
    if body.get("algorithm") is not None or not isinstance(hash_on, str) or hash_on in ("", "none"):
        return body
    return {**body, "algorithm": "consistent-hashing"}


SCHEMA = EntitySchema(
    "upstreams", Upstream, checks=_upstream_checks, shorthands=_hash_on_implies_algorithm
)
