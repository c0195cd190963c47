"""The shared PEM checks both planes run (ferry_shared/certificates.py)."""

from __future__ import annotations

import datetime
import hashlib

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from ferry_shared.certificates import (
    ALT_KEY_MISMATCH,
    EXPIRED,
    KEY_MISMATCH,
    NOT_A_CA,
    SAME_KEY_TYPE,
    CertificateError,
    ca_certificate_problems,
    cert_digest,
    certificate_pair_problems,
    is_ca,
    is_expired,
    is_wildcard,
    key_type,
    load_certificate,
    load_private_key,
    sni_name_problem,
)
from tests.support.tls import PemPair, expired_pem_pair, pem_pair

EC = pem_pair("ec.example.com")
RSA = pem_pair("rsa.example.com", key_type="rsa")
OTHER = pem_pair("other.example.com")
CA = pem_pair("Test CA", is_ca=True)


def test_a_matching_pair_and_an_rsa_ecdsa_alternative_have_no_problem() -> None:
    assert certificate_pair_problems(RSA.cert, RSA.key, EC.cert, EC.key) == []


def test_key_types_are_named() -> None:
    assert key_type(load_certificate(EC.cert)) == "EC"
    assert key_type(load_certificate(RSA.cert)) == "RSA"


def test_mismatched_keys_same_key_types_and_expiry_are_each_reported() -> None:
    assert certificate_pair_problems(EC.cert, OTHER.key) == [KEY_MISMATCH]
    assert certificate_pair_problems(RSA.cert, RSA.key, EC.cert, OTHER.key) == [ALT_KEY_MISMATCH]
    assert certificate_pair_problems(EC.cert, EC.key, OTHER.cert, OTHER.key) == [SAME_KEY_TYPE]
    old = expired_pem_pair()
    assert certificate_pair_problems(old.cert, old.key) == [EXPIRED]


def test_expiry_is_judged_at_the_given_moment() -> None:
    leaf = load_certificate(EC.cert)
    later = leaf.not_valid_after_utc + datetime.timedelta(seconds=1)
    assert not is_expired(leaf)
    assert is_expired(leaf, later)
    assert certificate_pair_problems(EC.cert, EC.key, now=later) == [EXPIRED]


def test_a_chain_is_a_certificate_whose_leaf_comes_first() -> None:
    assert load_certificate(EC.cert + CA.cert).subject == load_certificate(EC.cert).subject
    assert certificate_pair_problems(EC.cert + CA.cert, EC.key) == []


@pytest.mark.parametrize("text", ["", "hello", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_unparsable_certificates_raise(text: str) -> None:
    with pytest.raises(CertificateError):
        load_certificate(text)


def test_an_unparsable_key_never_quotes_itself() -> None:
    broken = EC.key.replace("\n", "\n!", 2)
    with pytest.raises(CertificateError) as caught:
        load_private_key(broken)
    assert EC.key.splitlines()[1] not in str(caught.value)


def test_cert_digest_is_the_sha256_of_the_der() -> None:
    der = load_certificate(CA.cert).public_bytes(serialization.Encoding.DER)
    assert cert_digest(CA.cert) == hashlib.sha256(der).hexdigest()


def test_ca_certificate_rules() -> None:
    assert ca_certificate_problems(CA.cert) == []
    assert is_ca(load_certificate(CA.cert)) and not is_ca(load_certificate(EC.cert))
    assert ca_certificate_problems(EC.cert) == [NOT_A_CA]
    assert ca_certificate_problems(expired_pem_pair(is_ca=True).cert) == [EXPIRED]
    assert ca_certificate_problems(CA.cert + CA.cert) == ["please submit only one certificate at a time"]


@pytest.mark.parametrize("name", ["example.com", "*.example.com", "example.*", "a-b.c", "localhost"])
def test_valid_sni_names(name: str) -> None:
    assert sni_name_problem(name) is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "length must be at least 1"),
        ("a.*.com", "wildcard must be leftmost or rightmost character"),
        ("*.example.*", "only one wildcard must be specified"),
        ("*example.com", "invalid wildcard: must be placed at leftmost or rightmost label"),
        ("example*", "invalid wildcard: must be placed at leftmost or rightmost label"),
        ("192.168.0.1", "must not be an IP"),
        ("[::1]", "must not be an IP"),
        ("example.com:443", "must not have a port"),
        ("exa mple.com", "invalid value: exa mple.com"),
        ("example.com.", "invalid value: example.com."),
    ],
)
def test_invalid_sni_names_get_kongs_messages(name: str, message: str) -> None:
    assert sni_name_problem(name) == message


_LABEL = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]", fullmatch=True)


@given(st.lists(_LABEL, min_size=2, max_size=4), st.sampled_from(["", "left", "right"]))
def test_every_host_name_and_its_wildcards_are_valid_sni_names(labels: list[str], wildcard: str) -> None:
    name = ".".join(labels)
    if wildcard == "left":
        name = "*." + name
    elif wildcard == "right":
        name = name + ".*"
    assert sni_name_problem(name) is None
    assert is_wildcard(name) == (wildcard != "")


@given(st.text(max_size=30))
def test_sni_check_never_raises(text: str) -> None:
    problem = sni_name_problem(text)
    assert problem is None or isinstance(problem, str)


def test_pem_pair_helper_makes_real_x509() -> None:
    assert isinstance(x509.load_pem_x509_certificate(EC.cert.encode()), x509.Certificate)
    assert isinstance(PemPair, type)
