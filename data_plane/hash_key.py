"""The consistent-hashing key of a request: Kong's ``hash_on`` / ``hash_fallback``.

:func:`compile_hash_spec` turns an upstream's hash settings into a :class:`HashSpec`
once, when a config is applied; per request the proxy fills a :class:`HashInputs` and
calls :meth:`HashSpec.key_for`, which returns the key to put in
``BalancerHandle.hash_key`` and, when a cookie had to be generated, the ``Set-Cookie``
value the proxy must add to the response.

Sources (Kong's ``get_value_to_hash``), first ``hash_on`` then, if it yields nothing,
``hash_fallback``; nothing from either → the key ``b""`` (Kong hashes ``""``):

- ``none``: no value. With ``hash_on: none`` every request hashes ``""`` and so goes
  to one target (Kong's behaviour); :func:`compile_hash_spec` returns ``None`` then.
- ``consumer``: Ferry has no consumers yet, so never a value (the fallback is used).
- ``ip``: the client's IP address (the TCP peer, Kong's ``remote_addr``).
- ``header``: ``hash_on_header`` / ``hash_fallback_header``; a repeated header is
  one value, its occurrences joined by ``", "`` (nginx ≥ 1.23, which Kong uses).
- ``cookie``: ``hash_on_cookie`` (for both sides). When the cookie is missing a UUID4
  is generated, used as the key and returned as ``name=uuid; Path=<hash_on_cookie_path>;
  HttpOnly`` for the response (Kong also appends a malformed ``Same-Site=Lax``, which
  browsers ignore; Ferry leaves it out). A cookie source therefore always yields.
- ``path``: the request path without the query string, normalised as nginx's
  ``$uri`` that Kong hashes: percent-decoded (``%2F`` and ``%2e`` included, so they
  take part in the next two steps), runs of ``/`` merged into one, and ``.`` and
  ``..`` segments resolved (``..`` never climbs above the root, where nginx would
  answer 400), a trailing ``/`` kept. ``/root/../%2e/root///././%2F.subdir/../
  .subdir/./%28%29`` hashes as ``/root/.subdir/()`` (Kong's spec). A malformed
  ``%`` escape stays as it is.
- ``query_arg``: ``hash_on_query_arg`` / ``hash_fallback_query_arg``, percent- and
  ``+``-decoded; several occurrences are sorted and joined by ``,``; an argument
  without ``=`` counts as ``true`` (Kong's boolean).
- ``uri_capture``: ``hash_on_uri_capture`` / ``hash_fallback_uri_capture``, a named
  group of the matched ``~`` regex route path (a group that did not take part in the
  match has no value).

A present but empty value (``X-Key:``, ``?k=``, ``k=`` cookie) is a value, as in Kong
(an empty Lua string is truthy): it does not fall back.

Concurrency: a :class:`HashSpec` is immutable and shared by all requests; ``key_for``
allocates only the key (and, for a generated cookie, its header value).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from ferry_shared.cookie_path import cookie_path_problem

__all__ = [
    "HASH_ON_VALUES",
    "STICKY_SESSIONS",
    "HashInputs",
    "HashSpec",
    "compile_hash_spec",
    "normalise_path",
]

#: Kong's ``hash_on`` / ``hash_fallback`` values.
HASH_ON_VALUES: frozenset[str] = frozenset(
    {"none", "consumer", "ip", "header", "cookie", "path", "query_arg", "uri_capture"}
)

_EMPTY_HEADERS: Mapping[bytes, bytes] = {}

#: The algorithm whose key is its sticky cookie (see :func:`sticky_cookie_settings`).
STICKY_SESSIONS = "sticky-sessions"


class HashInputs:
    """What the proxy knows about a request, for :meth:`HashSpec.key_for`.

    ``client_ip``: the peer address (no port). ``path``: the request path without the
    query. ``query``: the query string, without (or with) the leading ``?``. ``headers``:
    lower-case names to values, a repeated header's values joined by ``", "``.
    ``cookie_header``: the ``Cookie`` header (several joined by ``"; "``), or ``None`` to
    read ``headers[b"cookie"]``. ``captures``: named groups of the matched regex route
    path, ``None`` for a prefix route. Owned by one request; only read here.
    """

    __slots__ = ("captures", "client_ip", "cookie_header", "headers", "path", "query")

    def __init__(
        self,
        client_ip: str = "",
        path: bytes = b"/",
        query: bytes = b"",
        headers: Mapping[bytes, bytes] = _EMPTY_HEADERS,
        cookie_header: bytes | None = None,
        captures: Mapping[str, str] | None = None,
    ) -> None:
        self.client_ip = client_ip
        self.path = path
        self.query = query
        self.headers = headers
        self.cookie_header = cookie_header
        self.captures = captures


_Extractor = Callable[[HashInputs], bytes | None]


def _none(inputs: HashInputs) -> bytes | None:
    return None


def _ip(inputs: HashInputs) -> bytes | None:
    return inputs.client_ip.encode("ascii", "surrogateescape") if inputs.client_ip else None


def normalise_path(path: bytes) -> bytes:
    """nginx's ``$uri`` of a request path (no query): decoded, slashes merged, dot
    segments resolved. A path that needs none of it is returned as is."""
    if b"%" not in path and b"//" not in path and b"/." not in path:
        return path
    if b"%" in path:
        path = unquote_to_bytes(path)
    if not path.startswith(b"/"):
        return path
    out: list[bytes] = []
    segments = path.split(b"/")[1:]
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == b"..":
            if out:
                out.pop()
            if i == last:
                out.append(b"")  # "/a/.." is "/", a directory
        elif segment == b"." or segment == b"":
            if i == last:
                out.append(b"")  # "/a/." and "/a/" keep their trailing slash
        else:
            out.append(segment)
    return b"/" + b"/".join(out)


def _path(inputs: HashInputs) -> bytes | None:
    path = inputs.path
    q = path.find(b"?")
    return normalise_path(path[:q] if q >= 0 else path)


def _header(name: bytes) -> _Extractor:
    def extract(inputs: HashInputs) -> bytes | None:
        return inputs.headers.get(name)

    return extract


def _cookie(name: bytes) -> _Extractor:
    # nginx's $cookie_NAME: the first cookie of that name, name compared ignoring case.
    def extract(inputs: HashInputs) -> bytes | None:
        header = inputs.cookie_header
        if header is None:
            header = inputs.headers.get(b"cookie")
            if header is None:
                return None
        if name not in header.lower():
            return None  # the common miss costs one scan, no split
        for part in header.replace(b",", b";").split(b";"):
            key, eq, value = part.partition(b"=")
            if eq and key.strip().lower() == name:
                return value.strip()
        return None

    return extract


def _decode_query_part(raw: bytes) -> bytes:
    if b"+" in raw:
        raw = raw.replace(b"+", b" ")
    return unquote_to_bytes(raw) if b"%" in raw else raw


def _query_arg(name: bytes) -> _Extractor:
    def extract(inputs: HashInputs) -> bytes | None:
        query = inputs.query
        if query[:1] == b"?":
            query = query[1:]
        if not query:
            return None
        values: list[bytes] | None = None
        for part in query.split(b"&"):
            raw_key, eq, raw_value = part.partition(b"=")
            if raw_key != name and _decode_query_part(raw_key) != name:
                continue
            value = _decode_query_part(raw_value) if eq else b"true"
            if values is None:
                values = [value]
            else:
                values.append(value)
        if values is None:
            return None
        if len(values) == 1:
            return values[0]
        values.sort()
        return b",".join(values)

    return extract


def _uri_capture(name: str) -> _Extractor:
    def extract(inputs: HashInputs) -> bytes | None:
        captures = inputs.captures
        if not captures:
            return None
        value = captures.get(name)
        return None if value is None else value.encode("utf-8", "surrogateescape")

    return extract


class HashSpec:
    """One upstream's compiled hash settings. Immutable; shared by all requests.

    ``needs`` names the :class:`HashInputs` fields ``key_for`` reads, so the proxy can
    skip filling (e.g. joining headers) what is not needed.
    """

    __slots__ = (
        "_cookie_header_prefix",
        "_cookie_path",
        "_fallback",
        "_fallback_cookie",
        "_primary",
        "_primary_cookie",
        "fallback",
        "hash_on",
        "needs",
    )

    def __init__(
        self,
        hash_on: str,
        primary: _Extractor,
        fallback_mode: str,
        fallback: _Extractor | None,
        cookie_name: str | None,
        cookie_path: str,
        needs: frozenset[str],
    ) -> None:
        self.hash_on = hash_on
        self.fallback = fallback_mode
        self.needs = needs
        self._primary = primary
        self._fallback = fallback
        self._primary_cookie = hash_on == "cookie"
        self._fallback_cookie = fallback_mode == "cookie"
        self._cookie_header_prefix = (
            cookie_name.encode("ascii") + b"=" if cookie_name is not None else b""
        )
        self._cookie_path = cookie_path.encode("ascii") if cookie_name is not None else b"/"

    def key_for(self, inputs: HashInputs) -> tuple[bytes, bytes | None]:
        """The hash key for a request, and a ``Set-Cookie`` value or ``None``.

        The ``Set-Cookie`` value is set only when a cookie source found no cookie and
        generated one; the proxy adds it to the target's response (the proxy's own
        502/503/504 answers do not carry it: the client tries again without a cookie).
        """
        value = self._primary(inputs)
        if value is not None:
            return value, None
        if self._primary_cookie:
            return self._generate_cookie()
        fallback = self._fallback
        if fallback is not None:
            value = fallback(inputs)
            if value is not None:
                return value, None
            if self._fallback_cookie:
                return self._generate_cookie()
        return b"", None

    def _generate_cookie(self) -> tuple[bytes, bytes]:
        value = str(uuid.uuid4()).encode("ascii")
        return value, self._cookie_header_prefix + value + b"; Path=" + self._cookie_path + b"; HttpOnly"

    def __repr__(self) -> str:
        return f"HashSpec(hash_on={self.hash_on!r}, fallback={self.fallback!r})"


def _companion(upstream: Mapping[str, Any], field: str, mode: str) -> str:
    value = upstream.get(field)
    if not isinstance(value, str) or not value:
        raise ValueError(f"'{field}' is required when hashing on {mode}")
    return value


def _is_token(text: str) -> bool:
    return text.isascii() and all(c.isalnum() or c in "!#$%&'*+-.^_`|~" for c in text)


def _source(
    upstream: Mapping[str, Any], mode: str, side: str
) -> tuple[_Extractor, frozenset[str]]:
    """The extractor for ``mode`` on the ``on`` or ``fallback`` side."""
    if mode in ("none", "consumer"):
        return _none, frozenset()
    if mode == "ip":
        return _ip, frozenset({"client_ip"})
    if mode == "path":
        return _path, frozenset({"path"})
    if mode == "header":
        name = _companion(upstream, f"hash_{side}_header", "header")
        if not _is_token(name):
            raise ValueError(f"'hash_{side}_header' is not a valid header name: {name!r}")
        return _header(name.lower().encode("ascii")), frozenset({"headers"})
    if mode == "cookie":
        name = _companion(upstream, "hash_on_cookie", "cookie")
        if not _is_token(name) or "=" in name:
            raise ValueError(f"'hash_on_cookie' is not a valid cookie name: {name!r}")
        return _cookie(name.lower().encode("ascii")), frozenset({"cookie_header", "headers"})
    if mode == "query_arg":
        name = _companion(upstream, f"hash_{side}_query_arg", "query_arg")
        return _query_arg(name.encode("utf-8")), frozenset({"query"})
    if mode == "uri_capture":
        name = _companion(upstream, f"hash_{side}_uri_capture", "uri_capture")
        return _uri_capture(name), frozenset({"captures"})
    raise ValueError(f"unknown hash mode {mode!r}")


def compile_hash_spec(upstream: Mapping[str, Any]) -> HashSpec | None:
    """Compile an upstream's ``hash_on``/``hash_fallback`` settings.

    Returns ``None`` when there is nothing to compute per request: the upstream's
    ``algorithm`` is not ``consistent-hashing`` (Kong computes the value for any
    algorithm but only consistent hashing uses it; Ferry also skips generating a cookie
    there), or ``hash_on`` is ``none`` (every request hashes ``""``).

    Raises ``ValueError`` for settings Kong's schema refuses (unknown mode, missing
    companion field, a fallback where Kong forbids one, identical primary and fallback
    sources), which a control plane should never send.
    """
    hash_on = upstream.get("hash_on") or "none"
    fallback = upstream.get("hash_fallback") or "none"
    for field, mode in (("hash_on", hash_on), ("hash_fallback", fallback)):
        if mode not in HASH_ON_VALUES:
            raise ValueError(f"'{field}' must be one of {sorted(HASH_ON_VALUES)}, got {mode!r}")
    if hash_on in ("none", "cookie") and fallback != "none":
        raise ValueError(f"'hash_fallback' must be 'none' when 'hash_on' is {hash_on!r}")
    if fallback == hash_on and hash_on in ("consumer", "ip", "path"):
        raise ValueError(f"'hash_fallback' must differ from 'hash_on' ({hash_on!r})")
    for on_field, fallback_field in (
        ("hash_on_header", "hash_fallback_header"),
        ("hash_on_query_arg", "hash_fallback_query_arg"),
        ("hash_on_uri_capture", "hash_fallback_uri_capture"),
    ):
        value = upstream.get(on_field)
        if value and value == upstream.get(fallback_field) and fallback == hash_on:
            raise ValueError(f"'{on_field}' and '{fallback_field}' must differ")
    cookie_path = upstream.get("hash_on_cookie_path") or "/"
    # The control plane refuses the same paths with the same function.
    problem = cookie_path_problem(cookie_path)
    if problem is not None:
        raise ValueError(f"'hash_on_cookie_path' {cookie_path!r}: {problem}")
    assert isinstance(cookie_path, str)
    # Companions are checked even for an algorithm that does not hash, as Kong's
    # schema does.
    primary, needs = _source(upstream, hash_on, "on")
    fallback_extract: _Extractor | None = None
    if fallback != "none":
        fallback_extract, fallback_needs = _source(upstream, fallback, "fallback")
        needs |= fallback_needs
    algorithm = upstream.get("algorithm", "round-robin")
    if algorithm == STICKY_SESSIONS:
        if hash_on != "none":
            raise ValueError(f"'hash_on' must be 'none' when 'algorithm' is {STICKY_SESSIONS!r}")
        name, _ = sticky_cookie_settings(upstream)
        # The key is the sticky cookie's value (b"" without one); nothing is generated:
        # the proxy sets the cookie after the pick (StickyCookie).
        return HashSpec(
            "sticky_sessions_cookie",
            _cookie(name.lower().encode("ascii")),
            "none",
            None,
            None,
            "/",
            frozenset({"cookie_header", "headers"}),
        )
    if algorithm != "consistent-hashing" or hash_on == "none":
        return None
    cookie_name = upstream.get("hash_on_cookie") if "cookie" in (hash_on, fallback) else None
    return HashSpec(
        hash_on,
        primary,
        fallback,
        fallback_extract,
        cookie_name if isinstance(cookie_name, str) else None,
        cookie_path,
        needs,
    )


def sticky_cookie_settings(upstream: Mapping[str, Any]) -> tuple[str, str]:
    """``(sticky_sessions_cookie, sticky_sessions_cookie_path)`` of a ``sticky-sessions``
    upstream, checked as the control plane checks them (an HTTP token without ``=``; a
    cookie path, default ``/``). Raises ``ValueError`` naming the field."""
    name = upstream.get("sticky_sessions_cookie")
    if not isinstance(name, str) or not name:
        raise ValueError(f"'sticky_sessions_cookie' is required when 'algorithm' is {STICKY_SESSIONS!r}")
    if not _is_token(name) or "=" in name:
        raise ValueError(f"'sticky_sessions_cookie' is not a valid cookie name: {name!r}")
    path = upstream.get("sticky_sessions_cookie_path") or "/"
    problem = cookie_path_problem(path)
    if problem is not None:
        raise ValueError(f"'sticky_sessions_cookie_path' {path!r}: {problem}")
    assert isinstance(path, str)
    return name, path
