"""SQLite implementation of :class:`~cryptoface.store.base.TemplateStore`: one file, WAL, one transaction per write.

Crash safety: each public write runs inside ``BEGIN IMMEDIATE ... COMMIT`` on its own connection, which also
serialises writers (across processes too), so the checks a write makes still hold when it commits; a process
killed between the statements of an enrolment leaves the database exactly as it was before it (SQLite's journal
rolls the partial transaction back on the next open). Connections are per thread, so the store can be shared by
the server's worker threads; WAL lets readers run while one writer commits.

Erasure: every connection runs with ``secure_delete=ON`` (freed pages are overwritten with zeros), and after each
delete the write-ahead log is checkpointed and truncated, so a deleted template's or key's bytes are in neither
the database file nor its ``-wal``. A reader holding an old snapshot at that moment can keep the log from being
truncated; the next delete's checkpoint (or closing the store) completes it.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptoface.store.base import SCHEMA_VERSION, ConflictError, StoreError, StoreUnavailableError, schema_refusal
from cryptoface.store.sql import SQLStore, Tx, iter_statements, migrate_2_to_3

_REGISTRATIONS = """
CREATE TABLE registrations (
    key_id TEXT NOT NULL, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), backend TEXT NOT NULL,
    params_json TEXT NOT NULL, params_id TEXT NOT NULL, created_at REAL NOT NULL, proof_hash TEXT NOT NULL,
    failed_proofs INTEGER NOT NULL DEFAULT 0, public_key BLOB NOT NULL, PRIMARY KEY (key_id, tenant_id));
CREATE INDEX registrations_tenant ON registrations(tenant_id)
"""
_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tenants (tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at REAL NOT NULL);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), token_hash TEXT NOT NULL,
    created_at REAL NOT NULL, revoked_at REAL);
CREATE TABLE key_sets (
    key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), backend TEXT NOT NULL,
    params_json TEXT NOT NULL, params_id TEXT NOT NULL, created_at REAL NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'active')), proof_hash TEXT NOT NULL,
    failed_proofs INTEGER NOT NULL DEFAULT 0);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
CREATE INDEX key_sets_tenant ON key_sets(tenant_id);
CREATE TABLE key_blobs (
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, kind TEXT NOT NULL, data BLOB NOT NULL,
    size INTEGER NOT NULL, PRIMARY KEY (key_id, kind));
CREATE TABLE subjects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE,
    name TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (key_id, name));
CREATE TABLE templates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    ciphertext BLOB NOT NULL, level INTEGER NOT NULL, stride INTEGER NOT NULL, model_id TEXT NOT NULL,
    params_id TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX templates_subject ON templates(subject_id);
CREATE TABLE galleries (
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, stride INTEGER NOT NULL,
    model_id TEXT NOT NULL, chunk INTEGER NOT NULL, ciphertext BLOB NOT NULL, template_ids TEXT NOT NULL,
    level INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (key_id, stride, model_id, chunk));
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, tenant_id TEXT, actor TEXT NOT NULL,
    action TEXT NOT NULL, key_id TEXT, subject_id INTEGER, template_ids TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX audit_tenant ON audit(tenant_id, id);
""" + ";" + _REGISTRATIONS


class _SQLiteTx(Tx):
    def insert_id(self, sql: str, args: Sequence[Any] = ()) -> int:
        self._cur.execute(sql, tuple(args))
        return int(self._cur.lastrowid)


class SQLiteStore(SQLStore):
    """Template store in one SQLite file (``:memory:`` is refused: per-thread connections need a file)."""

    def __init__(self, path: str | Path) -> None:
        if str(path) == ":memory:":
            raise ValueError("SQLiteStore needs a file path")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._init_schema()

    def _init_schema(self) -> None:
        """Create the schema in an empty file, or check the version of an existing one (refusing any other)."""
        self._conn().execute("PRAGMA journal_mode=WAL")  # a property of the file: set once, outside a transaction
        with self._tx() as tx:  # BEGIN IMMEDIATE: two processes opening a new file do not both create it
            if tx.one("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'") is not None:
                row = tx.one("SELECT value FROM meta WHERE name = 'schema_version'")
                version = None if row is None else json.loads(row[0])
                if version == 2:
                    migrate_2_to_3(tx, _REGISTRATIONS)
                elif version != SCHEMA_VERSION:
                    raise schema_refusal(str(self.path), version)
                return
            if tx.one("SELECT 1 FROM sqlite_master WHERE type = 'table'") is not None:
                raise StoreError(f"{self.path}: this SQLite file is not a CryptoFace store (no schema version)")
            for stmt in iter_statements(_SCHEMA):
                tx.run(stmt)
            tx.run("INSERT INTO meta (name, value) VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))

    # -- connections / transactions -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable against a killed process
            conn.execute("PRAGMA busy_timeout=30000")
            conn.execute("PRAGMA secure_delete=ON")  # per connection: deleted content is overwritten with zeros
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Tx]:
        conn = self._conn()
        cur = conn.cursor()
        # writers take the write lock up front, so the checks they make hold until they commit
        cur.execute("BEGIN IMMEDIATE" if write else "BEGIN")
        try:
            yield _SQLiteTx(cur)
        except sqlite3.IntegrityError as e:
            conn.rollback()
            raise ConflictError(f"the write contradicts what is stored ({e})") from None
        except sqlite3.OperationalError as e:  # locked past the busy timeout, disk full, file gone
            if conn.in_transaction:
                conn.rollback()
            raise StoreUnavailableError(f"the SQLite store is unavailable: {e}") from None
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def _after_delete(self) -> None:
        # move the log's frames (which still hold the deleted bytes) into the zeroed file and truncate the log
        self._conn().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed from another thread already
                    conn.close()
            self._all.clear()
        self._local = threading.local()
