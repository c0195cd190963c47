"""The data plane's HTTP/1.1 reverse proxy on ``asyncio.Protocol`` + ``httptools``.

Why not a web framework: on this project's hardware an aiohttp server + client proxy
spent ~200-250 us of CPU per request (0.12x nginx) while raw protocols with httptools'
llhttp parsers under uvloop spent ~22-28 us (0.85-1.0x nginx) -- see
docs/performance.md; the contract at the edge (what is refused, and that nothing
refused reaches a target) is in docs/operations.md.

Modules (all on one event loop; nothing here is thread-safe), in the shape of uvicorn's
``protocols/http/`` and httpcore:

- :mod:`.server`: :class:`ProxyServer` listens and owns what connections share (the
  :class:`~data_plane.upstream_pool.UpstreamPool`, error answers, metrics); and
  :class:`ClientTimeouts`.
- :mod:`.client`: ``_ClientConnection`` (one per client TCP connection) parses requests
  with ``HttpRequestParser`` and classifies each head; :mod:`.dispatch` is its other half
  (one class, two modules): routing, the FIFO of exchanges, the tries of each, the
  proxy's own answers. Pipelined requests are answered in order.
- :mod:`.exchange`: ``_Exchange``, one request/response pair, and its methods that end
  its try, its retry-budget count, or the whole exchange exactly once (the try itself
  is :class:`data_plane.upstream_try.Try`, the upstream's door).
- :mod:`.upstream`: ``_UpstreamConnection`` (one per upstream TCP connection, pooled
  between requests) parses responses with ``HttpResponseParser`` and forwards them to
  the client as they arrive.
- :mod:`.seam`: the two ``typing.Protocol`` interfaces between the client side and the
  upstream side (type checking only: calls go straight to the methods).
- :mod:`.headers`: header policy (hop-by-hop fields both ways, Host validation, size
  limit); :mod:`.errors`: the error keys and their precomputed answers.
- :mod:`.http2` and :mod:`.http2_stream` (not compiled): HTTP/2 from clients on
  listeners with Kong's ``http2`` flag (ALPN ``h2``, h2c with prior knowledge); each
  stream drives its own ``_ClientConnection`` through an in-memory transport, so
  everything above applies to it unchanged (docs/http2-grpc.md).

Bodies stream in both directions: request body chunks go straight to the upstream
transport once connected (buffered up to :data:`BODY_BUFFER_LIMIT` before), response
chunks straight to the client. Flow control uses the transports' write-buffer
watermarks: when one side's ``pause_writing`` fires, reading from the other side
pauses until ``resume_writing``. So a slow client or upstream costs bounded memory.

Upgrades (WebSocket): a request with ``Connection: Upgrade`` + ``Upgrade`` is forwarded
with both headers and ends HTTP parsing on that client connection. When the target
answers ``101 Switching Protocols`` the proxy relays the 101 and then pipes raw bytes
both ways (same flow control, the service's ``read_timeout`` as idle timeout) until
either side closes; that upstream connection is never pooled. Any other answer is
relayed normally, with ``Connection: close``.

Response headers added: ``Via: 1.1 <via>`` and Kong's latency pair, named
``X-Ferry-Upstream-Latency`` (ms from writing the request head to the target until its
response head arrived) and ``X-Ferry-Proxy-Latency`` (ms from the first byte of the
request until its head was written to the target: routing, balancing, connecting,
waiting behind pipelined requests). Both are whole milliseconds, rounded down.

Hot path rules: no logging, no JSON, no per-request regex or string formatting beyond
joining precomputed byte strings; one ``transport.write`` per header block; no wrapper
or extra object between the modules (calls across them are plain function or method
calls).
"""

from data_plane.proxy.exchange import BODY_BUFFER_LIMIT
from data_plane.proxy.headers import MAX_HEADER_BYTES
from data_plane.proxy.server import ClientTimeouts, ProxyServer

__all__ = ["BODY_BUFFER_LIMIT", "MAX_HEADER_BYTES", "ClientTimeouts", "ProxyServer"]
