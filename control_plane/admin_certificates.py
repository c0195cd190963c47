"""The Admin API's TLS paths: ``/certificates`` (with the ``snis`` shorthand and SNI
names in paths), ``/certificates/{c}/snis``, ``/snis`` and ``/ca_certificates``.

HTTP only, as :mod:`control_plane.admin_api`, which mounts :func:`certificate_routes`;
certificates go through :class:`~control_plane.certificate_service.CertificateService`,
SNIs and CA certificates through the Admin API's generic entity handlers.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import quote

from aiohttp import web

from control_plane.admin_openapi import AdminRoute, Handler
from control_plane.admin_requests import page_body, read_body
from control_plane.certificate_service import CertificateService

#: Builds the GET/POST (collection) or GET/PATCH/PUT/DELETE (entity) handlers of a kind:
#: ``(kind, path parameter) -> handlers``.
HandlerFactory = Callable[[str, str], dict[str, Handler]]
#: Answers JSON: ``(data, status) -> response``.
JsonAnswer = Callable[..., web.Response]


def certificate_routes(
    certificates: CertificateService,
    collection: HandlerFactory,
    entity: HandlerFactory,
    answer: JsonAnswer,
) -> list[AdminRoute]:
    """The routes of the TLS entities, in matching order."""

    async def list_certificates(request: web.Request) -> web.StreamResponse:
        return answer(page_body(request, await certificates.list_all(), "/certificates"))

    async def create_certificate(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, "certificates")
        return answer(await certificates.create(body), 201)

    async def get_certificate(request: web.Request) -> web.StreamResponse:
        found = await certificates.require(request.match_info["certificate"])
        return answer(await certificates.shown(found))

    async def patch_certificate(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, "certificates")
        return answer(await certificates.update(request.match_info["certificate"], body))

    async def put_certificate(request: web.Request) -> web.StreamResponse:
        body = await read_body(request, "certificates")
        return answer(await certificates.upsert(request.match_info["certificate"], body))

    async def delete_certificate(request: web.Request) -> web.StreamResponse:
        await certificates.delete(request.match_info["certificate"])
        return web.Response(status=204)

    async def list_snis_of(request: web.Request) -> web.StreamResponse:
        key = request.match_info["certificate"]
        certificate = await certificates.require(key)
        snis = await certificates.store.list_children("snis", "certificate", certificate["id"])
        return answer(page_body(request, snis, f"/certificates/{quote(key, safe='')}/snis"))

    async def create_sni_of(request: web.Request) -> web.StreamResponse:
        certificate = await certificates.require(request.match_info["certificate"])
        body = await read_body(request, "snis")
        body["certificate"] = {"id": certificate["id"]}
        return answer(await certificates.entities.create("snis", body), 201)

    return [
        AdminRoute(
            "/certificates",
            {"GET": list_certificates, "POST": create_certificate},
            "Certificates (each with its SNI names, `snis`)",
            "Certificate",
            True,
        ),
        AdminRoute(
            "/certificates/{certificate}",
            {
                "GET": get_certificate,
                "PATCH": patch_certificate,
                "PUT": put_certificate,
                "DELETE": delete_certificate,
            },
            "One certificate by id or by one of its SNI names",
            "Certificate",
        ),
        AdminRoute(
            "/certificates/{certificate}/snis",
            {"GET": list_snis_of, "POST": create_sni_of},
            "SNIs of a certificate",
            "Sni",
            True,
        ),
        AdminRoute("/snis", collection("snis", "sni"), "SNIs", "Sni", True),
        AdminRoute("/snis/{sni}", entity("snis", "sni"), "One SNI by id or name", "Sni"),
        AdminRoute(
            "/ca_certificates",
            collection("ca_certificates", "ca_certificate"),
            "CA certificates",
            "CaCertificate",
            True,
        ),
        AdminRoute(
            "/ca_certificates/{ca_certificate}",
            entity("ca_certificates", "ca_certificate"),
            "One CA certificate by id",
            "CaCertificate",
        ),
    ]
