"""Kong's error messages: pydantic errors and bad Unicode translated to Kong's ``fields``.

:func:`translate` turns a :class:`pydantic.ValidationError` into Kong's nested
``fields`` shape and wording (``"expected an integer"``, ``"unknown field"``, array
element errors as lists with ``null`` at valid positions, one message per map);
:func:`unicode_violations` reports lone surrogates before pydantic sees them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from pydantic import ValidationError as PydanticValidationError

#: Fields holding Kong ``set`` values (their type error says "expected a set").
_SET_FIELDS = frozenset({"tags", "methods", "protocols", "snis"})
#: Fields holding Kong ``map`` values; errors inside a map are reported on the map.
_MAP_FIELDS = frozenset({"headers"})
#: Kong's message for fields that must be null on an http route.
_NULL_FIELD_MESSAGES = {
    "sources": "cannot set 'sources' when 'protocols' is 'http' or 'https'",
    "destinations": "cannot set 'destinations' when 'protocols' is 'http' or 'https'",
}


def _literal_message(error: Mapping[str, Any]) -> str:
    expected = str(error.get("ctx", {}).get("expected", ""))
    options = [
        part.strip().strip("'")
        for part in re.split(r",\s*|\s+or\s+", expected)
        if part.strip()
    ]
    value = error.get("input")
    literal_is_int = all(option.lstrip("-").isdigit() for option in options)
    if literal_is_int and (not isinstance(value, int) or isinstance(value, bool)):
        return "expected an integer"
    if not literal_is_int and not isinstance(value, str):
        return "expected a string"
    return "expected one of: " + ", ".join(options)


_TYPE_MESSAGES = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected a boolean",
    "bool_parsing": "expected a boolean",
    "dict_type": "expected a map",
    "model_type": "expected a record",
    "model_attributes_type": "expected a record",
}


def _message_for(error: Mapping[str, Any], field: str | None) -> str:
    kind = error["type"]
    if kind == "kong":
        message = str(error["ctx"]["msg"])
        if field in _NULL_FIELD_MESSAGES and message == "value must be null":
            return _NULL_FIELD_MESSAGES[field]
        return message
    if kind == "missing":
        return "required field missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if error.get("input") is None and (kind in _TYPE_MESSAGES or kind == "list_type"):
        # An explicit null for a field that is not nullable.
        return "required field missing"
    if kind == "literal_error":
        return _literal_message(error)
    if kind == "list_type":
        return "expected a set" if field in _SET_FIELDS else "expected an array"
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind]
    return str(error.get("msg", "invalid value"))


def _place(tree: dict[str, Any], loc: tuple[Any, ...], message: str) -> None:
    """Store ``message`` at ``loc`` in Kong's nested error shape."""
    node: Any = tree
    for depth, part in enumerate(loc):
        last = depth == len(loc) - 1
        if isinstance(part, int):
            # Array element errors: a list with None at valid positions.
            if not isinstance(node, list):
                return
            while len(node) <= part:
                node.append(None)
            if last:
                node[part] = node[part] or message
                return
            if not isinstance(node[part], dict | list):
                nxt: Any = [] if isinstance(loc[depth + 1], int) else {}
                node[part] = nxt
            node = node[part]
            continue
        if last:
            if part not in node:
                node[part] = message
            return
        child = node.get(part)
        if not isinstance(child, dict | list):
            child = [] if isinstance(loc[depth + 1], int) else {}
            node[part] = child
        node = child


def _kong_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """Kong reports one message for a whole map, never per key or value."""
    for index, part in enumerate(loc):
        if part in _MAP_FIELDS:
            return loc[: index + 1]
    return loc


def translate(exc: PydanticValidationError) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for error in exc.errors():
        loc = _kong_loc(tuple(error["loc"]))
        field = next((part for part in reversed(loc) if isinstance(part, str)), None)
        _place(fields, loc, _message_for(error, field))
    return fields


# ------------------------------------------------------------ unicode text


def _lone_surrogate(text: str) -> int | None:
    """Where ``text`` holds a lone surrogate (U+D800..U+DFFF), or ``None``.

    Such a string is not Unicode text: it has no UTF-8 form, so it cannot be stored,
    sent to a data plane or put in a request. JSON lets a body write one
    (``"\\ud800"``), as can a form in UTF-7.
    """
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def _unicode_problems(value: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """``(location, message)`` for each lone surrogate in a JSON value, keys included.

    A bad key is reported at the object holding it (its text is never echoed).
    Iterative: a body nested as deep as the JSON parser allows does not recurse.
    """
    stack: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while stack:
        loc, node = stack.pop()
        if isinstance(node, str):
            position = _lone_surrogate(node)
            if position is not None:
                yield loc, f"invalid unicode: a lone surrogate at position {position}"
        elif isinstance(node, dict):
            for key, item in node.items():
                position = _lone_surrogate(key) if isinstance(key, str) else None
                if position is not None:
                    yield loc, f"invalid unicode in a key: a lone surrogate at position {position}"
                else:
                    stack.append(((*loc, key), item))
        elif isinstance(node, list):
            stack.extend(((*loc, index), item) for index, item in enumerate(node))


def has_lone_surrogate(value: Any) -> bool:
    """True when a string of ``value`` (nested dicts and lists, keys too) is not
    Unicode text because it holds a lone surrogate."""
    return next(_unicode_problems(value), None) is not None


def unicode_violations(candidate: Mapping[str, Any]) -> dict[str, Any]:
    """Kong-shaped ``fields`` for every lone surrogate in ``candidate`` (empty: none)."""
    fields: dict[str, Any] = {}
    for loc, message in _unicode_problems(dict(candidate)):
        if not loc:
            fields.setdefault("@entity", []).append(message)
        else:
            _place(fields, _kong_loc(loc), message)
    return fields
