"""Process-wide logging set-up for the ``ferry`` commands.

Two formats: ``text`` (one human line per record) and ``json`` (one JSON object
per line, for log shippers: ``time``, ``level``, ``component``, ``logger``,
``message``, an ``exception`` when there is one, and whatever a call site passes
in ``extra={"fields": {...}}``, e.g. the access log's request fields).

Secrets never reach a line: every rendered record goes through
:func:`redact`, which masks the password of any ``scheme://user:password@``
URL (a ``--redis-url`` in an error), the value of token headers
(``Ferry-Admin-Token``, ``Authorization``) and the body of any PEM private key
(a certificate entity's ``key``/``key_alt`` quoted by mistake). Call sites must still not log
secrets on purpose; this is the safety net.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any, Literal

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

#: ``redis://user:secret@host`` → ``redis://user:***@host`` (and ``:secret@``).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)")
#: ``Ferry-Admin-Token: abc`` / ``Authorization: Bearer abc`` / ``"ferry-admin-token": "abc"``.
_TOKEN_VALUE = re.compile(
    r"(?P<head>(?:ferry-admin-token|kong-admin-token|authorization)['\"]?\s*[:=]\s*['\"]?"
    r"(?:bearer\s+|basic\s+)?)[^\s'\",}]+",
    re.IGNORECASE,
)

#: A PEM private key (``-----BEGIN [RSA |EC |ENCRYPTED ]PRIVATE KEY-----`` … END), also
#: JSON-escaped (``\n`` written as two characters).
_PRIVATE_KEY = re.compile(
    r"(?P<head>-----BEGIN [A-Z ]*PRIVATE KEY-----).*?(?P<tail>-----END [A-Z ]*PRIVATE KEY-----)",
    re.DOTALL,
)

_format: LogFormat = "text"


def redact(text: str) -> str:
    """``text`` with URL passwords, token header values and PEM private key bodies
    replaced by ``***``."""
    if "PRIVATE KEY-----" in text:
        text = _PRIVATE_KEY.sub(r"\g<head>***\g<tail>", text)
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\g<head>***", text)
    lowered = text.lower()
    if "token" in lowered or "authorization" in lowered:
        text = _TOKEN_VALUE.sub(r"\g<head>***", text)
    return text


class TextFormatter(logging.Formatter):
    """``2026-11-24 10:00:00,123 INFO [component] logger: message``, redacted."""

    def __init__(self, component: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s [{component}] %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JSONFormatter(logging.Formatter):
    """One JSON object per line (no embedded newlines: tracebacks are one string)."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _iso_time(record.created),
            "level": record.levelname.lower(),
            "component": self._component,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for key, value in fields.items():
                entry.setdefault(key, redact(value) if isinstance(value, str) else value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = redact(record.exc_text)
        return json.dumps(entry, separators=(",", ":"), default=str)


def _iso_time(created: float) -> str:
    """RFC 3339 UTC with milliseconds: ``2026-11-24T10:00:00.123Z``."""
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def configure_logging(
    level: LogLevel = "info", *, component: str = "ferry", log_format: LogFormat = "text"
) -> None:
    """Send every record of this process to stderr at ``level`` in ``log_format``.

    Replaces the root logger's handlers (idempotent). Not thread-safe against
    concurrent logging set-up; call once at start, before any task runs.
    """
    global _format
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r} (expected text or json)")
    _format = log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter(component) if log_format == "json" else TextFormatter(component))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is off (we pass access_log=None); keep grpc quiet.
    logging.getLogger("grpc").setLevel(logging.WARNING)


def current_log_format() -> LogFormat:
    """The format :func:`configure_logging` set (``text`` before it runs): a node
    passes it on to the worker processes it starts."""
    return _format
