"""Reading a declarative document (YAML or JSON) safely: Kong's ``kong.yml`` text →
a mapping of plain values, and back (:func:`dump_yaml`).

Safe against hostile text: YAML's safe loader without timestamps, alias expansion
bounded (:data:`MAX_ALIAS_EXPANSION`) and the expanded document capped at
:data:`MAX_DOCUMENT_VALUES` values, so a "billion laughs" document is refused with a
:class:`DocumentParseError` instead of eating the control plane's memory. Pure
functions; :mod:`control_plane.declarative` validates, resolves and diffs what this
returns.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import yaml


class DocumentParseError(ValueError):
    """The text is not a YAML/JSON mapping of plain values; ``str(self)`` says why."""


# ------------------------------------------------------------------- parsing

_YAMLLoaderBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_YAMLDumperBase: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _DocumentLoader(_YAMLLoaderBase):
    """YAML's safe loader without timestamps: an unquoted ``2024-01-01`` stays a string."""


_DocumentLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in _YAMLLoaderBase.yaml_implicit_resolvers.items()
}


#: Most values a document may hold once YAML aliases are expanded (a 32 MiB body
#: of exported entities holds about two million; an alias bomb, billions).
MAX_DOCUMENT_VALUES = 5_000_000

#: YAML aliases may add at most this many nodes to those the document spells out,
#: plus as many again as it spells out: enough to share health-check blocks
#: between thousands of upstreams, while an alias bomb ("billion laughs") is
#: refused after composing, before a single Python object is built.
MAX_ALIAS_EXPANSION = 100_000


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a composed YAML graph whose aliases expand it too much, or refer to
    a node that contains them (a recursive document).

    Walks each distinct node once (iteratively, memoising subtree sizes), so
    the cost is that of the text, however large the expansion.
    """
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    written = 0
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    hard_cap = MAX_DOCUMENT_VALUES
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            entered.discard(key)
            size = 1 + sum(sizes[id(child)] for child in _children(node))
            if size > hard_cap:
                raise DocumentParseError(f"more than {hard_cap} values (YAML aliases expanded)")
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in entered:
            raise DocumentParseError("nested too deeply: a YAML alias refers to a node that contains it")
        entered.add(key)
        written += 1
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    expanded = sizes[id(root)]
    allowed = 2 * written + MAX_ALIAS_EXPANSION
    if expanded > allowed:
        raise DocumentParseError(
            f"YAML aliases expand {written} written values to {expanded} "
            f"(at most {allowed} allowed)"
        )


def _load_yaml(text: str) -> Any:
    """``yaml.load`` in its two steps, with :func:`_check_expansion` between them."""
    loader = _DocumentLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if "&" in text:  # no anchor, no alias: nothing to expand
            _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _plain(value: Any, where: str, budget: list[int]) -> Any:
    """``value`` as JSON values (str keys, finite numbers); raises DocumentParseError.

    ``budget`` is a one-element countdown of the values still allowed.
    """
    budget[0] -= 1
    if budget[0] < 0:
        raise DocumentParseError(f"more than {MAX_DOCUMENT_VALUES} values (YAML aliases expanded)")
    if isinstance(value, dict):
        return {
            str(key): _plain(item, f"{where}.{key}" if where else str(key), budget)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_plain(item, f"{where}.{index}", budget) for index, item in enumerate(value, start=1)]
    if isinstance(value, float) and not math.isfinite(value):
        raise DocumentParseError(f"{where or 'document'}: {value} is not a finite number")
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise DocumentParseError(f"{where or 'document'}: unsupported value of type {type(value).__name__}")


def parse_document(text: str | bytes, *, json_only: bool = False) -> dict[str, Any]:
    """Parse a declarative document (YAML, or JSON — a YAML subset) into plain JSON values.

    ``json_only`` parses strictly as JSON (a ``Content-Type: application/json``
    body). A mapping without ``_format_version`` whose ``config`` is a string
    is Kong's form-field wrapper: that string is parsed instead. Raises
    :class:`DocumentParseError` for unparsable text or a top level that is not
    a mapping; never validates entities (see :func:`resolve_document`).
    """
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError as exc:
            raise DocumentParseError(f"not UTF-8 text: {exc}") from None
    if not text.strip():
        raise DocumentParseError("the document is empty")
    try:
        loaded = json.loads(text) if json_only else _load_yaml(text)
        if not isinstance(loaded, dict):
            raise DocumentParseError("expected a mapping (the entity lists) at the top level")
        if "_format_version" not in loaded and isinstance(loaded.get("config"), str):
            return parse_document(loaded["config"])
        document = _plain(loaded, "", [MAX_DOCUMENT_VALUES])
    except RecursionError:
        raise DocumentParseError("nested too deeply") from None
    except (ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, DocumentParseError):
            raise
        # libyaml (PyYAML >= 6.0.4) stops deep nesting itself, before Python recursion would.
        if isinstance(exc, yaml.MarkedYAMLError) and "maximum nesting depth" in (exc.problem or ""):
            mark = exc.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise DocumentParseError(f"nested too deeply{where}") from None
        raise DocumentParseError(str(exc)) from None
    assert isinstance(document, dict)
    return document


def dump_yaml(document: Mapping[str, Any]) -> str:
    """``document`` as YAML that :func:`parse_document` reads back equal, in key order."""
    text: str = yaml.dump(
        dict(document),
        Dumper=_YAMLDumperBase,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=None,  # lists of scalars inline: [200, 302]
        width=1 << 30,
    )
    return text
