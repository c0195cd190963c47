"""Reading Admin API requests: bodies (JSON, forms, declarative documents), options,
pagination (Kong's ``offset``/``size``/``tags``) and override addresses.

HTTP only, as :mod:`control_plane.admin_api` whose handlers call these: every problem is
raised as a :class:`~control_plane.errors.FerryError` (Kong's body) for the Admin API's
error middleware to answer. No state; safe to call from any handler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, quote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from control_plane.admin_openapi import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
)
from control_plane.declarative import (
    DocumentParseError,
    parse_document,
)
from control_plane.errors import (
    BadRequest,
    InvalidBody,
    InvalidOffset,
    InvalidOptions,
    InvalidSize,
)
from control_plane.schemas import (
    RuleError,
    decode_form,
    has_lone_surrogate,
    parse_host,
)

_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259): refused like any unparsable body.
    raise ValueError(f"{name} is not a JSON value")


def decode_json(raw: bytes) -> Any:
    """``raw`` as JSON; :class:`InvalidBody` (Kong's message) for anything unparsable.

    Nesting deeper than Python's recursion limit is unparsable too (a
    ``RecursionError`` from the decoder), as it is for Kong's cjson beyond its
    depth limit. So is a ``\\uD800``-``\\uDFFF`` escape that is not half of a
    surrogate pair: cjson refuses it ("invalid unicode escape code"), Python
    would decode it to a string no UTF-8 can hold (a 500 further on).
    """
    try:
        data = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise InvalidBody() from None
    if b"\\u" in raw and has_lone_surrogate(data):
        raise InvalidBody()
    return data


async def read_form(request: web.Request) -> list[tuple[str, object]]:
    """The fields of a form body (url-encoded or multipart), in order.

    Anything the parser cannot read (a multipart body without a boundary or
    cut short, a control character in a part header, bytes that are not
    UTF-8, an unknown charset) is a 400 ``{"message": "Cannot parse form
    body: ..."}``, never a 500. (Kong ignores an unreadable form and validates
    an empty body instead; Ferry says what is wrong.)
    """
    try:
        if request.content_type == "application/x-www-form-urlencoded":
            raw = await request.read()
            charset = request.charset or "utf-8"
            text = raw.decode(charset)
            # errors="strict": a percent-encoded byte that is not UTF-8 is refused
            # too, never turned into U+FFFD and stored.
            return list(parse_qsl(text, keep_blank_values=True, encoding=charset, errors="strict"))
        form = await request.post()
        return list(form.items())
    except web.HTTPException:
        raise  # 413 and the like keep their status
    except UnicodeError:
        raise InvalidBody("Cannot parse form body: not valid UTF-8 text") from None
    except LookupError:
        raise InvalidBody("Cannot parse form body: unknown charset") from None
    except HttpProcessingError:
        raise InvalidBody("Cannot parse form body: invalid multipart part header") from None
    except (ValueError, AssertionError, asyncio.IncompleteReadError) as exc:
        reason = "no multipart boundary" if "boundary" in str(exc) else "malformed or truncated multipart body"
        raise InvalidBody(f"Cannot parse form body: {reason}") from None


def _form_text(value: object) -> str | None:
    """A form field's text: an uploaded file (``curl -F cert=@server.crt``, as Kong
    takes PEM files) is its content; other values not text are dropped."""
    if isinstance(value, str):
        return value
    if isinstance(value, web.FileField):
        try:
            return value.file.read().decode()
        except UnicodeError:
            raise InvalidBody("Cannot parse form body: not valid UTF-8 text") from None
    return None


async def read_body(request: web.Request, kind: str) -> dict[str, Any]:
    """The request body as a dict: JSON, or a form decoded by the schema of ``kind``."""
    if request.content_type in _FORM_TYPES:
        fields = await read_form(request)
        return decode_form(kind, [(k, text) for k, v in fields if (text := _form_text(v)) is not None])
    raw = await request.read()
    if not raw.strip():
        return {}
    data = decode_json(raw)
    if not isinstance(data, dict):
        raise InvalidBody()
    return data


async def read_config_document(request: web.Request) -> dict[str, Any]:
    """The declarative document of a ``POST /config`` request, parsed (not validated).

    As Kong: a JSON body (``application/json``), a YAML body (any other type:
    ``application/yaml``, ``text/yaml`` ...), or a form whose ``config`` field
    (text or uploaded file) holds YAML or JSON. Unparsable → 400
    ``{"message": "failed parsing declarative configuration: ..."}``.
    """
    try:
        if request.content_type in _FORM_TYPES:
            fields = await read_form(request)
            value = next((item for name, item in fields if name == "config"), None)
            if isinstance(value, web.FileField):
                return await asyncio.to_thread(parse_config_text, value.file.read())
            if not isinstance(value, str):
                raise DocumentParseError("expected the configuration in the 'config' field")
            return await asyncio.to_thread(parse_config_text, value)
        raw = await request.read()
        json_only = request.content_type == "application/json" or request.content_type.endswith("+json")
        # In a thread: a large YAML document takes seconds to parse, and this
        # loop also serves the data planes' streams.
        return await asyncio.to_thread(parse_config_text, raw, json_only=json_only)
    except DocumentParseError as exc:
        raise InvalidBody(f"failed parsing declarative configuration: {exc}") from None


def parse_config_text(text: str | bytes, *, json_only: bool = False) -> dict[str, Any]:
    """:func:`parse_document`, refusing a string that is not Unicode text.

    JSON can escape half a surrogate pair (``"\\ud800"``), and a form in UTF-7 can
    spell one; the resolver would hash such a name into an id (a 500). Kong's cjson
    refuses the escape too. (libyaml refuses it in YAML by itself.)
    """
    document = parse_document(text, json_only=json_only)
    if has_lone_surrogate(document):
        raise DocumentParseError("invalid unicode escape code (a lone surrogate)")
    return document


def expected_version(request: web.Request) -> int | None:
    """``?expected_version=N`` (Ferry): apply only if the configuration is at version N."""
    text = request.query.get("expected_version")
    if text is None or text == "":
        return None
    if not _DECIMAL.fullmatch(text):
        raise InvalidOptions("expected_version", "expected a non-negative integer")
    return int(text)


#: A non-negative integer as a query option: ASCII digits only (``str.isdigit``
#: also accepts ``²``, which ``int`` refuses), at most 18 of them.
_DECIMAL = re.compile(r"[0-9]{1,18}")
_NUMBER = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]{1,3})?")


def flag(request: web.Request, name: str) -> bool:
    """A boolean query option: ``1``/``true`` on; ``0``/``false``/empty/absent off; else 400."""
    text = request.query.get(name)
    if text is None or text in ("", "0", "false"):
        return False
    if text in ("1", "true"):
        return True
    raise InvalidOptions(name, "expected one of: 1, true, 0, false")


def encode_offset(entity_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([entity_id]).encode()).decode()


def decode_offset(offset: str) -> str:
    try:
        decoded = json.loads(base64.urlsafe_b64decode(offset.encode()))
    except (binascii.Error, ValueError, RecursionError):
        raise InvalidOffset(offset, "bad base64 encoding") from None
    if not (isinstance(decoded, list) and len(decoded) == 1 and isinstance(decoded[0], str)):
        raise InvalidOffset(offset, "bad offset") from None
    return decoded[0]


#: One tag in a ``tags`` filter: what a tag may hold (printable ASCII but ``,``
#: and ``/``, or any non-ASCII character), as Kong's filter regexes.
_TAG_CHARS = r"[ -+\-.0-~\u0080-\U0010ffff]"
_TAGS_ALL = re.compile(rf"(?:{_TAG_CHARS}+(?:,|$))+")
_TAGS_ANY = re.compile(rf"(?:{_TAG_CHARS}+(?:/|$))+")


def tag_filter(raw: str) -> Callable[[dict[str, Any]], bool]:
    """Kong's ``tags`` query: ``a,b`` needs all tags, ``a/b`` any of them; else 400."""
    if _TAGS_ALL.fullmatch(raw):
        wanted = [tag for tag in raw.split(",") if tag]
        return lambda e: all(tag in (e.get("tags") or []) for tag in wanted)
    if _TAGS_ANY.fullmatch(raw):
        wanted = [tag for tag in raw.split("/") if tag]
        return lambda e: any(tag in (e.get("tags") or []) for tag in wanted)
    raise InvalidOptions("tags", "invalid filter syntax")


def page_size(request: web.Request) -> int:
    """Kong's ``size`` query argument: 1..1000, default 100; else ``InvalidSize`` (400)."""
    if "size" not in request.query:
        return DEFAULT_PAGE_SIZE
    # Kong: tonumber(size), then an integer in range.
    if not _NUMBER.fullmatch(request.query["size"]):
        raise InvalidSize("size must be a number")
    number = float(request.query["size"])
    if not (number.is_integer() and 1 <= number <= MAX_PAGE_SIZE):
        raise InvalidSize(f"size must be an integer between 1 and {MAX_PAGE_SIZE}")
    return int(number)


def page_body(
    request: web.Request, items: list[dict[str, Any]], base: str, *, by_id: bool = True
) -> dict[str, Any]:
    """One page of ``items`` as ``{"data", "next"[, "offset"]}``.

    ``size`` (1..1000, default 100) and ``offset`` (an opaque token naming the
    last id of the previous page) select the page; ``tags`` filters first, so
    pages are always full until the last. ``by_id``: ``items`` are sorted by id, so
    a page starts after the offset's id even when that entity is gone; otherwise
    (another order, e.g. ``/health``'s newest first) it starts after that entity,
    and an offset naming none of them is invalid.
    """
    query = request.query
    size = page_size(request)
    tags_suffix = ""
    if query.get("tags") == "":
        raise InvalidOptions("tags", "cannot be null")
    if query.get("tags"):
        keep = tag_filter(query["tags"])
        items = [item for item in items if keep(item)]
        tags_suffix = "&tags=" + quote(query["tags"], safe=",/")
    start = 0
    if query.get("offset"):
        after = decode_offset(query["offset"])
        if by_id:
            start = bisect.bisect_right([item["id"] for item in items], after)
        else:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise InvalidOffset(query["offset"], "no such entity in this list")
            start = ids.index(after) + 1
    page = items[start : start + size]
    body: dict[str, Any] = {"data": page, "next": None}
    if start + size < len(items):
        offset = encode_offset(page[-1]["id"])
        body["next"] = f"{base}?offset={quote(offset)}{tags_suffix}"
        body["offset"] = offset
    return body


def override_address(text: str, target: str) -> str:
    """An override's ``ip[:port]`` in the canonical form health reports use.

    The port defaults to the target's (Kong uses 8000); IPv6 is written fully
    expanded and bracketed, as targets are stored. A name is accepted (lower-cased)
    only for a target that is a name: an SRV record pointing to a name is listed under
    that name, as in Kong. Otherwise a name is refused: 400.
    """
    try:
        parsed = parse_host(text.lower())
    except RuleError:
        parsed = None
    if parsed is None or (parsed.kind == "name" and parse_host(target).kind != "name"):
        raise BadRequest(f"invalid address '{text}': expected an IP address with an optional port")
    return parsed.format(parse_host(target).port)
