"""Certificates with their ``snis`` shorthand: Kong's certificates DAO in Ferry's terms.

A certificate is stored without SNI names; its names are ``snis`` entities pointing
at it. This module owns what Kong's certificates DAO adds over a plain entity:

* Reading a certificate (one, a list) adds ``snis``: the names of its SNI
  entities, sorted (``[]`` when none).
* A write with ``snis`` (a list of names; ``null`` means none) validates the names
  (Kong's wildcard rules; a name twice: ``"<name> is duplicated"``; a name of another
  certificate: ``"<name> already associated with existing certificate '<id>'"``, a
  400 as Kong), then writes the certificate, creates the missing SNIs and deletes
  the ones no longer listed, all in one store script (one version): a data plane
  never sees a certificate without its names, nor a name on the wrong certificate.
  Without ``snis`` a write leaves the certificate's SNIs alone.
* ``/certificates/{name}``: a certificate is addressable by one of its SNI names; a
  PUT by a name no SNI has creates a certificate with that name, as Kong.

Consistency: a write with ``snis`` reads the configuration version first and applies
its plan only if the version did not move (:meth:`EntityStore.replace_config`);
otherwise it re-reads and retries (``CAS_ATTEMPTS``), then answers 503.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from control_plane.entity_service import CAS_ATTEMPTS, EntityService, Finder, Found, now
from control_plane.errors import NotFound, PrimaryKeyViolation, SchemaViolation, StoreUnavailable
from control_plane.schemas import is_uuid, merge_patch, validate_entity
from control_plane.store import ConfigChanged
from ferry_shared.certificates import sni_name_problem

#: A body without ``snis``: the certificate's SNIs are left as they are.
_ABSENT: Any = object()


def sni_names(value: Any) -> list[str] | None:
    """The ``snis`` shorthand checked and normalised (lower-cased, sorted); None when absent.

    ``null`` is the empty list; a form's single ``snis=a`` is ``["a"]``. Raises
    :class:`SchemaViolation` with Kong's messages.
    """
    if value is _ABSENT:
        return None
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise SchemaViolation({"snis": "expected a set"})
    problems: list[str | None] = []
    for name in value:
        problems.append("expected a string" if not isinstance(name, str) else sni_name_problem(name))
    if any(problems):
        raise SchemaViolation({"snis": problems})
    names = [name.lower() for name in value]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise SchemaViolation({"snis": f"{name} is duplicated"})
        seen.add(name)
    return sorted(names)


class CertificateService:
    """Certificates and their SNI names over one :class:`EntityService`."""

    def __init__(self, entities: EntityService) -> None:
        self.entities = entities
        self.store = entities.store

    # -- reads

    async def names_of(self, certificate_id: str) -> list[str]:
        """The SNI names of a certificate, sorted."""
        snis = await self.store.list_children("snis", "certificate", certificate_id)
        return sorted(sni["name"] for sni in snis)

    async def shown(self, certificate: dict[str, Any]) -> dict[str, Any]:
        """The certificate as the Admin API shows it: with its ``snis`` names."""
        return {**certificate, "snis": await self.names_of(certificate["id"])}

    async def list_all(self) -> list[dict[str, Any]]:
        """Every certificate with its ``snis``, ordered by id (one read of all SNIs)."""
        certificates = await self.store.list_all("certificates")
        names: dict[str, list[str]] = {}
        for sni in await self.store.list_all("snis"):
            names.setdefault(sni["certificate"]["id"], []).append(sni["name"])
        return [{**c, "snis": sorted(names.get(c["id"], []))} for c in certificates]

    async def find(self, key: str) -> Found | None:
        """The certificate named by ``key``: its id, or one of its SNI names."""
        certificate_id: str | None = key if is_uuid(key) else None
        if certificate_id is None:
            sni_id = await self.store.id_by_unique("snis", "name", key.lower())
            sni = await self.store.get("snis", sni_id) if sni_id is not None else None
            certificate_id = sni["certificate"]["id"] if sni is not None else None
        if certificate_id is None:
            return None
        raw = await self.store.get_raw("certificates", certificate_id)
        return (json.loads(raw), raw) if raw is not None else None

    async def require(self, key: str) -> dict[str, Any]:
        """The certificate named by ``key``; :class:`NotFound` when there is none."""
        found = await self.find(key)
        if found is None:
            raise NotFound()
        return found[0]

    def finder(self, key: str) -> Finder:
        """A :data:`Finder` of the certificate ``key`` names (for compare-and-set retries)."""
        return lambda: self.find(key)

    # -- writes

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST: a new certificate, with the SNIs its ``snis`` lists."""
        body = dict(body)
        names = sni_names(body.pop("snis", _ABSENT))
        if names is None:
            return await self.shown(await self.entities.create("certificates", body))
        return await self._write_with_names(body, names, None, create=True)

    async def update(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """PATCH: merge ``body``; ``snis`` (when given) replaces the certificate's names."""
        body = dict(body)
        names = sni_names(body.pop("snis", _ABSENT))
        if names is None:
            return await self.shown(await self.entities.update("certificates", self.finder(key), body))
        return await self._write_with_names(body, names, key, merge=True)

    async def upsert(self, key: str, body: dict[str, Any]) -> dict[str, Any]:
        """PUT: create or replace. By an SNI name no certificate has yet, the new
        certificate gets that name (added to ``snis`` when the body lists others)."""
        body = dict(body)
        names = sni_names(body.pop("snis", _ABSENT))
        if not is_uuid(key) and await self.find(key) is None:
            names = sni_names(sorted({*(names or []), key}))
            assert names is not None
        if names is None:
            found = await self.find(key)
            target = found[0]["id"] if found else key
            if not is_uuid(target):  # unreachable: a name always gets names above
                raise NotFound()
            entity = await self.entities.upsert("certificates", target, self.finder(key), body)
            return await self.shown(entity)
        return await self._write_with_names(body, names, key)

    async def _write_with_names(
        self,
        body: dict[str, Any],
        names: list[str],
        key: str | None,
        *,
        create: bool = False,
        merge: bool = False,
    ) -> dict[str, Any]:
        """The certificate and its SNI set, written in one store script."""
        for _ in range(CAS_ATTEMPTS):
            version = await self.store.current_version()
            found = await self.find(key) if key is not None else None
            if merge and found is None:
                raise NotFound()
            stamp = now()
            if merge and found is not None:
                candidate = merge_patch("certificates", found[0], body)
            else:
                candidate = dict(body)
            if found is not None:
                candidate["id"] = found[0]["id"]
                candidate["created_at"] = found[0]["created_at"]
                stamp = max(stamp, int(found[0].get("updated_at") or 0))
            else:
                if key is not None and is_uuid(key):
                    candidate["id"] = key
                candidate.setdefault("id", None)
                candidate["id"] = candidate["id"] or str(uuid.uuid4())
                if candidate.get("created_at") is None:
                    candidate["created_at"] = stamp
            candidate["updated_at"] = stamp
            certificate = validate_entity("certificates", candidate)
            certificate_id = certificate["id"]
            if create or found is None:
                if await self.store.get_raw("certificates", certificate_id) is not None:
                    raise PrimaryKeyViolation({"id": certificate_id})
            await self._check_names_free(names, certificate_id)
            current = {
                sni["name"]: sni
                for sni in await self.store.list_children("snis", "certificate", certificate_id)
            }
            upserts: list[tuple[str, dict[str, Any]]] = [("certificates", certificate)]
            for name in names:
                if name not in current:
                    sni = {
                        "id": str(uuid.uuid4()),
                        "name": name,
                        "certificate": {"id": certificate_id},
                        "created_at": stamp,
                        "updated_at": stamp,
                    }
                    upserts.append(("snis", validate_entity("snis", sni)))
            deletes = [("snis", sni["id"]) for name, sni in current.items() if name not in names]
            try:
                self.entities.last_version = await self.store.replace_config(
                    upserts, deletes, expect_version=version
                )
            except ConfigChanged:
                continue
            return {**certificate, "snis": names}
        raise StoreUnavailable("too many concurrent updates of this certificate; retry")

    async def _check_names_free(self, names: list[str], certificate_id: str) -> None:
        """Kong's ``check_list_is_new``: no name may belong to another certificate."""
        for name in names:
            sni_id = await self.store.id_by_unique("snis", "name", name)
            if sni_id is None:
                continue
            sni = await self.store.get("snis", sni_id)
            owner = sni["certificate"]["id"] if sni is not None else certificate_id
            if owner != certificate_id:
                raise SchemaViolation(
                    {"snis": f"{name} already associated with existing certificate '{owner}'"}
                )

    async def delete(self, key: str) -> None:
        """DELETE: the certificate and its SNIs (204 also when there was none)."""
        await self.entities.delete("certificates", await self.find(key))
