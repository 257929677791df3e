"""The storage interface of the matching service: key sets, subjects, encrypted templates, packed galleries.

Everything stored is public or encrypted: public/evaluation keys (never a secret key), CKKS ciphertexts and
the plaintext subject names. :class:`TemplateStore` is the interface; :class:`~cryptoface.store.sqlite.SQLiteStore`
is the one implementation today. A PostgreSQL implementation is out of scope for now; the interface is kept
free of SQLite specifics (no cursors, no rowids leak out; every write is one transaction) so one can be added.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from cryptoface.errors import CryptoFaceError

SECRET_KEY_KINDS = ("secret", "secret_key", "sk")


def key_fingerprint(public_key: bytes) -> str:
    """Key-set id: sha256 (hex) of the public-key bytes."""
    return hashlib.sha256(public_key).hexdigest()


def params_fingerprint(params_json: str) -> str:
    """Id of a CKKS parameter set: sha256 (hex, first 16) of its canonical JSON."""
    canonical = json.dumps(json.loads(params_json), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KeySetRecord:
    key_id: str
    backend: str
    params_json: str
    params_id: str
    created_at: float
    key_kinds: tuple[str, ...] = ()


@dataclass(frozen=True)
class TemplateRecord:
    id: int
    key_id: str
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


class StoreError(CryptoFaceError):
    """Base of store errors (the service maps them onto HTTP 4xx)."""


class UnknownKeySetError(StoreError):
    """No key set with that id is registered."""


class UnknownSubjectError(StoreError):
    """No subject with that name is enrolled under the key set."""


class ConflictError(StoreError):
    """The write contradicts what is stored (other parameters, templates still enrolled, a concurrent write)."""


@runtime_checkable
class TemplateStore(Protocol):
    """Persistence for the matching service; every method is atomic."""

    # key sets
    def add_key_set(self, backend: str, params_json: str, keys: Mapping[str, bytes]) -> KeySetRecord: ...
    def get_key_set(self, key_id: str) -> KeySetRecord: ...
    def key_set_keys(self, key_id: str, kinds: Sequence[str] | None = None) -> dict[str, bytes]: ...
    def list_key_sets(self) -> list[KeySetRecord]: ...
    def delete_key_set(self, key_id: str, *, only_if_empty: bool = True) -> None: ...

    # subjects and templates
    def enroll(self, key_id: str, subject: str, templates: Sequence[NewTemplate]) -> list[int]: ...
    def subjects(self, key_id: str) -> list[str]: ...
    def templates(self, key_id: str, subject: str | None = None) -> list[TemplateRecord]: ...
    def delete_subject(self, key_id: str, subject: str) -> None: ...

    # packed galleries (derived data, rebuildable from templates)
    def galleries(self, key_id: str, stride: int, model_id: str) -> list[GalleryRecord]: ...
    def replace_galleries(
        self, key_id: str, stride: int, model_id: str, chunks: Sequence[tuple[bytes, Sequence[int], int]]
    ) -> None: ...

    # metadata
    def get_meta(self, name: str, default: Any = None) -> Any: ...
    def set_meta(self, name: str, value: Any) -> None: ...

    def counts(self) -> dict[str, int]: ...
    def close(self) -> None: ...
