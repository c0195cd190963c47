"""One request/response pair (:class:`_Exchange`) and what ends its obligations.

Contract: an :class:`_Exchange` is created by the client connection that parsed its
request head, lives in that connection's FIFO and is owned by it; the upstream
connection it is bound to (``ex.conn``, through the seam in :mod:`data_plane.proxy.seam`)
reads it and sets the response fields (``status``, ``t_headers``, ``response_started``,
``close_after``). What a try owes its upstream (balancer, health checker, retry slot) is
one :class:`~data_plane.upstream_try.Try`, what the request owes it (its retry-budget
count) is on its ``handle``: :meth:`_Exchange.end_try`, :meth:`_Exchange.end_request` and
:meth:`_Exchange.abandon` settle them, each at most once. All on the proxy's one event
loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

from data_plane.balancers import Address, BalancerHandle
from data_plane.hash_key import HashInputs
from data_plane.proxy.errors import _ErrorKey
from data_plane.proxy.headers import _CRLF
from data_plane.request_metrics import RouteSeries
from data_plane.router import RouteMatch
from data_plane.runtime import CompiledService
from data_plane.upstream_try import Try, end_request

if TYPE_CHECKING:
    from data_plane.proxy.seam import UpstreamSide

#: Request body bytes held while no upstream connection is ready (connect in progress,
#: or a pipelined request waiting for its turn); above it, reading the client pauses.
BODY_BUFFER_LIMIT: Final = 256 * 1024

_now_ns: Final = time.monotonic_ns


class _Exchange:
    """One request/response pair on a client connection. Owned by that connection."""

    __slots__ = (
        "method",
        "is_head",
        "http10",
        "close_after",
        "host_header",
        "upstream_path",
        "head_tail",
        "service",
        "preserve_host",
        "error",
        "redirect",
        "has_body",
        "chunked",
        "expect_continue",
        "body",
        "body_size",
        "body_sent",
        "request_complete",
        "started",
        "response_started",
        "response_complete",
        "discard",
        "conn",
        "connect_task",
        "address",
        "handle",
        "retries",
        "reused",
        "stale_retried",
        "upgrade",
        "t_begin",
        "t_try",
        "t_sent",
        "t_headers",
        "current_try",
        "set_cookie",
        "replay",
        "replay_size",
        "status",
        "series",
        "url",
    )

    def __init__(self, method: bytes, http10: bool, close_after: bool, t_begin: int = 0) -> None:
        self.method = method
        self.is_head = method == b"HEAD"
        self.http10 = http10
        #: Close the client connection once this exchange is done.
        self.close_after = close_after
        self.host_header: bytes | None = None
        self.upstream_path = b"/"
        #: Upstream request headers after Host, ending with the blank line.
        self.head_tail = b""
        self.service: CompiledService | None = None
        self.preserve_host = False
        self.error: _ErrorKey | None = None
        #: The ``Location`` of a redirect answer (``error`` is one of ``REDIRECTS``).
        self.redirect: bytes | None = None
        self.has_body = False
        self.chunked = False
        self.expect_continue = False
        #: Request body received but not yet written upstream (already framed).
        self.body: list[bytes] = []
        self.body_size = 0
        self.body_sent = False
        self.request_complete = False
        self.started = False
        self.response_started = False
        self.response_complete = False
        #: Drop further request body bytes (answered already, or upstream gone).
        self.discard = False
        self.conn: UpstreamSide | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.address: Address | None = None
        self.handle: BalancerHandle | None = None
        self.retries = 0
        self.reused = False
        self.stale_retried = False
        #: An upgrade request (``Connection: upgrade`` + ``Upgrade``): tunnel on a 101.
        self.upgrade = False
        # Monotonic ns: first request byte parsed, pick of the current try, request head
        # written to the target, response head received (0 = not yet, for this try).
        self.t_begin = t_begin
        self.t_try = 0
        self.t_sent = 0
        self.t_headers = 0
        #: The open try on the upstream (``None`` when no try is open or the service
        #: has no upstream); :meth:`end_try` settles it.
        self.current_try: Try | None = None
        #: A ``Set-Cookie`` header line (with CRLF) to add to the response, from
        #: cookie-based consistent hashing.
        self.set_cookie: bytes | None = None
        #: Every framed request body piece received so far, kept so that an idempotent
        #: request can be sent again to another target after a failed try; ``None`` when
        #: not replayable (no body, a non-idempotent method, or more than
        #: :data:`BODY_BUFFER_LIMIT` bytes).
        self.replay: list[bytes] | None = None
        self.replay_size = 0
        #: The status of the current try's response head (0 until it arrives).
        self.status = 0
        #: Where this request is counted (its route's; ``None``: no route matched).
        self.series: RouteSeries | None = None
        #: The request target as the client sent it (for the access log).
        self.url = b""


    def repeat(self, t_begin: int) -> _Exchange:
        """A new exchange for the same request, byte for byte, read on the same
        connection and config (``_ClientConnection._remember_plain``): this one's head
        and routing, fresh state, request complete. Only for a plain exchange (no body,
        no error, keep-alive, no hash key); read before it was started."""
        ex = _Exchange(self.method, self.http10, self.close_after, t_begin)
        ex.host_header = self.host_header
        ex.upstream_path = self.upstream_path
        ex.head_tail = self.head_tail
        ex.service = self.service
        ex.preserve_host = self.preserve_host
        ex.series = self.series
        ex.url = self.url
        ex.request_complete = True
        return ex

    def end_try(self, failed: bool, timed_out: bool = False, aborted: bool = False) -> None:
        """Settle the open try, if any (:meth:`Try.end`): ``failed`` when no response
        head came (``timed_out`` says how); an ``aborted`` try (the client went away, or
        the proxy answered itself) is no verdict on the target."""
        current = self.current_try
        if current is not None:
            self.current_try = None
            current.end(failed, self.status, self.t_headers, timed_out, aborted)

    def end_request(self) -> None:
        """The exchange is finished: release its count in the upstream's retry budget."""
        handle = self.handle
        if handle is not None and handle.budget is not None:
            end_request(handle)

    def abandon(self) -> None:
        """Nothing more of this exchange goes to a target: cancel its connect, close its
        upstream connection (it may hold part of the request, so it is never pooled),
        and end its try as aborted and its retry-budget count. Idempotent."""
        task = self.connect_task
        if task is not None:
            self.connect_task = None
            task.cancel()
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.abandon()
        if self.current_try is not None:
            self.end_try(self.t_headers == 0, aborted=True)
        self.end_request()


def _hash_key(
    ex: _Exchange,
    match: RouteMatch[CompiledService],
    fields: list[tuple[bytes, bytes]],
    url: bytes,
    peer_ip: bytes,
) -> None:
    """Compute the consistent-hashing key of ``ex`` before its first pick.

    Called by ``dispatch._Dispatch._route``, while the request head (its ``fields``, its
    origin-form ``url``, the client's ``peer_ip``) and the route match (regex captures)
    are at hand. Stores the key in a fresh ``ex.handle`` and, when a cookie was
    generated, the ``Set-Cookie`` line in ``ex.set_cookie``. Only what the upstream's
    :class:`HashSpec` reads is gathered; nothing happens without a spec.
    """
    service = match.service
    upstream = service.upstream if service is not None else None
    spec = upstream.hash_spec if upstream is not None else None
    if spec is None:
        return
    needs = spec.needs
    inputs = HashInputs()
    if "client_ip" in needs:
        inputs.client_ip = peer_ip.decode("ascii", "surrogateescape")
    if "path" in needs or "query" in needs:
        q = url.find(b"?")
        if q >= 0:
            inputs.path, inputs.query = url[:q], url[q + 1 :]
        else:
            inputs.path = url
    if "headers" in needs:
        headers: dict[bytes, bytes] = {}
        cookie: bytes | None = None
        for name, value in fields:
            lname = name.lower()
            if lname == b"cookie":
                # Several Cookie headers are one list (RFC 6265 5.4), joined by "; ".
                cookie = value if cookie is None else cookie + b"; " + value
            elif lname in headers:
                headers[lname] += b", " + value
            else:
                headers[lname] = value
        inputs.headers = headers
        inputs.cookie_header = cookie
    if "captures" in needs:
        inputs.captures = match.captures
    key, set_cookie = spec.key_for(inputs)
    ex.handle = BalancerHandle(key)
    if set_cookie is not None:
        ex.set_cookie = b"Set-Cookie: " + set_cookie + _CRLF

def _upstream_host(ex: _Exchange, service: CompiledService, address: Address) -> bytes:
    """The Host header sent to ``address``: the client's (``preserve_host``), else the
    upstream's ``host_header``, else the target's name (with its port unless it is the
    scheme's default), as Kong sends."""
    if ex.preserve_host and ex.host_header is not None:
        return ex.host_header
    if service.host_header is not None:
        return service.host_header
    if address.port == service.default_port:
        return address.host_bytes
    return address.key_bytes
