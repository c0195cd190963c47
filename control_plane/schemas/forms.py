"""Form bodies (``a=1&b.c=2&d[]=x``) decoded into typed values by an entity's schema."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel

from control_plane.schemas.engine import MODELS
from control_plane.schemas.typedefs import unwrap_annotation


def _scalar_kind(annotation: Any) -> str:
    annotation = unwrap_annotation(annotation)
    if typing.get_origin(annotation) is Literal:
        values = typing.get_args(annotation)
        return "int" if all(isinstance(v, int) for v in values) else "str"
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    return "str"


def _coerce_scalar(value: str, kind: str) -> Any:
    if value == "":
        return None
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            number = float(value)
            return int(number) if number.is_integer() and "." not in value else number
    except ValueError:
        return value  # left as text: validation reports the type error
    if kind == "bool":
        return {"true": True, "false": False}.get(value.lower(), value)
    return value


def _coerce(annotation: Any, value: Any) -> Any:
    annotation = unwrap_annotation(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if not isinstance(value, dict):
            return value
        return {
            key: _coerce(
                annotation.model_fields[key].annotation if key in annotation.model_fields else str,
                item,
            )
            for key, item in value.items()
        }
    if origin is list:
        (element,) = typing.get_args(annotation)
        if isinstance(value, dict):  # paths[1]=/a&paths[2]=/b
            value = [value[key] for key in sorted(value, key=_form_index)]
        if value == "":
            return None
        items = value if isinstance(value, list) else [value]
        return [_coerce(element, item) for item in items]
    if origin is dict:
        if not isinstance(value, dict):
            return value
        _, value_type = typing.get_args(annotation)
        return {key: _coerce(value_type, item) for key, item in value.items()}
    if isinstance(value, list):
        value = value[-1]
    if isinstance(value, str):
        return _coerce_scalar(value, _scalar_kind(annotation))
    return value


def _form_index(key: str) -> int:
    """The position an ``a[n]`` form key gives (ASCII digits; anything else first)."""
    return int(key) if key.isascii() and key.isdigit() and len(key) <= 9 else 0


_FORM_KEY_PART = re.compile(r"\[([^\]]*)\]|\.?([^\[.]+)")


def _form_key_parts(key: str) -> list[str]:
    """``a.b[]`` -> ``["a", "b", ""]``; ``paths[2]`` -> ``["paths", "2"]``."""
    return [bracket if bracket is not None and name == "" else name
            for bracket, name in _FORM_KEY_PART.findall(key)] or [key]


def decode_form(kind: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Decode a form body (``a=1&b.c=2&d[]=x&d[]=y``) into typed values for ``kind``.

    Like Kong, dotted keys nest records, ``[]``/``[n]`` suffixes and repeated
    keys build arrays, and values are converted by the schema's field types
    (``"10"`` -> 10 for an integer field, ``"true"`` -> True for a boolean,
    ``""`` -> null); a value that does not convert is left for validation to
    report.
    """
    tree: dict[str, Any] = {}
    for key, value in pairs:
        parts = _form_key_parts(key)
        append = len(parts) > 1 and parts[-1] == ""
        if append:
            parts = parts[:-1]
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        last = parts[-1]
        if last in node:
            existing = node[last]
            node[last] = [*existing, value] if isinstance(existing, list) else [existing, value]
        else:
            node[last] = [value] if append else value
    model = MODELS[kind]
    return {
        key: _coerce(model.model_fields[key].annotation, value)
        if key in model.model_fields
        else value
        for key, value in tree.items()
    }
