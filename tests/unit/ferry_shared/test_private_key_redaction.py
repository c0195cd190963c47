"""Log lines never carry a PEM private key (ferry_shared/logging_setup.redact)."""

from __future__ import annotations

import json

from ferry_shared.logging_setup import redact
from tests.support.tls import pem_pair


def test_a_private_key_in_a_log_line_is_masked_as_text_and_as_json() -> None:
    pair = pem_pair(key_type="rsa")
    secret_line = pair.key.splitlines()[1]
    for text in (f"bad entity: {pair.key}", f"body {json.dumps({'key': pair.key})}"):
        masked = redact(text)
        assert secret_line not in masked
        assert "-----BEGIN PRIVATE KEY-----***-----END PRIVATE KEY-----" in masked


def test_a_certificate_is_left_alone() -> None:
    pair = pem_pair()
    assert redact(pair.cert) == pair.cert
