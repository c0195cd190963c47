"""The config snapshot's canonical encoding, shared by both planes.

The control plane encodes each entity as canonical JSON (sorted keys, no
whitespace, UTF-8) and hashes the sorted list of ``(kind, id, body)``; the data
plane recomputes the hash over what it received before applying it, so a
corrupted or partial snapshot is rejected instead of served.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

#: Entity kinds carried in a snapshot, in dependency order (a route refers to a
#: service, a target to an upstream, an SNI to a certificate, an upstream or a service
#: to its client certificate and a service to its CA certificates). Certificates carry
#: private keys: they travel only over the cluster link and are never logged.
KINDS: tuple[str, ...] = (
    "certificates", "ca_certificates", "snis", "upstreams", "targets", "services", "routes",
)


def canonical_json(entity: dict[str, Any]) -> bytes:
    """Encode ``entity`` deterministically: equal dicts give equal bytes."""
    return json.dumps(entity, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def config_hash(resources: Iterable[tuple[str, str, bytes]]) -> str:
    """sha256 hex over ``(kind, id, body)`` triples, independent of their order."""
    digest = hashlib.sha256()
    for kind, entity_id, body in sorted(resources):
        digest.update(kind.encode())
        digest.update(b"\0")
        digest.update(entity_id.encode())
        digest.update(b"\0")
        digest.update(body)
        digest.update(b"\n")
    return digest.hexdigest()


def config_hash_number(hash_hex: str) -> int:
    """A config hash as a metric value: its first 13 hex digits as an integer (52
    bits, exact in a Prometheus float64); 0 when empty or not hex."""
    try:
        return int(hash_hex[:13], 16) if hash_hex else 0
    except ValueError:
        return 0
