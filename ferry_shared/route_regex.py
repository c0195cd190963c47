"""Kong route regexes (PCRE syntax), compiled once for both planes.

A route's ``~`` path and its ``~*`` header values are regexes. The data plane's router
matches them against raw request bytes, so it compiles them as ``bytes`` patterns; the
control plane must refuse exactly what the router cannot compile, or one accepted route
makes every data plane refuse every later config (a NACK). So both planes call the
same two functions here, and nothing else compiles a route regex:

- :func:`compile_path_regex` — the text after ``~`` in ``paths``;
- :func:`compile_header_regex` — the text after ``~*`` in a ``headers`` value
  (case-insensitive).

Each raises :class:`RouteRegexError` (a ``ValueError``) with a one-line reason whose
position counts characters of the pattern as written. What differs from a ``str``
pattern: ``\\u``, ``\\U`` and ``\\N{...}`` escapes are errors (write the character, or
its UTF-8 bytes as ``\\xNN``), non-ASCII characters match their UTF-8 bytes, and group
names are ASCII. Kong users write named captures the PCRE way, ``(?<name>...)``; Python
knows ``(?P<name>...)``: :func:`pcre_to_python` rewrites them.
"""

from __future__ import annotations

import re
import warnings

__all__ = [
    "MAX_GROUP_DEPTH",
    "RouteRegexError",
    "compile_header_regex",
    "compile_path_regex",
    "pcre_to_python",
]

# "(?<" followed by a name, not by "=" or "!" (lookbehind), and not escaped.
_PCRE_NAMED_GROUP = re.compile(r"(?<!\\)\(\?<(?=[A-Za-z_])")

#: Deepest nesting of parentheses accepted. Python's regex compiler recurses about
#: twice per level, so without a bound whether a deep pattern compiles would depend
#: on how deep the caller's stack already is: the control plane (inside a web request)
#: and a data plane could disagree. PCRE's own default limit is 250.
MAX_GROUP_DEPTH = 100


class RouteRegexError(ValueError):
    """A route regex that cannot be compiled; ``str()`` is the reason."""


def pcre_to_python(pattern: str) -> str:
    """Rewrite PCRE named groups ``(?<name>`` as ``(?P<name>``; the rest is left as is."""
    return _PCRE_NAMED_GROUP.sub("(?P<", pattern)


def compile_path_regex(pattern: str) -> re.Pattern[bytes]:
    """Compile a route path regex (``paths`` entry without its ``~``) as the router uses it.

    The router matches it from the start of the request path's raw bytes (``match``).
    """
    return _compile(pattern, 0)


def compile_header_regex(pattern: str) -> re.Pattern[bytes]:
    """Compile a route header regex (a ``headers`` value without its ``~*``).

    Case-insensitive; the router searches the raw header value's bytes (``search``).
    """
    return _compile(pattern, re.IGNORECASE)


def _compile(pattern: str, flags: int) -> re.Pattern[bytes]:
    if not isinstance(pattern, str):
        raise RouteRegexError("expected a string")
    depth = _group_depth(pattern)
    if depth > MAX_GROUP_DEPTH:
        raise RouteRegexError(f"parentheses nested {depth} deep (at most {MAX_GROUP_DEPTH})")
    translated = pcre_to_python(pattern)
    try:
        source = translated.encode("utf-8")
    except UnicodeEncodeError:
        position = next(i for i, c in enumerate(pattern) if "\ud800" <= c <= "\udfff")
        raise RouteRegexError(
            f"not valid Unicode text (a lone surrogate) at position {position}"
        ) from None
    try:
        with warnings.catch_warnings():
            # "Possible nested set" for "[[": PCRE's reading and ours agree today.
            warnings.simplefilter("ignore", FutureWarning)
            return re.compile(source, flags)
    except re.error as exc:
        raise RouteRegexError(_describe(exc, pattern, source)) from None
    except OverflowError as exc:  # a{99999999999}: not an re.error
        raise RouteRegexError(str(exc)) from None
    except RecursionError:  # only if the caller's stack is already nearly exhausted
        raise RouteRegexError("pattern too deeply nested") from None


def _describe(exc: re.error, pattern: str, source: bytes) -> str:
    """``exc``'s message with its position counted in characters of ``pattern``."""
    if exc.pos is None:
        return exc.msg
    # exc.pos counts bytes of the UTF-8 source; count characters of the translation,
    # then take back each "P" pcre_to_python inserted before that point (the i-th
    # insertion, for the group at pattern index s, sits at translated index s + i + 2).
    position = len(source[: exc.pos].decode("utf-8", "ignore"))
    starts = [m.start() for m in _PCRE_NAMED_GROUP.finditer(pattern)]
    position -= sum(1 for i, start in enumerate(starts) if start + i + 2 < position)
    return f"{exc.msg} at position {position}"


def _group_depth(pattern: str) -> int:
    """Deepest nesting of unescaped ``(`` outside character classes."""
    depth = deepest = 0
    index, length = 0, len(pattern)
    in_class = False
    while index < length:
        char = pattern[index]
        if char == "\\":
            index += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            # A "]" right after "[" or "[^" is a literal, not the end of the class.
            index += 1
            if index < length and pattern[index] == "^":
                index += 1
            if index < length and pattern[index] == "]":
                index += 1
            continue
        elif char == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif char == ")" and depth:
            depth -= 1
        index += 1
    return deepest
