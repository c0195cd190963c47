"""The data plane's optional per-request access log (``--access-log``).

One record per answered request on the ``ferry.access`` logger at INFO, after
the response went out (Kong's log phase). With ``--log-format json`` a record
is one JSON object carrying the fields below; with ``text`` it is one line::

    10.0.0.7 "GET /orders?id=1 HTTP/1.1" 200 upstream 10.0.0.3:80 service=orders route=orders-route request_ms=4 upstream_ms=3

Fields: ``client_ip``, ``method``, ``uri`` (as the client sent it), ``http_version``,
``status``, ``source`` (``upstream``: the target answered; ``ferry``: the proxy
answered itself, Kong's ``source="kong"``), ``upstream`` (``host:port`` of the
last try, ``null`` when none), ``service``, ``route`` (names, else ids, else
``null``), ``tries``, and latencies in ms: ``request_ms`` (first request byte
to end of answer), ``upstream_ms`` (request sent to response head, ``null``
when no head came), ``proxy_ms`` (time inside the proxy before the try).

No header or body is ever logged (they may carry credentials); the query
string is, as in nginx's and Kong's access logs. Off by default: logging costs
several µs per request (docs/performance.md has the figure), which a gateway
at full load should not pay unless asked.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ferry.access")


class AccessLog:
    """Writes one record per request. Single event loop; no buffering beyond the
    logging handler's (stderr, unbuffered lines)."""

    __slots__ = ("_logger",)

    def __init__(self, logger: logging.Logger = log) -> None:
        self._logger = logger

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
        """Log one answered request (all latencies in whole milliseconds)."""
        logger = self._logger
        if not logger.isEnabledFor(logging.INFO):
            return
        client = client_ip.decode("ascii", "replace")
        verb = method.decode("ascii", "replace")
        target = uri.decode("latin-1")
        version = "1.0" if http10 else "1.1"
        fields = {
            "client_ip": client,
            "method": verb,
            "uri": target,
            "http_version": version,
            "status": status,
            "source": source,
            "upstream": upstream,
            "service": service,
            "route": route,
            "tries": tries,
            "request_ms": request_ms,
            "upstream_ms": upstream_ms,
            "proxy_ms": proxy_ms,
        }
        # %-style arguments: the text line is built by the handler, and only once.
        logger.info(
            '%s "%s %s HTTP/%s" %d %s %s service=%s route=%s request_ms=%d upstream_ms=%s',
            client,
            verb,
            _printable(target),
            version,
            status,
            source,
            upstream or "-",
            service or "-",
            route or "-",
            request_ms,
            "-" if upstream_ms is None else upstream_ms,
            extra={"fields": fields},
        )


def _printable(text: str) -> str:
    """``text`` safe for a one-line text log (control characters escaped)."""
    if text.isprintable():
        return text
    return text.encode("unicode_escape").decode("ascii")
