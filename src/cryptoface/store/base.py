"""The storage interface of the matching service: tenants, API keys, key sets, subjects, templates, audit log.

Everything stored is public, hashed or encrypted: public/evaluation keys (never a secret key), sha256 hashes of
API tokens, CKKS ciphertexts, the plaintext subject and tenant names. :class:`TemplateStore` is the interface;
:class:`~cryptoface.store.sqlite.SQLiteStore` (one file, the embedded default) and
:class:`~cryptoface.store.postgres.PostgresStore` (several server replicas on one database) implement it and are
run by one test suite.

Decisions the design left open, fixed here:

* Every public method is one transaction. Every write that changes tenants, API keys, key sets, subjects or
  templates takes ``actor`` (an API key id or ``"admin"``) and appends its :class:`AuditRecord` in the same
  transaction. Audit rows hold ids only: no subject names, ciphertexts or keys. Audit ids rise in commit order on
  both stores, so ``audit(after=last_seen)`` never skips a row.
* Tenant scoping: a method taking ``tenant_id`` treats a key set of another tenant exactly like one that does not
  exist (:class:`UnknownKeySetError`). Reads that take only a key id (``subjects``, ``templates``, ``galleries``,
  ``key_set_keys``) are for a caller that has already resolved the key set with ``get_key_set(key_id, tenant)``.
* A key set is *pending* from registration until its proof of possession is accepted. Pending registrations
  are per (key id, tenant): several tenants may register the same public key, the first correct proof makes
  it that tenant's active key set and drops the others, and an unproven one expires after ``PENDING_TTL_S``.
  Only an active key set conflicts with a new registration (any tenant). Key uploads and subject writes on a
  pending key set raise :class:`KeySetPendingError` (a :class:`ConflictError`).
* ``record_failed_proof`` counts on a pending key set only (an active one raises :class:`ConflictError`) and writes
  an audit row ``keyset.proof_failed``; deleting after too many attempts is the caller's decision.
* Subject, template and audit ids are integers never reused in a store (SQLite: AUTOINCREMENT), so an id a client
  holds can never come to name someone else's template.
* Subject and tenant names pass :func:`cryptoface.names.validate_name` (stored in NFC form); an invalid name raises
  :class:`cryptoface.names.InvalidNameError` before anything is written.
* Erasure: SQLite overwrites deleted content (``secure_delete``) and truncates its write-ahead log after every
  delete; PostgreSQL deletes the rows, and reclaiming the dead tuples (``VACUUM``) is the operator's job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptoface.errors import CryptoFaceError

SCHEMA_VERSION = 3
PENDING_TTL_S = 3600.0  # an unproven registration is dropped after this long
SECRET_KEY_KINDS = ("secret", "secret_key", "sk")
MAX_TEMPLATES_PER_SUBJECT = 8
KEY_SET_STATUSES = ("pending", "active")
AUDIT_ACTIONS = (
    "tenant.create",
    "api_key.create",
    "api_key.revoke",
    "keyset.register",
    "keyset.proof_failed",
    "keyset.activate",
    "keyset.delete",
    "key.add",
    "subject.create",
    "template.add",
    "subject.delete",
    "template.delete",
)


def key_fingerprint(public_key: bytes) -> str:
    """Key-set id: sha256 (hex) of the public-key bytes."""
    return hashlib.sha256(public_key).hexdigest()


def params_fingerprint(params_json: str) -> str:
    """Id of a CKKS parameter set: sha256 (hex, first 16) of its canonical JSON."""
    canonical = json.dumps(json.loads(params_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def is_secret_kind(kind: str) -> bool:
    """Whether a key kind names a secret key (refused by every store whatever the service checks)."""
    k = kind.strip().lower()
    return k in SECRET_KEY_KINDS or k.startswith("secret") or k.startswith("private")


@dataclass(frozen=True)
class TenantRecord:
    tenant_id: str
    name: str
    created_at: float


@dataclass(frozen=True)
class ApiKeyRecord:
    """An API key: only the sha256 (hex) of its token is stored; ``revoked_at`` is None while it is valid."""

    key_id: str
    tenant_id: str
    token_hash: str
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class KeySetRecord:
    """A registered key set: ``status`` is "pending" until the proof of possession is accepted."""

    key_id: str
    tenant_id: str
    backend: str
    params_json: str
    params_id: str
    created_at: float
    status: str
    proof_hash: str
    failed_proofs: int = 0
    key_kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class SubjectRecord:
    id: int
    key_id: str
    name: str
    template_ids: tuple[int, ...]
    created_at: float


@dataclass(frozen=True)
class TemplateRecord:
    id: int
    key_id: str
    subject_id: int
    subject: str
    ciphertext: bytes
    level: int
    stride: int
    model_id: str
    params_id: str
    created_at: float


@dataclass(frozen=True)
class NewTemplate:
    """A template to enrol (no id yet)."""

    ciphertext: bytes
    level: int
    stride: int
    model_id: str
    params_id: str


@dataclass(frozen=True)
class GalleryRecord:
    key_id: str
    stride: int
    model_id: str
    chunk: int
    ciphertext: bytes
    template_ids: tuple[int, ...]
    level: int
    created_at: float


@dataclass(frozen=True)
class AuditRecord:
    """One audit row: who (``actor``) did what to which ids; never a name, a ciphertext or a key."""

    id: int
    at: float
    tenant_id: str | None
    actor: str
    action: str
    key_id: str | None
    subject_id: int | None
    template_ids: tuple[int, ...]
    detail: str


class StoreError(CryptoFaceError):
    """Base of store errors (the service maps them onto HTTP 4xx)."""


class UnknownTenantError(StoreError):
    """No tenant with that id."""


class UnknownApiKeyError(StoreError):
    """No API key with that id."""


class UnknownKeySetError(StoreError):
    """No key set with that id is registered (or it belongs to another tenant)."""


class UnknownSubjectError(StoreError):
    """No subject with that name or id is enrolled under the key set."""


class UnknownTemplateError(StoreError):
    """No template with that id is enrolled under the key set."""


class ConflictError(StoreError):
    """The write contradicts what is stored (an existing name or key, a concurrent write)."""


class TemplateCapError(ConflictError):
    """The subject would hold more templates than the per-subject cap."""


class KeySetPendingError(ConflictError):
    """The key set's proof of possession has not been accepted yet."""


class StoreUnavailableError(StoreError):
    """The database cannot be reached or stayed busy (lost connection, locked file); retrying later may work."""

    retry_after = 5


class SchemaVersionError(StoreError):
    """The database was written by another schema version (no migration: start a new database)."""


def schema_refusal(where: str, found: Any) -> SchemaVersionError:
    """The one message both stores give for a database of another schema version."""
    return SchemaVersionError(
        f"{where}: store schema version {found}, this build reads version {SCHEMA_VERSION} only "
        "(version 2 added tenants, API keys and key-set ownership; version 3 moved pending registrations to "
        "their own table, and a version-2 store is migrated when opened; older ones are not). "
        "Start a new database, or use the CryptoFace release that wrote this one."
    )


@runtime_checkable
class TemplateStore(Protocol):
    """Persistence for the matching service; every method is one transaction."""

    # tenants and credentials
    def create_tenant(self, name: str, *, actor: str = "admin") -> TenantRecord: ...
    def get_tenant(self, tenant_id: str) -> TenantRecord: ...
    def list_tenants(self) -> list[TenantRecord]: ...
    def add_api_key(self, tenant_id: str, key_id: str, token_hash: str, *, actor: str = "admin") -> ApiKeyRecord: ...
    def api_key_by_id(self, key_id: str) -> ApiKeyRecord | None: ...
    def api_keys(self, tenant_id: str) -> list[ApiKeyRecord]: ...
    def revoke_api_key(self, key_id: str, *, actor: str = "admin") -> None: ...

    # key sets
    def create_key_set(
        self, tenant_id: str, backend: str, params_json: str, public_key: bytes, proof_hash: str, *, actor: str
    ) -> KeySetRecord: ...
    def activate_key_set(self, tenant_id: str, key_id: str, *, actor: str) -> KeySetRecord: ...
    def record_failed_proof(self, tenant_id: str, key_id: str, *, actor: str) -> int: ...
    def add_key(self, tenant_id: str, key_id: str, kind: str, data: bytes, *, actor: str) -> KeySetRecord: ...
    def get_key_set(self, key_id: str, tenant_id: str | None = None) -> KeySetRecord: ...
    def key_set_keys(self, key_id: str, kinds: Sequence[str] | None = None) -> dict[str, bytes]: ...
    def key_set_bytes(self, key_id: str) -> int: ...
    def list_key_sets(self, tenant_id: str | None = None) -> list[KeySetRecord]: ...
    def delete_key_set(self, tenant_id: str | None, key_id: str, *, actor: str) -> None: ...

    # subjects and templates
    def create_subject(
        self,
        tenant_id: str,
        key_id: str,
        subject: str,
        templates: Sequence[NewTemplate],
        *,
        actor: str,
        cap: int = MAX_TEMPLATES_PER_SUBJECT,
    ) -> tuple[int, list[int]]: ...
    def add_templates(
        self,
        tenant_id: str,
        key_id: str,
        subject_id: int,
        templates: Sequence[NewTemplate],
        cap: int = MAX_TEMPLATES_PER_SUBJECT,
        *,
        actor: str,
    ) -> list[int]: ...
    def get_subject(self, key_id: str, subject_id: int) -> SubjectRecord: ...
    def subjects(self, key_id: str) -> list[SubjectRecord]: ...
    def templates(self, key_id: str, subject: str | None = None) -> list[TemplateRecord]: ...
    def delete_subject(self, tenant_id: str, key_id: str, subject_id: int, *, actor: str) -> None: ...
    def delete_template(self, tenant_id: str, key_id: str, template_id: int, *, actor: str) -> None: ...

    # packed galleries (derived data, rebuildable from templates)
    def galleries(self, key_id: str, stride: int, model_id: str) -> list[GalleryRecord]: ...
    def replace_galleries(
        self, key_id: str, stride: int, model_id: str, chunks: Sequence[tuple[bytes, Sequence[int], int]]
    ) -> None: ...

    # metadata, audit
    def get_meta(self, name: str, default: Any = None) -> Any: ...
    def set_meta(self, name: str, value: Any) -> None: ...
    def audit(self, tenant_id: str | None, after: int = 0, limit: int = 1000) -> list[AuditRecord]: ...

    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...
