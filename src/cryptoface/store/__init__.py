"""Persistence of tenants, API keys, key sets, subjects, encrypted templates, galleries and the audit log.

:mod:`.base` holds the protocol, records and errors; :class:`SQLiteStore` (the embedded default) and
:class:`~cryptoface.store.postgres.PostgresStore` (imported on demand: it needs psycopg) implement it;
:func:`open_store` picks one from a ``--db`` value.
"""

from __future__ import annotations

import os

from cryptoface.store.base import (
    MAX_TEMPLATES_PER_SUBJECT,
    SCHEMA_VERSION,
    ApiKeyRecord,
    AuditRecord,
    ConflictError,
    GalleryRecord,
    KeySetPendingError,
    KeySetRecord,
    NewTemplate,
    SchemaVersionError,
    StoreError,
    StoreUnavailableError,
    SubjectRecord,
    TemplateCapError,
    TemplateRecord,
    TemplateStore,
    TenantRecord,
    UnknownApiKeyError,
    UnknownKeySetError,
    UnknownSubjectError,
    UnknownTemplateError,
    UnknownTenantError,
    is_secret_kind,
    key_fingerprint,
    params_fingerprint,
)
from cryptoface.store.sqlite import SQLiteStore

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(target: str | os.PathLike[str], *, schema: str | None = None) -> TemplateStore:
    """A PostgreSQL store for a ``postgresql://`` (or ``postgres://``) URL, else a SQLite store at that path."""
    text = os.fspath(target)
    if text.startswith(POSTGRES_SCHEMES):
        from cryptoface.store.postgres import PostgresStore

        return PostgresStore(text, schema=schema)
    if schema is not None:
        raise StoreError("a schema applies to a PostgreSQL store only")
    return SQLiteStore(text)


__all__ = [
    "MAX_TEMPLATES_PER_SUBJECT",
    "SCHEMA_VERSION",
    "ApiKeyRecord",
    "AuditRecord",
    "ConflictError",
    "GalleryRecord",
    "KeySetPendingError",
    "KeySetRecord",
    "NewTemplate",
    "SQLiteStore",
    "SchemaVersionError",
    "StoreError",
    "StoreUnavailableError",
    "SubjectRecord",
    "TemplateCapError",
    "TemplateRecord",
    "TemplateStore",
    "TenantRecord",
    "UnknownApiKeyError",
    "UnknownKeySetError",
    "UnknownSubjectError",
    "UnknownTemplateError",
    "UnknownTenantError",
    "is_secret_kind",
    "key_fingerprint",
    "open_store",
    "params_fingerprint",
]
