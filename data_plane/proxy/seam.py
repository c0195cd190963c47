"""The seam between the client side and the upstream side of the proxy, typed.

Contract: while an :class:`~data_plane.proxy.upstream._UpstreamConnection` is bound to
an exchange, the two sides talk only through these two interfaces: the upstream
connection calls :class:`ClientSide` on its client connection (implemented by
:class:`~data_plane.proxy.dispatch._Dispatch`, the exchange-flow half of
``_ClientConnection``), and the client side calls :class:`UpstreamSide` on the
connection bound to its exchange (``_Exchange.conn``, implemented by
``_UpstreamConnection``). Both sides are on the proxy's one event loop; every call is
synchronous and none may re-enter the caller's parser (each side defers what it must:
the client advances its FIFO, the upstream connection flushes after a parsed read).

These are :class:`typing.Protocol` classes for the type checker only: calls go straight
to the concrete methods (no wrapper, no ``isinstance`` check), so the hot path is as it
was when both sides were one module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from data_plane.proxy.exchange import _Exchange
    from data_plane.runtime import CompiledService


class ClientSide(Protocol):
    """What an upstream connection calls on the client connection it is bound to."""

    def upstream_failed(
        self, ex: _Exchange, conn: UpstreamSide, timed_out: bool, invalid: bool = False
    ) -> None:
        """``conn`` (bound to ``ex``, now unbound) closed, timed out or sent garbage
        (``invalid``) before the response ended: retry, answer 502/504, or cut short."""
        ...

    def response_write(self, data: list[bytes | memoryview]) -> None:
        """Relay response bytes (head and/or body pieces) in one write."""
        ...

    def response_done(self, ex: _Exchange) -> None:
        """The response to ``ex`` was relayed completely (``conn`` already unbound)."""
        ...

    def start_tunnel(self, ex: _Exchange, conn: UpstreamSide) -> None:
        """The target answered ``ex``'s upgrade with 101 (relayed): pipe raw bytes."""
        ...

    def tunnel_write(self, data: bytes) -> None:
        """Relay raw tunnel bytes from the target."""
        ...

    def upstream_write_paused(self, paused: bool) -> None:
        """The upstream transport's write buffer filled (``True``) or drained: pause or
        resume reading the client."""
        ...


class UpstreamSide(Protocol):
    """What the client side calls on the upstream connection bound to an exchange."""

    #: Some byte of a response arrived since :meth:`bind` (a reused connection that
    #: closes before any did was closed by the target while idle: retried once).
    got_response_bytes: bool

    def bind(self, client: ClientSide, ex: _Exchange, service: CompiledService) -> None:
        """Serve ``ex`` for ``client`` (arms the service's read/write timeouts)."""
        ...

    def send_head(self, head: bytes, body: list[bytes] | None) -> None:
        """Write the request head and any buffered body in one write."""
        ...

    def send_body(self, data: bytes | list[bytes]) -> None:
        """Write request body bytes (already framed), or raw tunnel bytes."""
        ...

    def request_sent(self) -> None:
        """The whole request is written (buffered) upstream."""
        ...

    def pause_reading_for_client(self) -> None:
        """The client's write buffer is full: stop reading the target."""
        ...

    def resume_reading_for_client(self) -> None:
        """The client drained: read the target again."""
        ...

    def abandon(self) -> None:
        """The exchange no longer wants this connection (mid-request): drop it now."""
        ...

    def end_tunnel(self) -> None:
        """The client side of a tunnel closed: close after writing what is buffered."""
        ...
