"""Credentials: the admin key (file or environment, never a default) and tenants' API keys (stored hashed).

An API token is ``cf_<key_id>_<secret>``: ``key_id`` (12 hex) finds the stored record, ``secret`` (32 random
bytes, urlsafe base64) makes the token unguessable, and only ``sha256(token)`` is stored. Tokens are high-entropy,
so a plain hash is right (a password hash would only slow every request). Every check compares digests in
constant time and answers one :class:`UnauthorizedError` for a missing, malformed, unknown or revoked key, so a
caller learns nothing about which key ids exist. Nothing here imports FastAPI: the CLI reads the admin key too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptoface.errors import CryptoFaceError
from cryptoface.service.errors import AdminDisabledError, UnauthorizedError
from cryptoface.store.base import ApiKeyRecord, TemplateStore

ADMIN_KEY_ENV = "CRYPTOFACE_ADMIN_KEY"
MIN_ADMIN_KEY_CHARS = 16  # a guessable admin key is no admin key
ADMIN_ACTOR = "admin"
_TOKEN = re.compile(r"cf_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# compared against when the key id is unknown, so an unknown id costs the same hash-and-compare as a known one
_DUMMY_HASH = hashlib.sha256(b"cryptoface: no such key").hexdigest()


class AdminKeyError(CryptoFaceError):
    """The configured admin credential cannot be used (unreadable, too open, too short)."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: a tenant through one of its API keys, or the admin (``tenant_id`` None)."""

    tenant_id: str | None
    actor: str  # the API key id, or "admin": what the audit log records

    @property
    def is_admin(self) -> bool:
        return self.tenant_id is None


def load_admin_key(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> str | None:
    """The admin key from ``path`` (a file nobody else can read) or ``$CRYPTOFACE_ADMIN_KEY``; None when neither."""
    if path is not None:
        p = Path(path)
        try:
            mode = stat.S_IMODE(p.stat().st_mode)
            key = p.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AdminKeyError(f"cannot read the admin key file {p}: {exc}") from exc
        if mode & 0o077:
            raise AdminKeyError(f"{p} is readable by group or others (mode {mode:o}); chmod 600 it")
    else:
        key = (os.environ if env is None else env).get(ADMIN_KEY_ENV, "").strip()
        if not key:
            return None
    if len(key) < MIN_ADMIN_KEY_CHARS:
        raise AdminKeyError(f"the admin key must have at least {MIN_ADMIN_KEY_CHARS} characters; "
                            "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return key


def token_hash(token: str) -> str:
    """What the store keeps of a token: its sha256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_api_token() -> tuple[str, str]:
    """A fresh (key_id, token); the token is shown once and only its hash is stored."""
    key_id = secrets.token_hex(6)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return key_id, f"cf_{key_id}_{secret}"


class Authenticator:
    """Turns request credentials into a :class:`Caller`, or raises; ``admin_key`` None turns admin routes off."""

    def __init__(self, store: TemplateStore, admin_key: str | None) -> None:
        self.store = store
        self._admin = None if admin_key is None else hashlib.sha256(admin_key.encode()).digest()

    @property
    def admin_enabled(self) -> bool:
        return self._admin is not None

    def admin(self, bearer: str | None) -> Caller:
        """The admin, if ``bearer`` is the admin key (AdminDisabledError when the server has none)."""
        if self._admin is None:
            raise AdminDisabledError("this server was started without an admin credential (--admin-key-file or "
                                     f"${ADMIN_KEY_ENV}); admin routes are off")
        given = hashlib.sha256((bearer or "").encode()).digest()  # equal lengths: compare_digest is constant-time
        if bearer is None or not hmac.compare_digest(given, self._admin):
            raise UnauthorizedError("a valid admin credential is required (Authorization: Bearer <admin key>)")
        return Caller(None, ADMIN_ACTOR)

    def tenant(self, token: str | None) -> Caller:
        """The tenant whose valid, unrevoked API key ``token`` is."""
        m = _TOKEN.fullmatch(token or "")
        record: ApiKeyRecord | None = self.store.api_key_by_id(m.group(1)) if m else None
        expected = _DUMMY_HASH if record is None else record.token_hash
        ok = hmac.compare_digest(token_hash(token or ""), expected)
        if record is None or not ok or record.revoked_at is not None:
            raise UnauthorizedError("a valid API key is required (x-api-key header)")
        return Caller(record.tenant_id, record.key_id)

    def from_headers(self, kind: str, headers: Mapping[str, str]) -> Caller:
        """The caller a route of credential ``kind`` ("tenant", "admin" or "any") accepts from these headers."""
        bearer = _bearer(headers.get("authorization"))
        if kind == "admin" or (kind == "any" and bearer is not None):
            return self.admin(bearer)
        return self.tenant(headers.get("x-api-key"))


def _bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None for any other scheme)."""
    scheme, _, token = (value or "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


__all__ = [
    "ADMIN_ACTOR",
    "ADMIN_KEY_ENV",
    "AdminKeyError",
    "Authenticator",
    "Caller",
    "load_admin_key",
    "new_api_token",
    "token_hash",
]
