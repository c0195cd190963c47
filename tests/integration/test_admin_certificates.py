"""Certificates, SNIs and CA certificates through the Admin API over a real Redis: Kong's
shapes, bodies and status codes (issue 16)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from control_plane.snapshot import SnapshotBuilder
from control_plane.store import EntityStore
from tests.support.admin import AppClient, call, make
from tests.support.tls import PemPair, expired_pem_pair, pem_pair


@pytest.fixture(scope="module")
def pair() -> PemPair:
    return pem_pair("shop.example.com")


@pytest.fixture(scope="module")
def rsa_pair() -> PemPair:
    return pem_pair("shop.example.com", key_type="rsa")


@pytest.fixture(scope="module")
def other() -> PemPair:
    return pem_pair("other.example.com")


@pytest.fixture(scope="module")
def ca() -> PemPair:
    return pem_pair("Shop CA", is_ca=True)


def violation(fields: dict[str, Any], message: str) -> dict[str, Any]:
    return {"code": 2, "name": "schema violation", "message": message, "fields": fields}


async def new_certificate(admin: AppClient, pair: PemPair, snis: list[str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"cert": pair.cert, "key": pair.key}
    if snis is not None:
        body["snis"] = snis
    return await make(admin, "/certificates", body)


# ----------------------------------------------------------------- certificates


async def test_certificate_with_snis_is_created_and_read_back_with_sorted_names(
    admin: AppClient, pair: PemPair
) -> None:
    created = await new_certificate(admin, pair, ["b.example.com", "*.example.com", "A.example.com"])
    assert created["snis"] == ["*.example.com", "a.example.com", "b.example.com"]
    assert created["cert"] == pair.cert and created["key"] == pair.key
    assert created["cert_alt"] is None and created["key_alt"] is None and created["tags"] is None
    assert created["created_at"] == created["updated_at"] > 0
    for key in (created["id"], "b.example.com", "*.example.com"):
        status, body = await call(admin, "GET", f"/certificates/{key}")
        assert (status, body) == (200, created)
    status, listing = await call(admin, "GET", "/certificates")
    assert status == 200 and listing["data"] == [created]
    status, snis = await call(admin, "GET", "/snis")
    assert sorted(s["name"] for s in snis["data"]) == created["snis"]
    assert all(s["certificate"] == {"id": created["id"]} for s in snis["data"])


async def test_certificate_without_snis_lists_an_empty_set(admin: AppClient, pair: PemPair) -> None:
    created = await new_certificate(admin, pair)
    assert created["snis"] == []


async def test_an_rsa_and_an_ecdsa_pair_make_one_certificate(
    admin: AppClient, pair: PemPair, rsa_pair: PemPair
) -> None:
    created = await make(
        admin,
        "/certificates",
        {"cert": rsa_pair.cert, "key": rsa_pair.key, "cert_alt": pair.cert, "key_alt": pair.key},
    )
    assert created["cert_alt"] == pair.cert


async def test_unparsable_pem_is_kongs_field_violation_and_never_echoes_the_key(
    admin: AppClient, pair: PemPair
) -> None:
    broken_key = pair.key.replace("PRIVATE KEY-----\n", "PRIVATE KEY-----\nAAAA", 1)
    status, body = await call(admin, "POST", "/certificates", {"cert": "not a cert", "key": broken_key})
    assert status == 400
    assert body["fields"] == {
        "cert": "invalid certificate: not a PEM certificate, or one that does not parse",
        "key": "invalid key: not a PEM private key",
    }
    assert body["code"] == 2 and body["message"].startswith("2 schema violations (")
    assert pair.key.splitlines()[1] not in json.dumps(body)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("mismatch", "certificate does not match key"),
        ("alt_without_key", "all or none of these fields must be set: 'cert_alt', 'key_alt'"),
        (
            "same_type",
            "certificate and alternative certificate need to have different type "
            "(e.g. RSA and ECDSA), the provided certificates were both of the same type",
        ),
        ("expired", 'certificate expired, "Not After" time is in the past'),
    ],
)
async def test_certificate_entity_checks_are_kongs_400(
    admin: AppClient, pair: PemPair, other: PemPair, rsa_pair: PemPair, case: str, message: str
) -> None:
    expired = expired_pem_pair()
    body = {
        "mismatch": {"cert": pair.cert, "key": other.key},
        "alt_without_key": {"cert": pair.cert, "key": pair.key, "cert_alt": rsa_pair.cert},
        "same_type": {"cert": pair.cert, "key": pair.key, "cert_alt": other.cert, "key_alt": other.key},
        "expired": {"cert": expired.cert, "key": expired.key},
    }[case]
    status, answer = await call(admin, "POST", "/certificates", body)
    assert (status, answer) == (400, violation({"@entity": [message]}, f"schema violation ({message})"))


async def test_missing_cert_and_key_are_required(admin: AppClient) -> None:
    status, body = await call(admin, "POST", "/certificates", {})
    assert status == 400
    assert body["fields"] == {"cert": "required field missing", "key": "required field missing"}


async def test_snis_shorthand_refuses_a_name_twice_and_a_name_of_another_certificate(
    admin: AppClient, pair: PemPair, other: PemPair
) -> None:
    first = await new_certificate(admin, pair, ["shop.example.com"])
    status, body = await call(
        admin, "POST", "/certificates", {"cert": other.cert, "key": other.key, "snis": ["x.com", "X.com"]}
    )
    assert (status, body) == (400, violation({"snis": "x.com is duplicated"}, "schema violation (snis: x.com is duplicated)"))
    status, body = await call(
        admin, "POST", "/certificates", {"cert": other.cert, "key": other.key, "snis": ["shop.example.com"]}
    )
    message = f"shop.example.com already associated with existing certificate '{first['id']}'"
    assert (status, body) == (400, violation({"snis": message}, f"schema violation (snis: {message})"))
    status, body = await call(
        admin, "POST", "/certificates", {"cert": other.cert, "key": other.key, "snis": ["ok.com", "1.2.3.4"]}
    )
    assert status == 400 and body["fields"] == {"snis": [None, "must not be an IP"]}
    status, listing = await call(admin, "GET", "/certificates")
    assert [c["id"] for c in listing["data"]] == [first["id"]]  # nothing half-written


async def test_patch_with_snis_replaces_the_names_and_without_keeps_them(
    admin: AppClient, pair: PemPair, store: EntityStore
) -> None:
    created = await new_certificate(admin, pair, ["a.com", "b.com"])
    status, patched = await call(admin, "PATCH", "/certificates/a.com", {"snis": ["b.com", "c.com"]})
    assert status == 200 and patched["snis"] == ["b.com", "c.com"] and patched["id"] == created["id"]
    status, patched = await call(admin, "PATCH", f"/certificates/{created['id']}", {"tags": ["t"]})
    assert status == 200 and patched["snis"] == ["b.com", "c.com"] and patched["tags"] == ["t"]
    assert await store.id_by_unique("snis", "name", "a.com") is None
    status, patched = await call(admin, "PATCH", "/certificates/b.com", {"snis": None})
    assert status == 200 and patched["snis"] == []


async def test_put_by_an_unknown_sni_name_creates_a_certificate_with_that_name(
    admin: AppClient, pair: PemPair
) -> None:
    status, created = await call(admin, "PUT", "/certificates/new.example.com", {"cert": pair.cert, "key": pair.key})
    assert status == 200 and created["snis"] == ["new.example.com"]
    status, again = await call(admin, "PUT", "/certificates/new.example.com", {"cert": pair.cert, "key": pair.key})
    assert status == 200 and again["id"] == created["id"] and again["snis"] == ["new.example.com"]


async def test_certificate_snis_nested_path_lists_and_creates(admin: AppClient, pair: PemPair) -> None:
    created = await new_certificate(admin, pair, ["a.com"])
    sni = await make(admin, f"/certificates/{created['id']}/snis", {"name": "*.shop.com"})
    assert sni["certificate"] == {"id": created["id"]} and sni["name"] == "*.shop.com"
    status, page = await call(admin, "GET", "/certificates/a.com/snis")
    assert status == 200 and sorted(s["name"] for s in page["data"]) == ["*.shop.com", "a.com"]
    status, shown = await call(admin, "GET", f"/certificates/{created['id']}")
    assert shown["snis"] == ["*.shop.com", "a.com"]


async def test_certificate_of_a_missing_key_is_404(admin: AppClient) -> None:
    for path in ("/certificates/nope.example.com", f"/certificates/{uuid.uuid4()}", "/certificates/x.com/snis"):
        assert (await call(admin, "GET", path))[0] == 404


# ------------------------------------------------------------------------- snis


async def test_duplicate_sni_is_kongs_409(admin: AppClient, pair: PemPair) -> None:
    created = await new_certificate(admin, pair)
    await make(admin, "/snis", {"name": "a.com", "certificate": {"id": created["id"]}})
    status, body = await call(admin, "POST", "/snis", {"name": "a.com", "certificate": {"id": created["id"]}})
    assert (status, body) == (
        409,
        {
            "code": 5,
            "name": "unique constraint violation",
            "message": "UNIQUE violation detected on '{name=\"a.com\"}'",
            "fields": {"name": "a.com"},
        },
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a*.com", "wildcard must be leftmost or rightmost character"),
        ("*.*", "only one wildcard must be specified"),
        ("*a.com", "invalid wildcard: must be placed at leftmost or rightmost label"),
        ("10.0.0.1", "must not be an IP"),
        ("a.com:443", "must not have a port"),
    ],
)
async def test_sni_name_follows_kongs_wildcard_rules(
    admin: AppClient, pair: PemPair, name: str, message: str
) -> None:
    created = await new_certificate(admin, pair)
    status, body = await call(admin, "POST", "/snis", {"name": name, "certificate": {"id": created["id"]}})
    assert (status, body["fields"]) == (400, {"name": message})


async def test_sni_of_a_missing_certificate_is_a_foreign_key_violation(admin: AppClient) -> None:
    missing = str(uuid.uuid4())
    status, body = await call(admin, "POST", "/snis", {"name": "a.com", "certificate": {"id": missing}})
    assert status == 400 and body["code"] == 4
    assert body["fields"] == {"certificate": {"id": missing}}


async def test_sni_is_addressable_by_name(admin: AppClient, pair: PemPair) -> None:
    created = await new_certificate(admin, pair, ["a.com"])
    status, sni = await call(admin, "GET", "/snis/a.com")
    assert status == 200 and sni["certificate"] == {"id": created["id"]}
    status, renamed = await call(admin, "PATCH", "/snis/a.com", {"name": "b.com"})
    assert status == 200 and renamed["name"] == "b.com"
    assert (await call(admin, "GET", "/certificates/b.com"))[1]["snis"] == ["b.com"]


# ------------------------------------------------------- deletes and references


async def test_deleting_a_certificate_deletes_its_snis(
    admin: AppClient, pair: PemPair, store: EntityStore
) -> None:
    created = await new_certificate(admin, pair, ["a.com", "b.com"])
    assert (await call(admin, "DELETE", "/certificates/a.com"))[0] == 204
    assert await store.list_all("snis") == [] and await store.list_all("certificates") == []
    assert (await call(admin, "DELETE", f"/certificates/{created['id']}"))[0] == 204


@pytest.mark.parametrize("kind", ["services", "upstreams"])
async def test_a_client_certificate_in_use_cannot_be_deleted(
    admin: AppClient, pair: PemPair, kind: str
) -> None:
    created = await new_certificate(admin, pair)
    body: dict[str, Any] = {"client_certificate": {"id": created["id"]}}
    body.update({"name": "s", "host": "h", "protocol": "https"} if kind == "services" else {"name": "u"})
    user = await make(admin, f"/{kind}", body)
    assert user["client_certificate"] == {"id": created["id"]}
    status, answer = await call(admin, "DELETE", f"/certificates/{created['id']}")
    assert (status, answer) == (
        400,
        {
            "code": 4,
            "name": "foreign key violation",
            "message": f"an existing '{kind}' entity references this 'certificates' entity",
            "fields": {"@referenced_by": kind},
        },
    )
    await call(admin, "DELETE", f"/{kind}/{user['id']}")
    assert (await call(admin, "DELETE", f"/certificates/{created['id']}"))[0] == 204


async def test_a_missing_client_certificate_is_a_foreign_key_violation(admin: AppClient) -> None:
    missing = str(uuid.uuid4())
    status, body = await call(
        admin, "POST", "/services", {"host": "h", "protocol": "https", "client_certificate": {"id": missing}}
    )
    assert status == 400 and body["code"] == 4
    assert body["message"] == (
        f"the foreign key '{{id=\"{missing}\"}}' does not reference an existing 'certificates' entity."
    )


async def test_tls_fields_of_an_http_service_must_be_null(admin: AppClient) -> None:
    status, body = await call(admin, "POST", "/services", {"host": "h", "tls_verify": True})
    assert (status, body) == (
        400,
        violation(
            {"tls_verify": "value must be null",
             "@entity": ["failed conditional validation given value of field 'protocol'"]},
            "2 schema violations (failed conditional validation given value of field 'protocol'; "
            "tls_verify: value must be null)",
        ),
    )


# -------------------------------------------------------------- CA certificates


async def test_ca_certificate_gets_kongs_cert_digest(admin: AppClient, ca: PemPair) -> None:
    from ferry_shared.certificates import cert_digest

    created = await make(admin, "/ca_certificates", {"cert": ca.cert, "cert_digest": "ignored"})
    assert created["cert_digest"] == cert_digest(ca.cert)
    assert len(created["cert_digest"]) == 64
    status, body = await call(admin, "POST", "/ca_certificates", {"cert": ca.cert})
    assert (status, body["code"], body["fields"]) == (409, 5, {"cert_digest": created["cert_digest"]})


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("leaf", 'certificate does not appear to be a CA because it is missing the "CA" basic constraint'),
        ("expired", 'certificate expired, "Not After" time is in the past'),
        ("two", "please submit only one certificate at a time"),
    ],
)
async def test_ca_certificate_checks_are_kongs(admin: AppClient, pair: PemPair, ca: PemPair, case: str, message: str) -> None:
    cert = {"leaf": pair.cert, "expired": expired_pem_pair(is_ca=True).cert, "two": ca.cert + ca.cert}[case]
    status, body = await call(admin, "POST", "/ca_certificates", {"cert": cert})
    assert (status, body) == (400, violation({"@entity": [message]}, f"schema violation ({message})"))


async def test_services_ca_certificates_must_exist_and_hold_the_ca(admin: AppClient, ca: PemPair) -> None:
    missing = str(uuid.uuid4())
    status, body = await call(
        admin, "POST", "/services", {"host": "h", "protocol": "https", "ca_certificates": [missing]}
    )
    assert status == 400 and body["code"] == 4 and body["fields"] == {"ca_certificates": {"id": missing}}
    created = await make(admin, "/ca_certificates", {"cert": ca.cert})
    service = await make(
        admin, "/services",
        {"name": "s", "host": "h", "protocol": "https", "tls_verify": True, "tls_verify_depth": 2,
         "ca_certificates": [created["id"]]},
    )
    status, body = await call(admin, "DELETE", f"/ca_certificates/{created['id']}")
    assert (status, body) == (
        400,
        {
            "code": 19,
            "name": "referenced by others",
            "message": f"ca certificate {created['id']} is still referenced by services (id = {service['id']})",
        },
    )
    await call(admin, "PATCH", "/services/s", {"ca_certificates": None})
    assert (await call(admin, "DELETE", f"/ca_certificates/{created['id']}"))[0] == 204


# ---------------------------------------------------- declarative and snapshot


async def test_declarative_round_trip_nests_snis_and_keeps_the_hash(
    admin: AppClient, pair: PemPair, ca: PemPair, store: EntityStore, redis_client: Any
) -> None:
    certificate = await new_certificate(admin, pair, ["b.com", "a.com"])
    authority = await make(admin, "/ca_certificates", {"cert": ca.cert})
    await make(admin, "/upstreams", {"name": "u", "client_certificate": {"id": certificate["id"]}})
    await make(
        admin, "/services",
        {"name": "s", "host": "u", "protocol": "https", "client_certificate": {"id": certificate["id"]},
         "ca_certificates": [authority["id"]]},
    )
    status, document = await call(admin, "GET", "/config")
    assert status == 200 and "snis" not in document
    [exported] = document["certificates"]
    assert [sni["name"] for sni in exported["snis"]] == ["a.com", "b.com"]
    assert all("certificate" not in sni for sni in exported["snis"])
    assert document["ca_certificates"] == [authority]
    await redis_client.flushdb()
    status, applied = await call(admin, "POST", "/config", document)
    assert status == 201 and applied["_config_hash"] == document["_config_hash"]
    assert (await call(admin, "GET", "/certificates/a.com"))[1]["snis"] == ["a.com", "b.com"]


async def test_declarative_document_takes_plain_sni_names_and_checks_references(
    admin: AppClient, pair: PemPair
) -> None:
    document = {
        "_format_version": "3.0",
        "certificates": [{"cert": pair.cert, "key": pair.key, "snis": ["shop.com"]}],
        "services": [{"name": "s", "host": "h", "protocol": "https",
                      "client_certificate": {"id": str(uuid.uuid4())}}],
    }
    status, body = await call(admin, "POST", "/config", document)
    assert status == 400 and body["code"] == 14
    assert "client_certificate" in body["fields"]["services"][0]
    del document["services"]
    status, applied = await call(admin, "POST", "/config", document)
    assert status == 201 and [s["name"] for s in applied["certificates"][0]["snis"]] == ["shop.com"]
    status, again = await call(admin, "POST", "/config?check_hash=1", document)
    assert status == 304  # ids are stable: re-applying changes nothing


async def test_snapshot_carries_certificates_without_names_snis_and_ca_certificates(
    admin: AppClient, pair: PemPair, ca: PemPair, store: EntityStore
) -> None:
    certificate = await new_certificate(admin, pair, ["a.com"])
    authority = await make(admin, "/ca_certificates", {"cert": ca.cert})
    service = await make(
        admin, "/services",
        {"name": "s", "host": "h", "protocol": "https", "client_certificate": {"id": certificate["id"]},
         "ca_certificates": [authority["id"]], "tls_verify": True},
    )
    snapshot = SnapshotBuilder().build(*await store.load_all_raw())
    bodies = {(r.kind, r.id): json.loads(r.body) for r in snapshot.resources}
    kinds = [r.kind for r in snapshot.resources]
    assert kinds == ["certificates", "ca_certificates", "snis", "services"]
    stored = {k: v for k, v in certificate.items() if k != "snis"}
    assert bodies[("certificates", certificate["id"])] == stored
    [sni] = [b for (kind, _), b in bodies.items() if kind == "snis"]
    assert (sni["name"], sni["certificate"]) == ("a.com", {"id": certificate["id"]})
    assert bodies[("ca_certificates", authority["id"])]["cert_digest"] == authority["cert_digest"]
    shipped = bodies[("services", service["id"])]
    assert shipped["client_certificate"] == {"id": certificate["id"]}
    assert shipped["ca_certificates"] == [authority["id"]]
    assert (shipped["tls_verify"], shipped["tls_verify_depth"]) == (True, None)
