"""Persistence of key sets, subjects, encrypted templates and packed galleries (see :mod:`.base`)."""

from cryptoface.store.base import (
    ConflictError,
    GalleryRecord,
    KeySetRecord,
    NewTemplate,
    StoreError,
    TemplateRecord,
    TemplateStore,
    UnknownKeySetError,
    UnknownSubjectError,
    key_fingerprint,
    params_fingerprint,
)
from cryptoface.store.sqlite import SQLiteStore

__all__ = [
    "ConflictError",
    "GalleryRecord",
    "KeySetRecord",
    "NewTemplate",
    "SQLiteStore",
    "StoreError",
    "TemplateRecord",
    "TemplateStore",
    "UnknownKeySetError",
    "UnknownSubjectError",
    "key_fingerprint",
    "params_fingerprint",
]
