"""The store's logic written once over a small SQL dialect seam, shared by SQLite and PostgreSQL.

Statements use ``?`` placeholders and only SQL both engines speak; a dialect supplies the transaction, the
placeholder style, the row-lock clauses (empty on SQLite, whose ``BEGIN IMMEDIATE`` already serialises writers)
and what happens after a delete (SQLite truncates its write-ahead log). Each public method is one transaction.

Lock order, the same in every write so that PostgreSQL never deadlocks: tenant row, pending registration row
(exclusive for activation, proof counting and deletion), key-set row (shared by writers of its subjects, exclusive
for gallery replacement and deletion), subject row (exclusive: template cap and last-template deletion), and the
audit row last of all.

Pending registrations live in their own table, one row per (key id, tenant), so a registration nobody can prove
(someone else's public key) never blocks its owner: the first correct proof turns its registration into the
active key set and drops the others. Unproven registrations expire after ``PENDING_TTL_S``.

One module on purpose (~600 lines): the lock order above must hold across every write, and keeping all of them
in one file is what lets a reader check it; the engine-specific parts live in sqlite.py and postgres.py.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from cryptoface.names import validate_name
from cryptoface.store.base import (
    MAX_TEMPLATES_PER_SUBJECT,
    PENDING_TTL_S,
    ApiKeyRecord,
    AuditRecord,
    ConflictError,
    GalleryRecord,
    KeySetPendingError,
    KeySetRecord,
    NewTemplate,
    StoreError,
    SubjectRecord,
    TemplateCapError,
    TemplateRecord,
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

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_KEY_SET_COLUMNS = "key_id, tenant_id, backend, params_json, params_id, created_at, status, proof_hash, failed_proofs"
_REG_COLUMNS = "key_id, tenant_id, backend, params_json, params_id, created_at, proof_hash, failed_proofs"
_TEMPLATE_COLUMNS = (
    "t.id, s.key_id, s.id, s.name, t.ciphertext, t.level, t.stride, t.model_id, t.params_id, t.created_at"
)
COUNTED_TABLES = ("tenants", "api_keys", "registrations", "key_sets", "key_blobs", "subjects", "templates", "galleries",
                  "audit")


class Tx:
    """One open transaction; ``?``-style parameterised statements, translated to the driver's style."""

    def __init__(self, cursor: Any, placeholder: str = "?") -> None:
        self._cur = cursor
        self._mark = placeholder

    def _sql(self, sql: str) -> str:
        return sql if self._mark == "?" else sql.replace("?", self._mark)

    def _execute(self, sql: str, args: Sequence[Any]) -> None:
        if args:
            self._cur.execute(self._sql(sql), tuple(args))
        else:  # no parameters: the statement text is sent as it is
            self._cur.execute(sql)

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Execute a statement; the number of rows it changed."""
        self._execute(sql, args)
        return int(self._cur.rowcount)

    def all(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self._execute(sql, args)
        return [tuple(r) for r in self._cur.fetchall()]

    def one(self, sql: str, args: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self.all(sql, args)
        return rows[0] if rows else None

    def insert_id(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run an INSERT into a table with an integer ``id`` and return the new id."""
        raise NotImplementedError


def _sha256_hex(value: str, what: str) -> str:
    if not isinstance(value, str) or not _SHA256_HEX.fullmatch(value):
        raise StoreError(f"{what} must be a sha256 hex digest (64 lowercase hex characters)")
    return value


def _token(value: str, what: str, max_len: int = 200) -> str:
    if not isinstance(value, str) or not value or value != value.strip() or len(value) > max_len:
        raise StoreError(f"{what} must be 1..{max_len} characters without surrounding whitespace")
    if not value.isprintable():
        raise StoreError(f"{what} must be printable")
    return value


def _pending(row: Sequence[Any]) -> KeySetRecord:
    """A registrations row (``_REG_COLUMNS``) as a pending key set; its public key is the only key it holds."""
    return KeySetRecord(row[0], row[1], row[2], row[3], row[4], float(row[5]), "pending", row[6], int(row[7]),
                        ("public",))


def _templates(templates: Sequence[NewTemplate], cap: int) -> list[NewTemplate]:
    templates = list(templates)
    if not templates:
        raise StoreError("nothing to enrol: no template was given")
    if len(templates) > cap:
        raise TemplateCapError(f"a subject holds at most {cap} templates; {len(templates)} were sent")
    for t in templates:
        if not isinstance(t, NewTemplate) or not bytes(t.ciphertext):
            raise StoreError("a template must be a NewTemplate with a non-empty ciphertext")
    return templates


class SQLStore:
    """:class:`~cryptoface.store.base.TemplateStore` over a dialect; subclasses open connections and transactions."""

    # Row-lock clauses appended to a SELECT of a parent row a write depends on (empty where the engine serialises).
    SHARE = ""
    UPDATE = ""

    # -- dialect seam -----------------------------------------------------------------------------
    def _tx(self, write: bool = True) -> AbstractContextManager[Tx]:
        """A transaction: all statements commit together or not at all."""
        raise NotImplementedError

    def _order_audit(self, tx: Tx) -> None:
        """Make audit ids rise in commit order (PostgreSQL serialises audit inserts; SQLite already does)."""

    def _after_delete(self) -> None:
        """Run after a committed delete, outside the transaction (SQLite truncates its write-ahead log)."""

    def close(self) -> None:
        raise NotImplementedError

    # -- shared helpers ---------------------------------------------------------------------------
    def _audit(
        self,
        tx: Tx,
        actor: str,
        action: str,
        tenant_id: str | None,
        key_id: str | None = None,
        subject_id: int | None = None,
        template_ids: Sequence[int] = (),
        detail: str = "",
    ) -> None:
        self._order_audit(tx)  # last statement of every write: nothing is locked after it
        tx.run(
            "INSERT INTO audit (at, tenant_id, actor, action, key_id, subject_id, template_ids, detail) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (time.time(), tenant_id, actor, action, key_id, subject_id, json.dumps([int(i) for i in template_ids]),
             detail),
        )

    def _lock_tenant(self, tx: Tx, tenant_id: str) -> None:
        if tx.one("SELECT 1 FROM tenants WHERE tenant_id = ?" + self.SHARE, (tenant_id,)) is None:
            raise UnknownTenantError(f"unknown tenant {tenant_id!r}")

    def _lock_key_set(self, tx: Tx, tenant_id: str | None, key_id: str, lock: str, active: bool = False) -> str:
        """Lock the key set's row (``lock``: SHARE or UPDATE) and return its owner; scoped to ``tenant_id`` if given."""
        sql, args = "SELECT tenant_id, status FROM key_sets WHERE key_id = ?", [key_id]
        if tenant_id is not None:
            sql, args = sql + " AND tenant_id = ?", [*args, tenant_id]
        row = tx.one(sql + lock, args)
        if row is None:
            if tenant_id is not None and self._registration(tx, key_id, tenant_id) is not None:
                raise KeySetPendingError("the key set is pending: answer its proof-of-possession challenge first")
            raise UnknownKeySetError(f"unknown key set {key_id!r}; register the client's keys first")
        return str(row[0])

    def _registration(self, tx: Tx, key_id: str, tenant_id: str, lock: str = "") -> KeySetRecord | None:
        """The tenant's unexpired pending registration of ``key_id`` (its public key is the only key it holds)."""
        row = tx.one(f"SELECT {_REG_COLUMNS} FROM registrations WHERE key_id = ? AND tenant_id = ? AND created_at > ?"
                     + lock, (key_id, tenant_id, time.time() - PENDING_TTL_S))
        return None if row is None else _pending(row)

    def _key_set(self, tx: Tx, key_id: str, tenant_id: str | None) -> KeySetRecord:
        sql, args = f"SELECT {_KEY_SET_COLUMNS} FROM key_sets WHERE key_id = ?", [key_id]
        if tenant_id is not None:
            sql, args = sql + " AND tenant_id = ?", [*args, tenant_id]
        row = tx.one(sql, args)
        if row is None:
            pending = None if tenant_id is None else self._registration(tx, key_id, tenant_id)
            if pending is None:
                raise UnknownKeySetError(f"unknown key set {key_id!r}; register the client's keys first")
            return pending
        kinds = tuple(sorted(r[0] for r in tx.all("SELECT kind FROM key_blobs WHERE key_id = ?", (key_id,))))
        return KeySetRecord(
            row[0], row[1], row[2], row[3], row[4], float(row[5]), row[6], row[7], int(row[8]), kinds
        )

    def _insert_template(self, tx: Tx, subject_id: int, t: NewTemplate, now: float) -> int:
        return tx.insert_id(
            "INSERT INTO templates (subject_id, ciphertext, level, stride, model_id, params_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (subject_id, bytes(t.ciphertext), int(t.level), int(t.stride), str(t.model_id), str(t.params_id), now),
        )

    # -- tenants and credentials ------------------------------------------------------------------
    def create_tenant(self, name: str, *, actor: str = "admin") -> TenantRecord:
        """A new tenant with an opaque id ('tn_' + 16 hex); ConflictError if the (NFC) name exists."""
        name = validate_name(name, "tenant name")
        tenant_id, now = "tn_" + secrets.token_hex(8), time.time()
        with self._tx() as tx:
            if tx.one("SELECT 1 FROM tenants WHERE name = ?", (name,)) is not None:
                raise ConflictError(f"a tenant named {name!r} exists already")
            tx.run("INSERT INTO tenants (tenant_id, name, created_at) VALUES (?, ?, ?)", (tenant_id, name, now))
            self._audit(tx, _token(actor, "actor"), "tenant.create", tenant_id)
        return TenantRecord(tenant_id, name, now)

    def get_tenant(self, tenant_id: str) -> TenantRecord:
        with self._tx(write=False) as tx:
            row = tx.one("SELECT tenant_id, name, created_at FROM tenants WHERE tenant_id = ?", (tenant_id,))
        if row is None:
            raise UnknownTenantError(f"unknown tenant {tenant_id!r}")
        return TenantRecord(row[0], row[1], float(row[2]))

    def list_tenants(self) -> list[TenantRecord]:
        with self._tx(write=False) as tx:
            rows = tx.all("SELECT tenant_id, name, created_at FROM tenants ORDER BY created_at, tenant_id")
        return [TenantRecord(r[0], r[1], float(r[2])) for r in rows]

    def add_api_key(self, tenant_id: str, key_id: str, token_hash: str, *, actor: str = "admin") -> ApiKeyRecord:
        """Store an API key by the sha256 hex of its token (never the token); ConflictError if the id exists."""
        _token(key_id, "API key id", 64)
        _sha256_hex(token_hash, "token_hash")
        now = time.time()
        with self._tx() as tx:
            self._lock_tenant(tx, tenant_id)
            if tx.one("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)) is not None:
                raise ConflictError(f"API key id {key_id!r} exists already")
            tx.run(
                "INSERT INTO api_keys (key_id, tenant_id, token_hash, created_at) VALUES (?, ?, ?, ?)",
                (key_id, tenant_id, token_hash, now),
            )
            self._audit(tx, _token(actor, "actor"), "api_key.create", tenant_id, detail=f"api_key={key_id}")
        return ApiKeyRecord(key_id, tenant_id, token_hash, now, None)

    def api_key_by_id(self, key_id: str) -> ApiKeyRecord | None:
        """The key's record with its token hash, owner and revocation time; None if there is no such key."""
        with self._tx(write=False) as tx:
            row = tx.one(
                "SELECT key_id, tenant_id, token_hash, created_at, revoked_at FROM api_keys WHERE key_id = ?", (key_id,)
            )
        return None if row is None else ApiKeyRecord(row[0], row[1], row[2], float(row[3]), row[4])

    def api_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        """The tenant's API keys, revoked ones included."""
        with self._tx(write=False) as tx:
            rows = tx.all(
                "SELECT key_id, tenant_id, token_hash, created_at, revoked_at FROM api_keys WHERE tenant_id = ? "
                "ORDER BY created_at, key_id",
                (tenant_id,),
            )
        return [ApiKeyRecord(r[0], r[1], r[2], float(r[3]), r[4]) for r in rows]

    def revoke_api_key(self, key_id: str, *, actor: str = "admin") -> None:
        """Mark the key revoked (kept for the audit trail); revoking it again changes nothing."""
        with self._tx() as tx:
            row = tx.one("SELECT tenant_id, revoked_at FROM api_keys WHERE key_id = ?" + self.UPDATE, (key_id,))
            if row is None:
                raise UnknownApiKeyError(f"unknown API key {key_id!r}")
            if row[1] is None:
                tx.run("UPDATE api_keys SET revoked_at = ? WHERE key_id = ?", (time.time(), key_id))
                self._audit(tx, _token(actor, "actor"), "api_key.revoke", row[0], detail=f"api_key={key_id}")

    # -- key sets -----------------------------------------------------------------------------------
    def create_key_set(
        self, tenant_id: str, backend: str, params_json: str, public_key: bytes, proof_hash: str, *, actor: str
    ) -> KeySetRecord:
        """Register a public key as a *pending* key set of the tenant; ConflictError if it is active (any tenant)
        or pending under this tenant. Pending registrations of other tenants do not block: the proof decides."""
        public_key = bytes(public_key)
        if not public_key:
            raise StoreError("the public key is empty")
        _token(backend, "backend", 64)
        _sha256_hex(proof_hash, "proof_hash")
        try:
            params_id = params_fingerprint(params_json)
        except (TypeError, ValueError) as e:
            raise StoreError(f"params_json is not valid JSON: {e}") from None
        key_id, now = key_fingerprint(public_key), time.time()
        with self._tx() as tx:
            self._lock_tenant(tx, tenant_id)
            tx.run("DELETE FROM registrations WHERE created_at <= ?", (now - PENDING_TTL_S,))
            if tx.one("SELECT 1 FROM key_sets WHERE key_id = ?", (key_id,)) is not None:
                raise ConflictError(f"key set {key_id[:12]} is registered already; key sets are create-only")
            if self._registration(tx, key_id, tenant_id) is not None:
                raise ConflictError(f"key set {key_id[:12]} is pending already: answer its challenge, or delete it "
                                    "and register again")
            tx.run(
                f"INSERT INTO registrations ({_REG_COLUMNS}, public_key) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
                (key_id, tenant_id, backend, params_json, params_id, now, proof_hash, public_key),
            )
            self._audit(tx, _token(actor, "actor"), "keyset.register", tenant_id, key_id)
        return KeySetRecord(key_id, tenant_id, backend, params_json, params_id, now, "pending", proof_hash, 0,
                            ("public",))

    def activate_key_set(self, tenant_id: str, key_id: str, *, actor: str) -> KeySetRecord:
        """Turn the tenant's pending registration (its proof was accepted) into the active key set and drop every
        other tenant's registration of the same key; activating it again changes nothing."""
        with self._tx() as tx:
            self._lock_tenant(tx, tenant_id)
            pending = self._registration(tx, key_id, tenant_id, self.UPDATE)
            if pending is None:
                return self._key_set(tx, key_id, tenant_id)  # active already (its owner), else UnknownKeySetError
            if tx.one("SELECT 1 FROM key_sets WHERE key_id = ?", (key_id,)) is not None:
                raise ConflictError("another registration of this key set was proven first")
            row = tx.one("SELECT public_key FROM registrations WHERE key_id = ? AND tenant_id = ?", (key_id, tenant_id))
            assert row is not None  # locked above
            tx.run(
                f"INSERT INTO key_sets ({_KEY_SET_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, 'active', ?, ?)",
                (key_id, tenant_id, pending.backend, pending.params_json, pending.params_id, pending.created_at,
                 pending.proof_hash, pending.failed_proofs),
            )
            public = bytes(row[0])
            tx.run("INSERT INTO key_blobs (key_id, kind, data, size) VALUES (?, 'public', ?, ?)",
                   (key_id, public, len(public)))
            tx.run("DELETE FROM registrations WHERE key_id = ?", (key_id,))
            self._audit(tx, _token(actor, "actor"), "keyset.activate", tenant_id, key_id)
            return self._key_set(tx, key_id, tenant_id)

    def record_failed_proof(self, tenant_id: str, key_id: str, *, actor: str) -> int:
        """Count a wrong proof on a pending key set; the number of failed attempts so far."""
        with self._tx() as tx:
            self._lock_tenant(tx, tenant_id)
            pending = self._registration(tx, key_id, tenant_id, self.UPDATE)
            if pending is None:
                self._key_set(tx, key_id, tenant_id)  # UnknownKeySetError unless it is the tenant's active one
                raise ConflictError("the key set is active already; there is no challenge to answer")
            attempts = pending.failed_proofs + 1
            tx.run("UPDATE registrations SET failed_proofs = ? WHERE key_id = ? AND tenant_id = ?",
                   (attempts, key_id, tenant_id))
            self._audit(tx, _token(actor, "actor"), "keyset.proof_failed", tenant_id, key_id,
                        detail=f"attempt={attempts}")
        return attempts

    def add_key(self, tenant_id: str, key_id: str, kind: str, data: bytes, *, actor: str) -> KeySetRecord:
        """Store one evaluation key (create-only: ConflictError if the kind is stored); the caller vets the kind."""
        _token(kind, "key kind", 64)
        if kind == "public" or is_secret_kind(kind):
            raise StoreError(f"refused key kind {kind!r}: only evaluation keys are added to a key set")
        data = bytes(data)
        if not data:
            raise StoreError("the key is empty")
        with self._tx() as tx:
            self._lock_key_set(tx, tenant_id, key_id, self.SHARE)
            if tx.one("SELECT 1 FROM key_blobs WHERE key_id = ? AND kind = ?", (key_id, kind)) is not None:
                raise ConflictError(f"key {kind!r} is stored already; key sets are create-only (register a new one)")
            tx.run(
                "INSERT INTO key_blobs (key_id, kind, data, size) VALUES (?, ?, ?, ?)", (key_id, kind, data, len(data))
            )
            self._audit(tx, _token(actor, "actor"), "key.add", tenant_id, key_id, detail=f"kind={kind}")
            return self._key_set(tx, key_id, tenant_id)

    def get_key_set(self, key_id: str, tenant_id: str | None = None) -> KeySetRecord:
        """The key set; with ``tenant_id`` another tenant's key set is unknown (None: any tenant, internal use)."""
        with self._tx(write=False) as tx:
            return self._key_set(tx, key_id, tenant_id)

    def key_set_keys(self, key_id: str, kinds: Sequence[str] | None = None) -> dict[str, bytes]:
        """The key set's keys by kind; only ``kinds`` when given (a public key without gigabytes of rotation keys)."""
        with self._tx(write=False) as tx:
            self._key_set(tx, key_id, None)
            if kinds is None:
                rows = tx.all("SELECT kind, data FROM key_blobs WHERE key_id = ?", (key_id,))
            elif not kinds:
                rows = []
            else:
                marks = ", ".join("?" * len(kinds))
                rows = tx.all(
                    f"SELECT kind, data FROM key_blobs WHERE key_id = ? AND kind IN ({marks})", (key_id, *kinds)
                )
        return {kind: bytes(data) for kind, data in rows}

    def key_set_bytes(self, key_id: str) -> int:
        """Sum of the stored key sizes in bytes (the service's memory budget scales it)."""
        with self._tx(write=False) as tx:
            self._key_set(tx, key_id, None)
            row = tx.one("SELECT COALESCE(SUM(size), 0) FROM key_blobs WHERE key_id = ?", (key_id,))
        return int(row[0]) if row else 0

    def list_key_sets(self, tenant_id: str | None = None) -> list[KeySetRecord]:
        """Key sets in registration order; only the tenant's when ``tenant_id`` is given."""
        with self._tx(write=False) as tx:
            sql, args = "SELECT key_id FROM key_sets", []
            if tenant_id is not None:
                sql, args = sql + " WHERE tenant_id = ?", [tenant_id]
            ids = [r[0] for r in tx.all(sql + " ORDER BY created_at, key_id", args)]
            active = [self._key_set(tx, k, None) for k in ids]
            sql, args = f"SELECT {_REG_COLUMNS} FROM registrations WHERE created_at > ?", [time.time() - PENDING_TTL_S]
            if tenant_id is not None:
                sql, args = sql + " AND tenant_id = ?", [*args, tenant_id]
            pending = [_pending(r) for r in tx.all(sql, args)]
        return sorted(active + pending, key=lambda k: (k.created_at, k.key_id))

    def delete_key_set(self, tenant_id: str | None, key_id: str, *, actor: str) -> None:
        """Erase the key set, its keys, subjects, templates and galleries, in any state (None: any tenant)."""
        with self._tx() as tx:
            if tenant_id is not None and self._registration(tx, key_id, tenant_id, self.UPDATE) is not None:
                tx.run("DELETE FROM registrations WHERE key_id = ? AND tenant_id = ?", (key_id, tenant_id))
                self._audit(tx, _token(actor, "actor"), "keyset.delete", tenant_id, key_id, detail="pending")
            else:
                owner = self._lock_key_set(tx, tenant_id, key_id, self.UPDATE)
                n_subjects = tx.one("SELECT COUNT(*) FROM subjects WHERE key_id = ?", (key_id,))
                tx.run("DELETE FROM key_sets WHERE key_id = ?", (key_id,))  # cascades to blobs, subjects, galleries
                self._audit(tx, _token(actor, "actor"), "keyset.delete", owner, key_id,
                            detail=f"subjects={int(n_subjects[0]) if n_subjects else 0}")
        self._after_delete()

    # -- subjects and templates ---------------------------------------------------------------------
    def create_subject(
        self,
        tenant_id: str,
        key_id: str,
        subject: str,
        templates: Sequence[NewTemplate],
        *,
        actor: str,
        cap: int = MAX_TEMPLATES_PER_SUBJECT,
    ) -> tuple[int, list[int]]:
        """A new subject with its first templates, all or nothing; ConflictError if the name is enrolled already."""
        name = validate_name(subject, "subject name")
        templates = _templates(templates, cap)
        now = time.time()
        with self._tx() as tx:
            self._lock_key_set(tx, tenant_id, key_id, self.SHARE, active=True)
            if tx.one("SELECT 1 FROM subjects WHERE key_id = ? AND name = ?", (key_id, name)) is not None:
                raise ConflictError("this subject is enrolled already under the key set; add templates to it instead")
            subject_id = tx.insert_id(
                "INSERT INTO subjects (key_id, name, created_at) VALUES (?, ?, ?)", (key_id, name, now)
            )
            ids = [self._insert_template(tx, subject_id, t, now) for t in templates]
            tx.run("DELETE FROM galleries WHERE key_id = ?", (key_id,))  # packed galleries are stale now
            self._audit(tx, _token(actor, "actor"), "subject.create", tenant_id, key_id, subject_id, ids)
        return subject_id, ids

    def add_templates(
        self,
        tenant_id: str,
        key_id: str,
        subject_id: int,
        templates: Sequence[NewTemplate],
        cap: int = MAX_TEMPLATES_PER_SUBJECT,
        *,
        actor: str,
    ) -> list[int]:
        """Add templates to an existing subject, all or nothing; TemplateCapError past ``cap`` in all."""
        templates = _templates(templates, cap)
        now = time.time()
        with self._tx() as tx:
            self._lock_key_set(tx, tenant_id, key_id, self.SHARE, active=True)
            sid = int(subject_id)
            # the subject's row lock serialises concurrent additions, so the cap holds under concurrency
            if tx.one("SELECT id FROM subjects WHERE id = ? AND key_id = ?" + self.UPDATE, (sid, key_id)) is None:
                raise UnknownSubjectError(f"no subject {sid} is enrolled under this key set")
            row = tx.one("SELECT COUNT(*) FROM templates WHERE subject_id = ?", (sid,))
            have = int(row[0]) if row else 0
            if have + len(templates) > cap:
                raise TemplateCapError(
                    f"a subject holds at most {cap} templates; it has {have} and {len(templates)} more were sent"
                )
            ids = [self._insert_template(tx, sid, t, now) for t in templates]
            tx.run("DELETE FROM galleries WHERE key_id = ?", (key_id,))
            self._audit(tx, _token(actor, "actor"), "template.add", tenant_id, key_id, sid, ids)
        return ids

    def get_subject(self, key_id: str, subject_id: int) -> SubjectRecord:
        """One subject of the key set with its template ids; UnknownSubjectError otherwise."""
        with self._tx(write=False) as tx:
            row = tx.one(
                "SELECT id, key_id, name, created_at FROM subjects WHERE id = ? AND key_id = ?",
                (int(subject_id), key_id),
            )
            if row is None:
                raise UnknownSubjectError(f"no subject {subject_id} is enrolled under this key set")
            rows = tx.all("SELECT id FROM templates WHERE subject_id = ? ORDER BY id", (row[0],))
        ids = tuple(int(r[0]) for r in rows)
        return SubjectRecord(int(row[0]), row[1], row[2], ids, float(row[3]))

    def subjects(self, key_id: str) -> list[SubjectRecord]:
        """The key set's subjects in code-point order of their names (the same on every engine and locale)."""
        with self._tx(write=False) as tx:
            self._key_set(tx, key_id, None)
            rows = tx.all("SELECT id, key_id, name, created_at FROM subjects WHERE key_id = ?", (key_id,))
            by_subject: dict[int, list[int]] = {int(r[0]): [] for r in rows}
            for sid, tid in tx.all(
                "SELECT t.subject_id, t.id FROM templates t JOIN subjects s ON t.subject_id = s.id "
                "WHERE s.key_id = ? ORDER BY t.id",
                (key_id,),
            ):
                by_subject[int(sid)].append(int(tid))
        rows.sort(key=lambda r: (r[2], int(r[0])))
        return [SubjectRecord(int(r[0]), r[1], r[2], tuple(by_subject[int(r[0])]), float(r[3])) for r in rows]

    def templates(self, key_id: str, subject: str | None = None) -> list[TemplateRecord]:
        """The key set's templates in id order, or one subject's (by name; UnknownSubjectError if not enrolled)."""
        sql = f"SELECT {_TEMPLATE_COLUMNS} FROM templates t JOIN subjects s ON t.subject_id = s.id WHERE s.key_id = ?"
        args: list[Any] = [key_id]
        if subject is not None:
            sql, args = sql + " AND s.name = ?", [*args, validate_name(subject, "subject name")]
        with self._tx(write=False) as tx:
            self._key_set(tx, key_id, None)
            rows = tx.all(sql + " ORDER BY t.id", args)
        if subject is not None and not rows:
            raise UnknownSubjectError("no such subject is enrolled under this key set")
        return [
            TemplateRecord(int(r[0]), r[1], int(r[2]), r[3], bytes(r[4]), int(r[5]), int(r[6]), r[7], r[8], float(r[9]))
            for r in rows
        ]

    def delete_subject(self, tenant_id: str, key_id: str, subject_id: int, *, actor: str) -> None:
        """Erase the subject and all its templates (key set in any state)."""
        sid = int(subject_id)
        with self._tx() as tx:
            self._lock_key_set(tx, tenant_id, key_id, self.SHARE)
            ids = [int(r[0]) for r in tx.all("SELECT id FROM templates WHERE subject_id = ? ORDER BY id", (sid,))]
            if not tx.run("DELETE FROM subjects WHERE id = ? AND key_id = ?", (sid, key_id)):
                raise UnknownSubjectError(f"no subject {sid} is enrolled under this key set")
            tx.run("DELETE FROM galleries WHERE key_id = ?", (key_id,))
            self._audit(tx, _token(actor, "actor"), "subject.delete", tenant_id, key_id, sid, ids)
        self._after_delete()

    def delete_template(self, tenant_id: str, key_id: str, template_id: int, *, actor: str) -> None:
        """Erase one template; a subject left without templates is erased too (its own audit row)."""
        tid = int(template_id)
        with self._tx() as tx:
            self._lock_key_set(tx, tenant_id, key_id, self.SHARE)
            row = tx.one(
                "SELECT t.subject_id FROM templates t JOIN subjects s ON t.subject_id = s.id "
                "WHERE t.id = ? AND s.key_id = ?",
                (tid, key_id),
            )
            if row is None:
                raise UnknownTemplateError(f"no template {tid} is enrolled under this key set")
            sid = int(row[0])
            tx.one("SELECT id FROM subjects WHERE id = ?" + self.UPDATE, (sid,))  # serialise with additions
            if not tx.run("DELETE FROM templates WHERE id = ? AND subject_id = ?", (tid, sid)):
                raise UnknownTemplateError(f"no template {tid} is enrolled under this key set")
            left = tx.one("SELECT COUNT(*) FROM templates WHERE subject_id = ?", (sid,))
            tx.run("DELETE FROM galleries WHERE key_id = ?", (key_id,))
            if left is not None and int(left[0]) == 0:
                tx.run("DELETE FROM subjects WHERE id = ?", (sid,))
            self._audit(tx, _token(actor, "actor"), "template.delete", tenant_id, key_id, sid, [tid])
            if left is not None and int(left[0]) == 0:
                self._audit(tx, actor, "subject.delete", tenant_id, key_id, sid, [], detail="last template deleted")
        self._after_delete()

    # -- galleries ----------------------------------------------------------------------------------
    def galleries(self, key_id: str, stride: int, model_id: str) -> list[GalleryRecord]:
        with self._tx(write=False) as tx:
            rows = tx.all(
                "SELECT key_id, stride, model_id, chunk, ciphertext, template_ids, level, created_at FROM galleries "
                "WHERE key_id = ? AND stride = ? AND model_id = ? ORDER BY chunk",
                (key_id, int(stride), model_id),
            )
        return [
            GalleryRecord(
                r[0], int(r[1]), r[2], int(r[3]), bytes(r[4]), tuple(json.loads(r[5])), int(r[6]), float(r[7])
            )
            for r in rows
        ]

    def replace_galleries(
        self, key_id: str, stride: int, model_id: str, chunks: Sequence[tuple[bytes, Sequence[int], int]]
    ) -> None:
        """Replace the packed galleries of (key set, stride, model): chunks of (ciphertext, template ids, level).

        Refused (nothing written) if a template was enrolled or deleted meanwhile, so a stale gallery is never kept:
        the key set's exclusive row lock waits for subject writers, which drop the galleries when they commit.
        """
        now = time.time()
        with self._tx() as tx:
            self._lock_key_set(tx, None, key_id, self.UPDATE)
            current = {
                int(r[0])
                for r in tx.all(
                    "SELECT t.id FROM templates t JOIN subjects s ON t.subject_id = s.id "
                    "WHERE s.key_id = ? AND t.stride = ? AND t.model_id = ?",
                    (key_id, int(stride), model_id),
                )
            }
            packed = {int(i) for _, ids, _ in chunks for i in ids}
            if packed != current:
                raise ConflictError("the gallery changed while it was being packed; pack again")
            tx.run(
                "DELETE FROM galleries WHERE key_id = ? AND stride = ? AND model_id = ?",
                (key_id, int(stride), model_id),
            )
            for i, (ct, ids, level) in enumerate(chunks):
                tx.run(
                    "INSERT INTO galleries (key_id, stride, model_id, chunk, ciphertext, template_ids, level, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key_id, int(stride), model_id, i, bytes(ct), json.dumps([int(x) for x in ids]), int(level), now),
                )

    # -- metadata, audit, counts ----------------------------------------------------------------------
    def get_meta(self, name: str, default: Any = None) -> Any:
        with self._tx(write=False) as tx:
            row = tx.one("SELECT value FROM meta WHERE name = ?", (name,))
        return default if row is None else json.loads(row[0])

    def set_meta(self, name: str, value: Any) -> None:
        if name == "schema_version":
            raise StoreError("schema_version is the store's own")
        with self._tx() as tx:
            tx.run(
                "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(value)),
            )

    def audit(self, tenant_id: str | None, after: int = 0, limit: int = 1000) -> list[AuditRecord]:
        """Audit rows with id > ``after`` in id (= commit) order; only the tenant's unless ``tenant_id`` is None."""
        sql, args = (
            "SELECT id, at, tenant_id, actor, action, key_id, subject_id, template_ids, detail FROM audit WHERE id > ?",
            [int(after)],
        )
        if tenant_id is not None:
            sql, args = sql + " AND tenant_id = ?", [*args, tenant_id]
        with self._tx(write=False) as tx:
            rows = tx.all(sql + " ORDER BY id LIMIT ?", [*args, max(1, min(int(limit), 10_000))])
        return [
            AuditRecord(int(r[0]), float(r[1]), r[2], r[3], r[4], r[5], None if r[6] is None else int(r[6]),
                        tuple(json.loads(r[7])), r[8])
            for r in rows
        ]

    def counts(self) -> dict[str, int]:
        with self._tx(write=False) as tx:
            return {t: int(tx.one(f"SELECT COUNT(*) FROM {t}")[0]) for t in COUNTED_TABLES}  # type: ignore[index]


def migrate_2_to_3(tx: Tx, registrations_table: str) -> None:
    """Move version-2 pending key sets (rows of ``key_sets``) into the ``registrations`` table it creates."""
    for stmt in iter_statements(registrations_table):
        tx.run(stmt)
    tx.run(
        f"INSERT INTO registrations ({_REG_COLUMNS}, public_key) "
        "SELECT k.key_id, k.tenant_id, k.backend, k.params_json, k.params_id, k.created_at, k.proof_hash, "
        "k.failed_proofs, b.data FROM key_sets k JOIN key_blobs b ON b.key_id = k.key_id AND b.kind = 'public' "
        "WHERE k.status = 'pending'"
    )
    tx.run("DELETE FROM key_sets WHERE status = 'pending'")  # cascades to their public-key blobs
    tx.run("UPDATE meta SET value = ? WHERE name = 'schema_version'", (json.dumps(3),))


def iter_statements(script: str) -> Iterator[str]:
    """The statements of a schema script (no ';' inside a statement), for drivers that run one at a time."""
    for stmt in script.split(";"):
        if stmt.strip():
            yield stmt.strip()
