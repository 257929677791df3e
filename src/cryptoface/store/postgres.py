"""PostgreSQL implementation of :class:`~cryptoface.store.base.TemplateStore` (psycopg 3), for several replicas.

Every public method is one transaction on a connection borrowed from a small pool (at most ``pool_size`` per
process, so many server threads do not exhaust the server's ``max_connections``). Where SQLite serialises writers
with ``BEGIN IMMEDIATE``, this store takes row locks in one fixed order (see :mod:`.sql`) and relies on unique
constraints: two replicas creating the same subject, key set or tenant at once end in one row and one
:class:`~cryptoface.store.base.ConflictError`; the template cap holds under concurrent additions (subject row
lock); audit inserts are serialised per schema by a transaction-scoped advisory lock, so audit ids rise in commit
order. A client killed mid-transaction closes its connection, and the server rolls the transaction back.

Blobs are ``BYTEA`` with ``STORAGE EXTERNAL`` (out of line, not compressed: ciphertexts and keys do not compress)
and are read in binary format (no hex doubling). Erasure is ``DELETE``: the dead tuples stay in the table's files
until ``VACUUM`` (autovacuum, or the operator's ``VACUUM`` after an erasure request) reclaims them.

``schema`` puts the tables in their own PostgreSQL schema (created if missing), so one database can hold several
stores (the tests give each test its own).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from cryptoface.store.base import (
    SCHEMA_VERSION,
    ConflictError,
    StoreError,
    StoreUnavailableError,
    schema_refusal,
)
from cryptoface.store.sql import SQLStore, Tx, iter_statements, migrate_2_to_3

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_TABLES = ("meta", "tenants", "api_keys", "registrations", "key_sets", "key_blobs", "subjects", "templates",
           "galleries", "audit")

_REGISTRATIONS = """
CREATE TABLE registrations (
    key_id TEXT NOT NULL, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), backend TEXT NOT NULL,
    params_json TEXT NOT NULL, params_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    proof_hash TEXT NOT NULL, failed_proofs INTEGER NOT NULL DEFAULT 0, public_key BYTEA NOT NULL,
    PRIMARY KEY (key_id, tenant_id));
CREATE INDEX registrations_tenant ON registrations(tenant_id)
"""
_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE tenants (tenant_id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_at DOUBLE PRECISION NOT NULL);
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), token_hash TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, revoked_at DOUBLE PRECISION);
CREATE INDEX api_keys_tenant ON api_keys(tenant_id);
CREATE TABLE key_sets (
    key_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL REFERENCES tenants(tenant_id), backend TEXT NOT NULL,
    params_json TEXT NOT NULL, params_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'active')), proof_hash TEXT NOT NULL,
    failed_proofs INTEGER NOT NULL DEFAULT 0);
CREATE INDEX key_sets_tenant ON key_sets(tenant_id);
CREATE TABLE key_blobs (
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, kind TEXT NOT NULL, data BYTEA NOT NULL,
    size BIGINT NOT NULL, PRIMARY KEY (key_id, kind));
ALTER TABLE key_blobs ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE subjects (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, name TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL, UNIQUE (key_id, name));
CREATE TABLE templates (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject_id BIGINT NOT NULL REFERENCES subjects(id) ON DELETE CASCADE, ciphertext BYTEA NOT NULL,
    level INTEGER NOT NULL, stride INTEGER NOT NULL, model_id TEXT NOT NULL, params_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL);
ALTER TABLE templates ALTER COLUMN ciphertext SET STORAGE EXTERNAL;
CREATE INDEX templates_subject ON templates(subject_id);
CREATE TABLE galleries (
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, stride INTEGER NOT NULL,
    model_id TEXT NOT NULL, chunk INTEGER NOT NULL, ciphertext BYTEA NOT NULL, template_ids TEXT NOT NULL,
    level INTEGER NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (key_id, stride, model_id, chunk));
ALTER TABLE galleries ALTER COLUMN ciphertext SET STORAGE EXTERNAL;
CREATE TABLE audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, at DOUBLE PRECISION NOT NULL, tenant_id TEXT,
    actor TEXT NOT NULL, action TEXT NOT NULL, key_id TEXT, subject_id BIGINT, template_ids TEXT NOT NULL,
    detail TEXT NOT NULL);
CREATE INDEX audit_tenant ON audit(tenant_id, id);
"""
_SCHEMA = _SCHEMA + _REGISTRATIONS



def _lock_key(purpose: str, schema: str) -> int:
    """A signed 64-bit advisory-lock key for one purpose in one schema (other schemas and apps do not collide)."""
    digest = hashlib.sha256(f"cryptoface:{purpose}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _PgTx(Tx):
    def insert_id(self, sql: str, args: Sequence[Any] = ()) -> int:
        self._cur.execute(self._sql(sql) + " RETURNING id", tuple(args))
        return int(self._cur.fetchone()[0])


class _Pool:
    """At most ``size`` connections; a broken connection or one left inside a transaction is closed, not reused."""

    def __init__(self, connect: Any, size: int, wait_s: float) -> None:
        self._connect = connect
        self._idle: list[Any] = []
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._size, self._wait_s, self._closed = size, wait_s, False

    @contextmanager
    def connection(self) -> Iterator[Any]:
        from psycopg.pq import TransactionStatus

        if self._closed:
            raise StoreError("the store is closed")
        if not self._slots.acquire(timeout=self._wait_s):
            raise StoreUnavailableError(f"all {self._size} database connections stayed busy for {self._wait_s:.0f} s")
        conn = None
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is not None and (conn.closed or conn.broken):
                conn = None  # dropped by the server meanwhile
            if conn is None:
                conn = self._connect()
            yield conn
        finally:
            if conn is not None:
                reusable = (
                    not conn.closed and not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE
                )
                with self._lock:
                    keep = reusable and not self._closed
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()


class PostgresStore(SQLStore):
    """Template store in a PostgreSQL database (``postgresql://user@host:port/db``), tables in ``schema`` if given."""

    SHARE = " FOR SHARE"
    UPDATE = " FOR UPDATE"

    def __init__(
        self, dsn: str, *, schema: str | None = None, pool_size: int = 8, connect_timeout_s: int = 10
    ) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "the PostgreSQL store needs psycopg 3: pip install 'cryptoface[postgres]' (psycopg[binary]>=3.2)"
            ) from None
        if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
            raise StoreError(f"schema name {schema!r}: use 1..63 of a-z, 0-9 and _, not starting with a digit")
        if pool_size < 1:
            raise StoreError("pool_size must be at least 1")
        self.dsn, self.schema = dsn, schema
        self._psycopg = psycopg
        self._timeout = int(connect_timeout_s)
        self._audit_lock = _lock_key("audit", schema or "")
        self._pool = _Pool(self._connect, pool_size, wait_s=60.0)
        self._init_schema()

    # -- connections / transactions -------------------------------------------------------------
    def _connect(self) -> Any:
        from psycopg import sql

        psycopg = self._psycopg
        try:
            conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=self._timeout)
        except psycopg.OperationalError as e:
            raise StoreUnavailableError(f"cannot connect to PostgreSQL: {str(e).strip()}") from None
        if self.schema is not None:  # an identifier cannot be a parameter: composed by psycopg, validated above
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    @contextmanager
    def _tx(self, write: bool = True) -> Iterator[Tx]:
        errors = self._psycopg.errors
        with self._pool.connection() as conn:
            try:
                with conn.transaction():  # BEGIN ... COMMIT, or ROLLBACK if anything raises inside
                    yield _PgTx(conn.cursor(binary=True), "%s")
            except (errors.UniqueViolation, errors.ForeignKeyViolation, errors.CheckViolation) as e:
                # a concurrent writer won the race that the checks inside the transaction could not see
                raise ConflictError(f"the write contradicts what is stored ({e.diag.message_primary})") from None
            except (errors.DeadlockDetected, errors.SerializationFailure) as e:
                raise ConflictError(f"a concurrent write interfered; retry ({e.diag.message_primary})") from None
            except self._psycopg.OperationalError as e:  # the server went away or refused mid-transaction
                raise StoreUnavailableError(f"the database is unavailable: {str(e).strip()[:200]}") from None

    def _order_audit(self, tx: Tx) -> None:
        tx.run("SELECT pg_advisory_xact_lock(?)", (self._audit_lock,))

    def _init_schema(self) -> None:
        """Create the tables (under an advisory lock: replicas starting together create them once) or check them."""
        from psycopg import sql

        where = f"{self._safe_dsn()}" + (f" schema {self.schema}" if self.schema else "")
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key("init", self.schema or ""),))
            if self.schema is not None:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            found = {
                r[0]
                for r in conn.execute(
                    "SELECT table_name FROM information_schema.tables "
                    "WHERE table_schema = current_schema() AND table_name::text = ANY(%s)",
                    (list(_TABLES),),
                )
            }
            if "meta" in found:
                row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
                version = None if row is None else json.loads(row[0])
                if version == 2:
                    migrate_2_to_3(_PgTx(conn.cursor(binary=True), "%s"), _REGISTRATIONS)
                elif version != SCHEMA_VERSION:
                    raise schema_refusal(where, version)
                return
            if found:
                raise StoreError(f"{where}: tables {sorted(found)} exist without a CryptoFace schema version")
            for stmt in iter_statements(_SCHEMA):
                conn.execute(stmt)
            conn.execute(
                "INSERT INTO meta (name, value) VALUES ('schema_version', %s)", (json.dumps(SCHEMA_VERSION),)
            )

    def _safe_dsn(self) -> str:
        """The DSN without its password, for messages."""
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", self.dsn)

    def close(self) -> None:
        self._pool.close()
