"""Active health probes over real sockets: HTTP/HTTPS with aiohttp, TCP with a connect.

What Kong's balancer sends (lua-resty-healthcheck): ``GET <http_path> HTTP/1.1`` with
``Host`` = the upstream's ``host_header`` or the target's host name, the configured
extra headers and ``Connection: close``; the connection is not reused. Classification:
a timeout (connect, send or receive within ``timeout``) is a timeout; any other socket
or TLS error a TCP failure; a status in ``unhealthy.http_statuses`` an HTTP failure, in
``healthy.http_statuses`` a success, any other status is ignored. A ``tcp`` probe is a
success when the connection opens.

``https`` probes use the upstream's TLS identity compiled into the settings
(``ActiveSettings.tls``, :mod:`data_plane.upstream_tls`): its ``client_certificate``
is presented, and with ``https_verify_certificate`` the target's certificate is
verified against the config's CA certificates and the system store, for the server
name ``https_sni`` or else the probe's Host without port (an IP literal: no SNI, the
certificate's IP addresses checked).
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp

from data_plane.balancers import Address
from data_plane.health.checker import ProbeOutcome
from data_plane.health.settings import ActiveSettings
from data_plane.upstream_tls import TlsEntities, server_name

__all__ = ["ActiveProber"]


class ActiveProber:
    """Sends the probes of one upstream's active checks.

    ``session`` is shared by all probers of a data plane (owned by the health
    supervisor; its connector must not keep connections alive). Safe to use from
    concurrent tasks on one event loop.
    """

    def __init__(
        self, settings: ActiveSettings, session: aiohttp.ClientSession, *, user_agent: str
    ) -> None:
        self._settings = settings
        self._session = session
        # The User-Agent names the probing node, so a target's logs show which data
        # plane probes it (with health-check sharding, only K of them do).
        self._headers = [("User-Agent", user_agent), *settings.headers, ("Connection", "close")]
        self._ssl: ssl.SSLContext | None = None
        if settings.type == "https":
            tls = settings.tls
            if tls is None:  # settings not compiled with an upstream: no certificates
                tls = TlsEntities().for_probes(
                    verify=settings.https_verify_certificate, client_certificate_id=None
                )
            self._ssl = tls.context

    async def probe(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        settings = self._settings
        try:
            async with asyncio.timeout(settings.timeout):
                if settings.type == "tcp":
                    _, writer = await asyncio.open_connection(address.host, address.port)
                    writer.close()
                    return "success", 0
                return await self._http(address, host)
        except TimeoutError:
            return "timeout", 0
        except (OSError, aiohttp.ClientError, ssl.SSLError):
            return "tcp_failure", 0

    async def _http(self, address: Address, host: str) -> tuple[ProbeOutcome, int]:
        settings = self._settings
        scheme = "https" if settings.type == "https" else "http"
        netloc = f"[{address.host}]" if ":" in address.host else address.host
        url = f"{scheme}://{netloc}:{address.port}{settings.http_path}"
        headers = [("Host", host), *self._headers]
        server_hostname = None
        if self._ssl is not None:
            server_hostname = settings.https_sni or server_name(host)
        async with self._session.get(
            url,
            headers=headers,
            ssl=self._ssl if self._ssl is not None else False,
            server_hostname=server_hostname,
            allow_redirects=False,
        ) as response:
            status = response.status
        if status in settings.unhealthy_statuses:
            return "http_failure", status
        if status in settings.healthy_statuses:
            return "success", status
        if settings.unhealthy_other_statuses:
            return "http_failure", status  # Ferry's other_statuses (Kong #14861)
        return "ignored", status
