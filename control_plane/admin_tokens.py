"""Admin API access control: tokens with a role (``--admin-tokens FILE``).

The file (YAML) stores SHA-256 hashes of the tokens, never the tokens::

    # ferry admin tokens: only SHA-256 hashes of the tokens are stored
    tokens:
      - name: ops
        role: admin          # admin | read-only
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

``ferry admin-token add --file FILE --name NAME --role ROLE`` generates a token
(256 random bits), appends its hash and prints the token once. A plain SHA-256
is enough for such tokens (no dictionary to attack, unlike passwords) and costs
about a microsecond per request, where a password hash would cost milliseconds.

Roles (Kong's RBAC has finer ones; these two are what its ``admin`` and
``read-only`` default roles grant): ``admin`` may do everything, ``read-only``
only ``GET``, ``HEAD`` and ``OPTIONS``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

AdminRole = Literal["admin", "read-only"]
#: Methods a ``read-only`` token may use.
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The request header carrying a token (Kong's is ``Kong-Admin-Token``, also accepted).
TOKEN_HEADER = "Ferry-Admin-Token"
_FILE_HEADER = "# ferry admin tokens: only SHA-256 hashes of the tokens are stored\n"


class AdminTokenError(ValueError):
    """A tokens file that cannot be used; the message names the file and the fix."""


class TokenEntry(BaseModel):
    """One token of the file: who it is (``name``, shown in logs and 403s), its role,
    and the hex SHA-256 of the token's UTF-8 bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._@-]+$")
    role: AdminRole
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")

    @field_validator("sha256", mode="before")
    @classmethod
    def _quoted(cls, value: object) -> object:
        # YAML reads an all-digit hash as a number, losing leading zeros.
        if isinstance(value, int | float):
            raise ValueError("a hash that is all digits must be quoted in YAML: sha256: \"0123...\"")
        return value

    @field_validator("sha256")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()


class TokenFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tokens: list[TokenEntry] = []


def token_hash(token: str) -> str:
    """The hex SHA-256 of ``token`` as stored in the file."""
    return hashlib.sha256(token.encode()).hexdigest()


class AdminTokens:
    """The loaded tokens, looked up by hash. Immutable once built; safe to share."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        self._by_hash = {entry.sha256: entry for entry in entries}

    def __len__(self) -> int:
        return len(self._by_hash)

    def identify(self, token: str) -> TokenEntry | None:
        """The entry ``token`` belongs to, or ``None``. Looking up the token's hash
        reveals nothing through timing: an attacker controls the token, not its hash."""
        if not token:
            return None
        return self._by_hash.get(token_hash(token))


def read_token_file(path: Path) -> TokenFile:
    """Parse ``path``; :class:`AdminTokenError` says what is wrong with it."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise AdminTokenError(f"cannot read the admin tokens file {path}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
        parsed = TokenFile.model_validate(raw)
    except yaml.YAMLError as exc:
        raise AdminTokenError(f"the admin tokens file {path} is not YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or 'document'}: {error['msg']}"
            for error in exc.errors()
        )
        raise AdminTokenError(f"the admin tokens file {path} is invalid: {problems}") from None
    names = [entry.name for entry in parsed.tokens]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise AdminTokenError(f"the admin tokens file {path} names {', '.join(duplicates)} twice")
    return parsed


def load_admin_tokens(path: Path) -> AdminTokens:
    """The tokens of ``path``; a file with no token is refused (it would lock every
    caller out, which is never what an operator meant)."""
    parsed = read_token_file(path)
    if not parsed.tokens:
        raise AdminTokenError(
            f"the admin tokens file {path} holds no token; add one with "
            f"`ferry admin-token add --file {path} --name NAME --role admin`"
        )
    return AdminTokens(list(parsed.tokens))


def add_token(path: Path, name: str, role: AdminRole) -> str:
    """Generate a token, append its hash to ``path`` (created mode 0600 if missing)
    and return the token, which is stored nowhere else."""
    if not path.parent.is_dir():
        raise AdminTokenError(f"cannot write {path}: the directory {path.parent} does not exist")
    parsed = read_token_file(path) if path.exists() else TokenFile()
    if any(entry.name == name for entry in parsed.tokens):
        raise AdminTokenError(f"{path} already has a token named {name!r}")
    token = "ferry_" + secrets.token_urlsafe(32)
    entry = TokenEntry(name=name, role=role, sha256=token_hash(token))
    document = {"tokens": [e.model_dump() for e in (*parsed.tokens, entry)]}
    text = _FILE_HEADER + yaml.safe_dump(document, sort_keys=False)
    # Write beside, then rename: a crash never leaves a half-written file.
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.replace(temporary, path)
    return token
