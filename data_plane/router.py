"""Route matching, Kong 3.x style, precompiled at config-compile time.

Ordering follows Kong's ``traditional_compatible`` router: every (route, path) pair is
one candidate, and candidates are tried from the most specific down. Specificity is,
in order: how many of ``methods``/``hosts``/``headers``/``paths`` the route sets, hosts
that are all plain (no wildcard), the number of headers, regex paths before prefix
paths, ``regex_priority`` (regex paths only), the length of the prefix path (longest
first), then configuration order. The first candidate whose every condition holds wins.

Matching semantics:

- ``paths``: a plain path is a byte-prefix (``/foo`` matches ``/foo``, ``/foo/x`` and
  ``/foobar``, as in Kong); ``~regex`` is a Python ``re`` bytes pattern matched from the
  start of the path (``re.match``, so implicitly anchored at the beginning like Kong),
  compiled by :mod:`ferry_shared.route_regex`, the very function the control plane validates
  with.
  Matching looks at the path only, never at the query string.
- ``hosts``: case-insensitive; exact, ``*.example.com`` (any label(s) in front) or
  ``example.*`` (any suffix). A host with a port only matches a request Host with that
  port; a host without one matches whatever port the request names.
- ``methods``: exact (upper-case). ``headers``: name → list of values; the request
  header must equal one of them case-insensitively (``~*regex`` values match a regex).
- ``strip_path`` removes the matched prefix (regex: the matched part) and the rest is
  joined to the service ``path`` with Kong's default ``path_handling`` ``v0`` rules
  (``/svc`` + ``/rest`` → ``/svc/rest``, ``/svc`` + ``rest`` → ``/svc/rest``). The
  query string is kept unchanged.

Everything that can be computed ahead (lower-casing, regex compilation, ordering) is
done in :meth:`Router.__init__`; :meth:`Router.match` compiles nothing and allocates
little more than the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ferry_shared.route_regex import RouteRegexError, compile_header_regex, compile_path_regex

S = TypeVar("S")

_SLASH = 0x2F  # ord("/")


@dataclass(frozen=True, slots=True)
class RouteSpec(Generic[S]):
    """A validated route, as the router needs it.

    ``service`` is opaque to the router (the runtime's compiled service, or ``None`` for
    a route without a service); ``service_path`` is that service's ``path`` or ``None``.
    Strings are as configured; the router normalises them.
    """

    id: str
    name: str | None
    service: S | None
    service_path: str | None = None
    paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, tuple[str, ...]], ...] = ()
    strip_path: bool = True
    preserve_host: bool = False
    regex_priority: int = 0
    https_only: bool = False
    #: Kong's ``https_redirect_status_code``: what an ``https_only`` route answers a
    #: plaintext request (426, or a redirect 301/302/307/308 to ``https://``).
    https_redirect_status_code: int = 426
    #: TLS server names the route matches on; a plaintext request ignores them (Kong).
    snis: tuple[str, ...] = ()
    #: The route's ``protocols`` are gRPC (``grpc`` and/or ``grpcs``; Kong does not mix
    #: them with ``http``/``https``): matched like any route, its requests are proxied
    #: by :mod:`data_plane.proxy.grpc_proxy` over HTTP/2 only.
    grpc: bool = False
    #: ``protocols`` is ``["grpcs"]`` alone: a plaintext call is refused (Kong answers
    #: ``grpc-status`` 1 "gRPC request matched gRPCs route").
    grpcs_only: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch(Generic[S]):
    """The result of a match: the route, its service and the upstream request target.

    ``upstream_path`` is the path (plus ``?query`` when the request had one) to put on
    the upstream request line. ``captures`` maps the named groups of a matching ``~``
    regex path that took part in the match to their text (decoded as UTF-8 with
    ``surrogateescape``, so it encodes back to the exact bytes); ``None`` for prefix
    paths and for regexes without named groups.
    """

    route: RouteSpec[S]
    service: S | None
    upstream_path: bytes
    captures: Mapping[str, str] | None = None


class _Candidate(Generic[S]):
    """One (route, path) pair with everything precomputed."""

    __slots__ = (
        "route",
        "source_path",
        "methods",
        "plain_hosts",
        "wildcard_suffixes",
        "wildcard_prefixes",
        "has_hosts",
        "headers",
        "prefix",
        "regex",
        "named_groups",
        "base",
        "base_ends_slash",
        "strip",
        "snis",
    )

    def __init__(self, route: RouteSpec[S], path: str | None) -> None:
        self.route = route
        #: The path of ``route`` this candidate stands for (``None``: it has none).
        self.source_path = path
        self.methods: frozenset[bytes] | None = (
            frozenset(m.upper().encode("ascii") for m in route.methods) if route.methods else None
        )
        plain: set[bytes] = set()
        suffixes: list[bytes] = []
        prefixes: list[bytes] = []
        for host in route.hosts:
            h = host.lower().encode("idna" if not host.isascii() else "ascii")
            if h.startswith(b"*."):
                suffixes.append(h[1:])  # keep the dot: "*.a.com" -> ".a.com"
            elif h.endswith(b".*"):
                prefixes.append(h[:-1])  # "a.*" -> "a."
            else:
                plain.add(h)
        self.plain_hosts = frozenset(plain)
        self.wildcard_suffixes = tuple(suffixes)
        self.wildcard_prefixes = tuple(prefixes)
        self.has_hosts = bool(route.hosts)
        headers: list[tuple[bytes, frozenset[bytes], tuple[re.Pattern[bytes], ...]]] = []
        for name, values in route.headers:
            plain_values = frozenset(v.lower().encode() for v in values if not v.startswith("~*"))
            try:
                regexes = tuple(compile_header_regex(v[2:]) for v in values if v.startswith("~*"))
            except RouteRegexError as exc:
                raise ValueError(
                    f"route {route.name or route.id}: invalid regex in header {name!r}: {exc}"
                ) from None
            headers.append((name.lower().encode("ascii"), plain_values, regexes))
        self.headers = tuple(headers)
        self.prefix: bytes | None = None
        self.regex: re.Pattern[bytes] | None = None
        if path is not None:
            if path.startswith("~"):
                self.regex = compile_path_regex(path[1:])
            else:
                self.prefix = path.encode()
        self.named_groups = bool(self.regex is not None and self.regex.groupindex)
        self.base = (route.service_path or "/").encode()
        self.base_ends_slash = self.base.endswith(b"/")
        self.strip = route.strip_path
        self.snis: frozenset[bytes] | None = (
            frozenset(name.lower().encode("idna" if not name.isascii() else "ascii") for name in route.snis)
            if route.snis
            else None
        )

    def sort_key(self) -> tuple[int, ...]:
        route = self.route
        match_weight = sum(
            1
            for present in (route.methods, route.hosts, route.headers, self.prefix or self.regex, route.snis)
            if present
        )
        plain_host_only = int(bool(route.hosts) and not self.wildcard_suffixes and not self.wildcard_prefixes)
        is_regex = int(self.regex is not None)
        return (
            match_weight,
            plain_host_only,
            len(route.headers),
            is_regex,
            route.regex_priority if is_regex else 0,
            len(self.prefix) if self.prefix is not None else 0,
        )

    def upstream_path(self, path: bytes, matched_end: int, query: bytes) -> bytes:
        """Kong's ``path_handling = v0`` join of service path and request path."""
        base = self.base
        if self.strip:
            postfix = path[matched_end:]
            if self.base_ends_slash:
                if not postfix:
                    if base == b"/":
                        out = b"/"
                    elif path[-1:] == b"/":
                        out = base
                    else:
                        out = base[:-1]
                elif postfix[0] == _SLASH:
                    out = base[:-1] + postfix
                else:
                    out = base + postfix
            else:
                if not postfix:
                    out = base + b"/" if len(path) > 1 and path[-1] == _SLASH else base
                elif postfix[0] == _SLASH:
                    out = base + postfix
                else:
                    out = base + b"/" + postfix
        elif self.base_ends_slash:
            out = base + path[1:] if path[:1] == b"/" else base + path
        elif path == b"/":
            out = base
        else:
            out = base + path
        return out + query if query else out


#: Most results :meth:`Router.match` remembers (Kong's router keeps an LRU of 5000).
MATCH_CACHE_SIZE = 4096


class Router(Generic[S]):
    """An immutable, precompiled set of routes. Safe to share within one thread.

    Raises ``ValueError`` from the constructor for a route it cannot compile (bad regex).
    ``match`` remembers its results per (method, Host, request target, and TLS server
    name when a route matches on one) when no route
    matches on headers, as Kong's router cache does: a repeated request costs one dict
    look-up. The cache is emptied when it reaches :data:`MATCH_CACHE_SIZE` entries, which
    bounds its memory whatever the traffic; it is the only state that changes, and the
    results are a pure function of the routes, so it never needs invalidating.
    """

    __slots__ = ("_candidates", "uses_headers", "has_grpc", "_uses_hosts", "_uses_snis", "_cache")

    def __init__(self, routes: Sequence[RouteSpec[S]], previous: Router[S] | None = None) -> None:
        """``previous`` (a router of an earlier config) lends the precompiled
        candidates of every route spec it shares with ``routes`` (the same object),
        so that a change recompiles only the routes it touched."""
        reusable: dict[int, list[_Candidate[S]]] = {}
        if previous is not None:
            for old in previous._candidates:
                reusable.setdefault(id(old.route), []).append(old)
        candidates: list[tuple[tuple[int, ...], int, _Candidate[S]]] = []
        order = 0
        for route in routes:
            lent = reusable.get(id(route))
            if lent is not None and lent[0].route is route:
                # One candidate per path, in path order, as built below.
                by_path = {c.source_path: c for c in lent}
            else:
                by_path = {}
            for path in route.paths or (None,):
                candidate = by_path.get(path)
                if candidate is None:
                    try:
                        candidate = _Candidate(route, path)
                    except RouteRegexError as exc:
                        raise ValueError(
                            f"route {route.name or route.id}: invalid regex path {path!r}: {exc}"
                        ) from None
                candidates.append((candidate.sort_key(), order, candidate))
                order += 1
        # Most specific first; configuration order breaks ties (stable sort).
        candidates.sort(key=lambda item: (tuple(-k for k in item[0]), item[1]))
        self._candidates: tuple[_Candidate[S], ...] = tuple(c for _, _, c in candidates)
        #: Whether any route matches on headers (so callers know to pass them).
        self.uses_headers = any(c.headers for c in self._candidates)
        #: Whether any route is a gRPC route (HTTP/2 streams are then routed before
        #: they are handed to the HTTP/1.1 exchange; see data_plane/proxy/http2.py).
        self.has_grpc = any(c.route.grpc for c in self._candidates)
        self._uses_hosts = any(c.has_hosts for c in self._candidates)
        self._uses_snis = any(c.snis is not None for c in self._candidates)
        self._cache: dict[tuple[bytes, bytes | None, bytes, bytes | None], RouteMatch[S] | None] = {}

    def __len__(self) -> int:
        return len(self._candidates)

    def match(
        self,
        method: bytes,
        host: bytes | None,
        target: bytes,
        headers: Mapping[bytes, bytes | list[bytes]] | None = None,
        sni: bytes | None = None,
    ) -> RouteMatch[S] | None:
        """Find the route for a request, or ``None``.

        ``sni`` is the TLS server name the client sent (lower case; ``b""`` for a TLS
        connection without one), ``None`` for a plaintext request: a route's ``snis``
        must hold it on TLS and are ignored on plaintext, as Kong's router does
        (``net.protocol != "https" || tls.sni == ...``).
        ``method`` is upper-case; ``host`` the raw Host header (any case, optional port);
        ``target`` the request target (path plus optional ``?query``); ``headers`` maps
        lower-case header names to a value (a list of values for a repeated header;
        a route's header condition holds when any of them matches) and is only consulted when a route has
        ``headers`` (see :attr:`uses_headers`).
        """
        if self.uses_headers:
            return self._match(method, host, target, headers, sni)
        key = (method, host, target, sni if self._uses_snis else None)
        cache = self._cache
        try:
            return cache[key]
        except KeyError:
            pass
        found = self._match(method, host, target, None, sni)
        if len(cache) >= MATCH_CACHE_SIZE:
            cache.clear()
        cache[key] = found
        return found

    def _match(
        self,
        method: bytes,
        host: bytes | None,
        target: bytes,
        headers: Mapping[bytes, bytes | list[bytes]] | None,
        sni: bytes | None,
    ) -> RouteMatch[S] | None:
        q = target.find(b"?")
        if q >= 0:
            path = target[:q]
            query = target[q:]
        else:
            path = target
            query = b""
        host_full = host_bare = b""
        if self._uses_hosts and host:
            host_full = host.lower()
            # Strip a port, minding IPv6 literals ("[::1]:8000").
            colon = host_full.rfind(b":")
            host_bare = host_full[:colon] if colon > host_full.rfind(b"]") else host_full
        for c in self._candidates:
            if c.methods is not None and method not in c.methods:
                continue
            if c.has_hosts and not _host_matches(c, host_full, host_bare):
                continue
            if c.headers and not _headers_match(c, headers):
                continue
            if c.snis is not None and sni is not None and sni not in c.snis:
                continue
            if c.prefix is not None:
                if not path.startswith(c.prefix):
                    continue
                end = len(c.prefix)
            elif c.regex is not None:
                m = c.regex.match(path)
                if m is None:
                    continue
                end = m.end()
                if c.named_groups:
                    captures = {
                        name: value.decode("utf-8", "surrogateescape")
                        for name, value in m.groupdict().items()
                        if value is not None
                    }
                    return RouteMatch(
                        c.route, c.route.service, c.upstream_path(path, end, query), captures
                    )
            else:
                end = 0
            return RouteMatch(c.route, c.route.service, c.upstream_path(path, end, query))
        return None


def _host_matches(c: _Candidate[S], host_full: bytes, host_bare: bytes) -> bool:
    if not host_full:
        return False
    if host_full in c.plain_hosts or host_bare in c.plain_hosts:
        return True
    for suffix in c.wildcard_suffixes:
        # "*.a.com" matches any port; "*.a.com:8000" only that port (the full Host).
        if (host_bare.endswith(suffix) and len(host_bare) > len(suffix)) or (
            host_full.endswith(suffix) and len(host_full) > len(suffix)
        ):
            return True
    for prefix in c.wildcard_prefixes:
        if host_bare.startswith(prefix) and len(host_bare) > len(prefix):
            return True
    return False


def _headers_match(c: _Candidate[S], headers: Mapping[bytes, bytes | list[bytes]] | None) -> bool:
    if headers is None:
        return False
    for name, values, regexes in c.headers:
        value = headers.get(name)
        if value is None:
            return False
        if isinstance(value, bytes):
            if value.lower() in values or any(r.search(value) for r in regexes):
                continue
            return False
        # A repeated header matches when any of its occurrences does, as in Kong.
        if any(v.lower() in values or any(r.search(v) for r in regexes) for v in value):
            continue
        return False
    return True
