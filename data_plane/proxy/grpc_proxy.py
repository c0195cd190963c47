"""gRPC proxying: an HTTP/2 client stream whose route speaks ``grpc``/``grpcs`` is
proxied over HTTP/2 to a target, as one :class:`GrpcCall`.

Contract:

- :func:`grpc_call_for` is asked by :class:`~data_plane.proxy.http2.Http2Connection`
  for each new request stream. It reads the config once; when the stream matches a
  gRPC route (or matches nothing and says ``content-type: application/grpc``) it
  returns a :class:`GrpcCall` that owns the stream, else ``None`` (the stream goes the
  HTTP/1.1 way, :mod:`data_plane.proxy.http2_stream`).
- Kong's mismatches (``kong/runloop/handler.lua``): a non-gRPC request on a gRPC route
  is answered 415 "Non-gRPC request matched gRPC route" (JSON); a plaintext call on a
  ``grpcs``-only route ``grpc-status`` 1 "gRPC request matched gRPCs route". HTTP/1.1
  requests never get here: on a gRPC route ``dispatch`` answers them 426 "Please use
  HTTP2 protocol" (gRPC content-type) or 415.
- A call picks its target as the HTTP path does (:mod:`data_plane.upstream_try`:
  ``begin_try`` / ``Try.end`` / ``allow_retry`` / ``end_request``; a service without
  upstream uses its fixed address), opens a stream on the proxy's
  :class:`~data_plane.h2_upstream.H2UpstreamPool` (h2c for ``grpc``, TLS + ALPN ``h2``
  with the service's ``upstream_tls`` for ``grpcs``) and relays both ways: request
  DATA is acknowledged to the client (its windows reopened) only once the target took
  it, response DATA waits for the client's windows (past :data:`HIGH_WATER` bytes the
  target is read no further), and the response's trailers (``grpc-status``,
  ``grpc-message``) go back as trailers. Unary and streaming calls are all one shape.
- A connect failure (refused, TLS, timeout) is retried on another target up to the
  service's ``retries``; once the request headers reached a target, never.
- The proxy's own errors are trailers-only gRPC answers (``grpc_status.error_headers``):
  no route 404 → NOT_FOUND, no service / no healthy target 503 → UNAVAILABLE, connect
  failure after retries 502 → UNKNOWN (Kong's table), timeout 504 → DEADLINE_EXCEEDED.
  A target lost after the response headers went out ends the call with trailers
  ``grpc-status`` 14 UNAVAILABLE.
- Deadlines: ``grpc-timeout`` bounds the whole call; the time left is forwarded to the
  target; at expiry the target's stream is reset (CANCEL) and the client gets
  DEADLINE_EXCEEDED. Without it: ``connect_timeout`` for connecting and ``read_timeout``
  between the target's frames (``write_timeout`` for each request DATA sent).
- Passive health: connect/TLS failures and resets count as tcp failures, timeouts as
  timeouts, and a call ending with ``grpc-status`` 14 or 13 as HTTP 503 / 500 (Kong's
  table read backwards), so ``healthchecks.passive.unhealthy.http_statuses`` apply.
- Metrics: the route's series counts the call with its HTTP status (200), or the local
  answer's status.

All on the proxy's one event loop; nothing here is thread-safe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Final, TypeVar

from data_plane import grpc_status
from data_plane.balancers import Address, BalancerHandle
from data_plane.h2_upstream import H2StreamError, H2Target, H2UpstreamPool
from data_plane.overload import CAP_MAX_REQUESTS
from data_plane.proxy.errors import E_NO_ROUTE, E_NO_SERVICE, E_NOT_GRPC, E_OVERLOADED
from data_plane.proxy.grpc_request import target_headers, upstream_authority
from data_plane.proxy.http2_stream import HOP_BY_HOP
from data_plane.request_metrics import RouteSeries
from data_plane.router import RouteMatch
from data_plane.runtime import CompiledService
from data_plane.upstream_tls import server_name
from data_plane.upstream_try import Try, allow_retry, begin_try, end_request

if TYPE_CHECKING:
    from data_plane.h2_upstream import H2Stream
    from data_plane.proxy.http2 import Http2Connection
    from data_plane.proxy.server import ProxyServer

log = logging.getLogger(__name__)

Header = tuple[bytes, bytes]
T = TypeVar("T")

#: Response bytes held per call before the target is read no further (and resumed
#: under the low mark): the client's window bounds what the proxy keeps.
HIGH_WATER: Final = 64 * 1024
LOW_WATER: Final = 16 * 1024

#: Kong's table read backwards, for passive health: the HTTP status a call ending with
#: this ``grpc-status`` counts as.
_HEALTH_STATUS: Final = {grpc_status.UNAVAILABLE: 503, grpc_status.INTERNAL: 500}
#: On a call refused by an upstream's ``max_requests`` (UNAVAILABLE), as on HTTP/1.1.
_OVERLOADED_HEADER: Final = (b"x-ferry-overloaded", b"true")


def pool_of(server: ProxyServer) -> H2UpstreamPool:
    """The proxy's one HTTP/2 upstream pool (made on first use, closed by ``stop``)."""
    pool = server.grpc_pool
    if pool is None:
        pool = server.grpc_pool = H2UpstreamPool()
    return pool


def _is_grpc(content_type: bytes | None) -> bool:
    return content_type is not None and content_type.startswith(b"application/grpc")


def grpc_call_for(
    owner: Http2Connection, stream_id: int, headers: list[Header], has_body: bool
) -> GrpcCall | None:
    """The :class:`GrpcCall` that takes this request stream, or ``None`` (see the
    module docstring)."""
    config = owner.server.holder.current  # read once: the call uses this config
    content_type: bytes | None = None
    method = path = b""
    authority: bytes | None = None
    route_headers: dict[bytes, bytes | list[bytes]] = {}
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        elif name[:1] != b":":
            if name == b"content-type":
                content_type = value
            elif name == b"host" and authority is None:
                authority = value
            seen = route_headers.get(name)
            if seen is None:
                route_headers[name] = value
            elif isinstance(seen, list):
                seen.append(value)
            else:
                route_headers[name] = [seen, value]
    grpc = _is_grpc(content_type)
    if config is None or not (grpc or config.router.has_grpc):
        return None
    sni = owner.sni
    match = config.router.match(method, authority, path, route_headers, sni)
    if match is None:
        return GrpcCall(owner, stream_id, headers, has_body, None, authority) if grpc else None
    if not match.route.grpc:
        return None
    return GrpcCall(owner, stream_id, headers, has_body, match, authority)


class GrpcCall:
    """One gRPC call: a client stream of an :class:`Http2Connection` and its stream to
    a target. Offers the connection the surface of a
    :class:`~data_plane.proxy.http2_stream.StreamTransport` (request DATA in, response
    DATA waiting for windows out, trailers, resets)."""

    def __init__(
        self,
        owner: Http2Connection,
        stream_id: int,
        headers: list[Header],
        has_body: bool,
        match: RouteMatch[CompiledService] | None,
        authority: bytes | None,
    ) -> None:
        self._owner = owner
        self.stream_id = stream_id
        self._headers = headers
        self._match = match
        self._authority = authority
        self.request_ended = not has_body
        self.end_sent = False
        self.headers_sent = False
        self.response_ended = False
        self.closing = False
        #: Response DATA waiting for the client's windows, its size, and the trailers
        #: sent after it (the connection's ``send_pending`` sends them).
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.trailers: list[Header] | None = None
        #: Request DATA not yet taken by the target: (bytes, flow-controlled size).
        self._requests: deque[tuple[bytes, int]] = deque()
        #: Request DATA is still wanted (held for the target, or sent to it).
        self._forwarding = True
        self._request_ready = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._task: asyncio.Task[None] | None = None
        self._loop = owner.loop
        self._t_begin = self._loop.time()
        self._t_begin_ns = time.monotonic_ns()
        #: The target of the current try and the number of tries (the access log's).
        self._address: Address | None = None
        self._tries = 0
        self._series: RouteSeries | None = (
            owner.server.metrics.for_route(match.route) if match is not None else None
        )

    # ------------------------------------------------- the connection's surface

    def start(self) -> None:
        self._task = self._loop.create_task(self._run())

    def request_data(self, data: bytes, flow_size: int) -> None:
        if not self._forwarding:
            # Nothing takes request DATA any more (answered, or the relay ended):
            # dropped, its window given back at once (the connection flushes).
            self._owner.acknowledge(self.stream_id, flow_size)
            return
        self._requests.append((data, flow_size))
        self._request_ready.set()

    def request_end(self) -> None:
        self._request_ready.set()

    def sent(self) -> None:
        if self.pending_size <= LOW_WATER:
            self._drained.set()

    def client_reset(self) -> None:
        """The client reset the stream (or its connection went): abandon the call."""
        self.response_ended = True
        self.end_sent = True
        self.pending.clear()
        self.pending_size = 0
        self.closing = True
        if self._task is not None:
            self._task.cancel()

    def abort(self) -> None:
        self.client_reset()

    # ------------------------------------------------------------- the call

    async def _run(self) -> None:
        try:
            await self._call()
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("gRPC call on stream %d failed", self.stream_id)
            if not self.headers_sent:
                self._answer(500, "An unexpected error occurred")
        finally:
            self.closing = True
            self._drop_unsent_requests()
            self._owner.stream_gone(self)

    def _drop_unsent_requests(self) -> None:
        """Request DATA never forwarded still counts in the client's connection window."""
        self._forwarding = False
        for _, flow in self._requests:
            self._owner.acknowledge(self.stream_id, flow)
        self._requests.clear()
        self._owner.flush()

    async def _call(self) -> None:
        match = self._match
        content_type = next((v for n, v in self._headers if n == b"content-type"), None)
        if match is None:
            self._answer(E_NO_ROUTE[0], E_NO_ROUTE[2])
            return
        if not _is_grpc(content_type):
            self._answer_json(E_NOT_GRPC[0], E_NOT_GRPC[2])
            return
        service = match.service
        if service is None:
            self._answer(E_NO_SERVICE[0], E_NO_SERVICE[2])
            return
        if match.route.grpcs_only and self._owner.sni is None:
            self._finish_local(200, _status_fields(grpc_status.CANCELLED, "gRPC request matched gRPCs route"))
            return
        timeout_value = next((v for n, v in self._headers if n == b"grpc-timeout"), None)
        timeout = grpc_status.parse_timeout(timeout_value) if timeout_value is not None else None
        deadline = self._t_begin + timeout if timeout is not None else None
        handle = BalancerHandle()
        try:
            await self._proxy(match, service, handle, deadline)
        finally:
            if service.upstream is not None:
                end_request(handle)

    async def _proxy(
        self, match: RouteMatch[CompiledService], service: CompiledService,
        handle: BalancerHandle, deadline: float | None,
    ) -> None:
        retries = 0
        pool = pool_of(self._owner.server)
        while True:
            current: Try | None = None
            upstream = service.upstream
            if upstream is not None:
                handle.retries = retries
                current = begin_try(upstream, handle)
                if current is None:
                    if handle.overloaded:  # every usable target is at max_requests
                        self._owner.server.metrics.count_overflow(upstream.name, CAP_MAX_REQUESTS)
                        self._finish_local(503, [
                            *grpc_status.error_headers(503, E_OVERLOADED[2]), _OVERLOADED_HEADER
                        ])
                        return
                    self._answer(503, "failure to get a peer from the ring-balancer")
                    return
                address = current.address
            else:
                assert service.address is not None
                address = service.address
            self._address, self._tries = address, retries + 1
            host = upstream_authority(match.route.preserve_host, self._authority, service, address)
            target = H2Target(
                address.host, address.port, service.upstream_tls,
                server_name(host.decode("ascii", "replace")) if service.upstream_tls is not None else None,
            )
            connect_timeout = service.connect_timeout
            if deadline is not None:
                connect_timeout = min(connect_timeout, deadline - self._loop.time())
            timed_out = False
            try:
                if connect_timeout <= 0:
                    raise TimeoutError
                stream = await pool.open_stream(
                    target,
                    target_headers(
                        self._headers, self._authority, service, host,
                        deadline - self._loop.time() if deadline is not None else None,
                        self._owner.transport_info,
                    ),
                    end_stream=self.request_ended and not self._requests,
                    connect_timeout=connect_timeout,
                )
            except asyncio.CancelledError:
                if current is not None:  # the client went away: no verdict on the target
                    current.end(True, 0, 0, False, True)
                raise
            except TimeoutError:
                timed_out = True
            except (OSError, ssl.SSLError, H2StreamError) as exc:
                log.info("gRPC call to %s failed to connect: %s", address.key, exc)
            else:
                await self._relay(stream, current, deadline, service)
                return
            if current is not None:
                current.end(True, 0, 0, timed_out)
            expired = deadline is not None and self._loop.time() >= deadline
            if (
                expired
                or retries >= service.retries
                or (upstream is not None and not allow_retry(upstream, handle))
            ):
                if timed_out:
                    self._answer(504, "The upstream server is timing out")
                else:
                    self._answer(502, "An invalid response was received from the upstream server")
                return
            retries += 1

    async def _relay(
        self, stream: H2Stream, current: Try | None, deadline: float | None, service: CompiledService
    ) -> None:
        """Relay the call on ``stream`` (its headers are sent) to its end."""
        t_sent = time.monotonic_ns()
        t_headers = 0
        pump = self._loop.create_task(self._pump(stream, deadline, service.write_timeout))
        failed, timed_out, stalled, status = False, False, False, grpc_status.OK
        try:
            try:
                headers = await self._timed(stream.response(), deadline, service.read_timeout)
                t_headers = time.monotonic_ns()
                status = await self._relay_response(
                    stream, headers, deadline, service.read_timeout, service.write_timeout
                )
            except _ClientStalled:
                # The client's windows stayed closed: drop the call (as a client that
                # reads nothing is dropped over HTTP/1.1); no verdict on the target.
                failed = stalled = True
                stream.cancel()
                self._owner.reset(self.stream_id, internal=True)
            except TimeoutError:
                failed = timed_out = True
                stream.cancel()
                self._fail_call(504, grpc_status.DEADLINE_EXCEEDED, "The upstream server is timing out")
            except H2StreamError as exc:
                failed = True
                log.info("gRPC call on stream %d: %s", self.stream_id, exc.reason)
                self._fail_call(502, grpc_status.UNAVAILABLE, "upstream connection lost: " + exc.reason)
        except asyncio.CancelledError:
            # The client went away: nothing of this call is a verdict on the target.
            stream.cancel()
            if current is not None:
                current.end(True, 0, 0, False, True)
            raise
        finally:
            pump.cancel()
            self._drop_unsent_requests()
        stream.cancel()  # no-op once both sides ended; stops a request still streaming
        if current is not None:
            http_status = _HEALTH_STATUS.get(status, 200)
            current.end(failed, 0 if failed else http_status, t_headers, timed_out, stalled)
        if not failed:
            now = time.monotonic_ns()
            if self._series is not None:
                self._series.observe_proxied(
                    200, (t_sent - self._t_begin_ns) // 1_000_000,
                    ((t_headers or now) - t_sent) // 1_000_000, (now - self._t_begin_ns) // 1_000_000,
                )
            self._log(200, "upstream", ((t_headers or now) - t_sent) // 1_000_000,
                      (t_sent - self._t_begin_ns) // 1_000_000)

    async def _timed(self, awaitable: Awaitable[T], deadline: float | None, seconds: float) -> T:
        """Await ``awaitable`` until the call's deadline, or for ``seconds`` without one
        (``TimeoutError`` past it)."""
        limit = deadline if deadline is not None else self._loop.time() + seconds
        async with asyncio.timeout_at(limit):
            return await awaitable

    async def _pump(self, stream: H2Stream, deadline: float | None, write_timeout: float) -> None:
        """Client request DATA → the target, acknowledged to the client as the target
        takes it (so the client's windows bound what waits here); then the request's end."""
        owner = self._owner
        try:
            while True:
                while self._requests:
                    data, flow = self._requests[0]
                    if data:
                        await self._timed(stream.send(data), deadline, write_timeout)
                    self._requests.popleft()
                    owner.acknowledge(self.stream_id, flow)
                    owner.flush()
                if self.request_ended:
                    await stream.end()
                    return
                self._request_ready.clear()
                await self._request_ready.wait()
        except (H2StreamError, TimeoutError) as exc:
            # The response side learns of it from the stream (reset below).
            log.info("gRPC call on stream %d: request relay stopped: %s", self.stream_id, exc)
            stream.cancel()

    async def _relay_response(
        self, stream: H2Stream, headers: list[Header], deadline: float | None,
        read_timeout: float, write_timeout: float,
    ) -> int:
        """Relay the target's response (headers, DATA, trailers); returns its
        ``grpc-status``."""
        status = next((v for n, v in headers if n == b":status"), b"")
        named = {t.strip().lower() for n, v in headers if n == b"connection" for t in v.split(b",")}
        fields = [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]
        grpc_code = _grpc_code(fields)
        if status != b"200" and grpc_code is None:
            # A target that answered HTTP, not gRPC: the gRPC spec's mapping.
            code = grpc_status.status_for_target_http(int(status) if status.isdigit() else 0)
            self._finish_local_code(code, f"upstream answered HTTP {status.decode('ascii', 'replace')}")
            return code
        if grpc_code is not None:
            # Trailers-only: the whole answer is this one HEADERS frame.
            self._send_headers(fields, end=True)
            return grpc_code
        self._send_headers(fields, end=False)
        while True:
            chunk = await self._timed(stream.read(), deadline, read_timeout)
            if not chunk:
                break
            self.pending.append(chunk)
            self.pending_size += len(chunk)
            self._owner.send_pending(self)
            if self.pending_size > HIGH_WATER:
                self._drained.clear()
                try:
                    async with asyncio.timeout(write_timeout):
                        await self._drained.wait()
                except TimeoutError:
                    raise _ClientStalled from None
        trailers = [(n, v) for n, v in stream.trailers or () if n not in HOP_BY_HOP]
        self.trailers = trailers or None
        self.response_ended = True
        self._owner.send_pending(self)
        final = _grpc_code(trailers)
        return grpc_status.UNKNOWN if final is None else final

    # -------------------------------------------------------------- answers

    def _send_headers(self, fields: list[Header], *, end: bool) -> None:
        self.headers_sent = True
        if end:
            self.response_ended = True
        self._owner.send_headers(self, fields, end)

    def _fail_call(self, http_status: int, code: int, message: str) -> None:
        """End a call that failed after its try began: trailers-only when nothing was
        sent yet (Kong's status for ``http_status``), else trailers with ``code``."""
        if not self.headers_sent:
            self._finish_local(http_status, _status_fields(code, message))
            return
        if self.response_ended:
            return
        self.trailers = [
            (b"grpc-status", b"%d" % code),
            (b"grpc-message", grpc_status.encode_message(message)),
        ]
        self.response_ended = True
        self._owner.send_pending(self)
        if self._series is not None:
            self._series.observe_local(http_status, self._elapsed_ms())
        self._log(http_status, "ferry")

    def _answer(self, http_status: int, message: str) -> None:
        """A trailers-only answer for a proxy error (Kong's HTTP → gRPC table)."""
        self._finish_local(http_status, grpc_status.error_headers(http_status, message))

    def _finish_local_code(self, code: int, message: str) -> None:
        self._finish_local(502, _status_fields(code, message))

    def _finish_local(self, http_status: int, fields: list[Header]) -> None:
        if self.headers_sent:
            return
        series = self._series or self._owner.server.metrics.unmatched
        series.observe_local(http_status, self._elapsed_ms())
        self._log(http_status, "ferry")
        self._send_headers(fields, end=True)

    def _answer_json(self, http_status: int, message: str) -> None:
        """A plain JSON error (Kong's answer to a non-gRPC request on a gRPC route)."""
        series = self._series or self._owner.server.metrics.unmatched
        series.observe_local(http_status, self._elapsed_ms())
        self._log(http_status, "ferry")
        body = json.dumps({"message": message}).encode()
        self._send_headers([
            (b":status", b"%d" % http_status),
            (b"content-type", b"application/json; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
        ], end=False)
        self.pending.append(body)
        self.pending_size += len(body)
        self.response_ended = True
        self._owner.send_pending(self)

    def _log(self, status: int, source: str, upstream_ms: int | None = None,
             proxy_ms: int | None = None) -> None:
        """One access-log record for the call (only with ``--access-log``); the
        request line shows the client's ``:method`` and ``:path``."""
        access_log = self._owner.server.access_log
        if access_log is None:
            return
        peer = self._owner.transport_info("peername")
        address = self._address
        series = self._series
        access_log.record(
            client_ip=str(peer[0]).encode() if isinstance(peer, tuple) else b"",
            method=next((v for n, v in self._headers if n == b":method"), b""),
            uri=next((v for n, v in self._headers if n == b":path"), b""),
            http10=False,
            status=status,
            source=source,
            upstream=(getattr(address, "endpoint", "") or address.key) if address is not None else None,
            service=series.service or None if series is not None else None,
            route=series.route or None if series is not None else None,
            tries=self._tries,
            request_ms=self._elapsed_ms(),
            upstream_ms=upstream_ms,
            proxy_ms=proxy_ms,
        )

    def _elapsed_ms(self) -> int:
        return (time.monotonic_ns() - self._t_begin_ns) // 1_000_000


class _ClientStalled(Exception):
    """The client admitted no response DATA for the service's ``write_timeout``."""


def _grpc_code(fields: list[Header]) -> int | None:
    value = next((v for n, v in fields if n == b"grpc-status"), None)
    return int(value) if value is not None and value.isdigit() else None


def _status_fields(code: int, message: str) -> list[Header]:
    """A trailers-only answer with ``code`` (the proxy's own choice of status)."""
    return [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", b"%d" % code),
        (b"grpc-message", grpc_status.encode_message(message)),
    ]
