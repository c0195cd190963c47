"""The data plane's optional per-request access log (``--access-log``).

One record per answered request, after the response went out (Kong's log
phase), written to standard error in the process's ``--log-format``. With
``json`` a record is one object carrying the fields below; with ``text`` it is
one line shaped like every other log line::

    2026-11-24 10:00:00,123 INFO [data-plane] ferry.access: 10.0.0.7 "GET /orders?id=1 HTTP/1.1" 200 upstream 10.0.0.3:80 service=orders route=orders-route request_ms=4 upstream_ms=3

Fields: ``client_ip``, ``method``, ``uri`` (as the client sent it), ``http_version``,
``status``, ``source`` (``upstream``: the target answered; ``ferry``: the proxy
answered itself, Kong's ``source="kong"``), ``upstream`` (``host:port`` of the
last try, ``null`` when none), ``service``, ``route`` (names, else ids, else
``null``), ``tries``, and latencies in ms: ``request_ms`` (first request byte
to end of answer), ``upstream_ms`` (request sent to response head, ``null``
when no head came), ``proxy_ms`` (time inside the proxy before the try).

No header or body is ever logged (they may carry credentials); the query
string is, as in nginx's and Kong's access logs (with URL passwords masked).

Cost: the records do not go through :mod:`logging` (about 20 µs a record, more
than proxying the request). Like nginx's ``access_log ... buffer=``, records are
formatted directly, kept in memory and written together once per event-loop
turn, so a busy worker makes one ``write`` for many requests. A process killed
with SIGKILL loses the records of its last loop turn. The access log does not
follow ``--log-level``: it is on or off.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from ferry_shared.logging_setup import LogFormat, redact


class AccessLog:
    """Formats and buffers records; writes them to ``fd`` once per loop turn.

    Single event loop (the proxy's). :meth:`flush` writes what is pending now
    (the proxy calls it when it stops).
    """

    __slots__ = (
        "_fd", "_format", "_component", "_component_json", "_pending", "_scheduled", "_second",
        "_stamp",
    )

    def __init__(
        self, log_format: LogFormat = "text", *, component: str = "data-plane", fd: int | None = None
    ) -> None:
        self._fd = sys.stderr.fileno() if fd is None else fd
        self._format = log_format
        self._component = component
        self._component_json = json.dumps(component)
        self._pending: list[str] = []
        self._scheduled = False
        self._second = -1
        self._stamp = ""

    def record(
        self,
        *,
        client_ip: bytes,
        method: bytes,
        uri: bytes,
        http10: bool,
        status: int,
        source: str,
        upstream: str | None,
        service: str | None,
        route: str | None,
        tries: int,
        request_ms: int,
        upstream_ms: int | None,
        proxy_ms: int | None,
    ) -> None:
        """Queue one record for an answered request (latencies in whole ms)."""
        client = client_ip.decode("ascii", "replace")
        verb = method.decode("ascii", "replace")
        target = uri.decode("latin-1")
        if "@" in target or "oken" in target or "uthorization" in target:
            target = redact(target)
        version = "1.0" if http10 else "1.1"
        message = (
            f'{client} "{verb} {_printable(target)} HTTP/{version}" {status} {source} '
            f"{upstream or '-'} service={service or '-'} route={route or '-'} "
            f"request_ms={request_ms} upstream_ms={'-' if upstream_ms is None else upstream_ms}"
        )
        now = time.time()
        if self._format == "json":
            # Assembled by hand: json.dumps of a whole dict costs about 7 µs a record.
            # Only text that can hold quotes or control characters is encoded.
            line = (
                f'{{"time":"{self._json_time(now)}","level":"info",'
                f'"component":{self._component_json},"logger":"ferry.access",'
                f'"message":{_dumps(message)},"client_ip":"{client}","method":{_dumps(verb)},'
                f'"uri":{_dumps(target)},"http_version":"{version}","status":{status},'
                f'"source":"{source}","upstream":{_name(upstream)},"service":{_name(service)},'
                f'"route":{_name(route)},"tries":{tries},"request_ms":{request_ms},'
                f'"upstream_ms":{_number(upstream_ms)},"proxy_ms":{_number(proxy_ms)}}}'
            )
        else:
            line = f"{self._text_time(now)} INFO [{self._component}] ferry.access: {message}"
        self._pending.append(line)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        """Write every pending record now (one ``write`` unless the pipe is full)."""
        self._scheduled = False
        if not self._pending:
            return
        data = ("\n".join(self._pending) + "\n").encode("utf-8", "replace")
        self._pending.clear()
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            pass  # stderr gone (closed pipe): the records are lost, the proxy goes on

    def _text_time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        return f"{self._stamp},{int((now - second) * 1000):03d}"

    def _json_time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"


_dumps = json.JSONEncoder(ensure_ascii=False).encode
_NAMES: dict[str, str] = {}


def _name(value: str | None) -> str:
    """A service, route or address as JSON; the few distinct ones are cached."""
    if value is None:
        return "null"
    encoded = _NAMES.get(value)
    if encoded is None:
        if len(_NAMES) > 10_000:
            _NAMES.clear()
        encoded = _NAMES[value] = _dumps(value)
    return encoded


def _number(value: int | None) -> str:
    return "null" if value is None else str(value)


def _printable(text: str) -> str:
    """``text`` safe for a one-line text log (control characters escaped)."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
