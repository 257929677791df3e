"""SQLite implementation of :class:`~cryptoface.store.base.TemplateStore`: one file, WAL, one transaction per write.

Crash safety: each public write runs inside ``BEGIN IMMEDIATE ... COMMIT`` on its own connection; a process
killed (or an exception raised) between the statements of an enrolment leaves the database exactly as it was
before it (SQLite's journal rolls the partial transaction back on the next open). Connections are per thread, so
the store can be shared by the server's worker threads; WAL lets readers run while one writer commits.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptoface.store.base import (
    SECRET_KEY_KINDS,
    ConflictError,
    GalleryRecord,
    KeySetRecord,
    NewTemplate,
    StoreError,
    TemplateRecord,
    UnknownKeySetError,
    UnknownSubjectError,
    key_fingerprint,
    params_fingerprint,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS key_sets (
    key_id TEXT PRIMARY KEY, backend TEXT NOT NULL, params_json TEXT NOT NULL, params_id TEXT NOT NULL,
    created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS key_blobs (
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, kind TEXT NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (key_id, kind));
CREATE TABLE IF NOT EXISTS subjects (
    id INTEGER PRIMARY KEY, key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE,
    name TEXT NOT NULL, created_at REAL NOT NULL, UNIQUE (key_id, name));
CREATE TABLE IF NOT EXISTS templates (
    id INTEGER PRIMARY KEY, subject_id INTEGER NOT NULL REFERENCES subjects(id) ON DELETE CASCADE,
    ciphertext BLOB NOT NULL, level INTEGER NOT NULL, stride INTEGER NOT NULL, model_id TEXT NOT NULL,
    params_id TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS galleries (
    key_id TEXT NOT NULL REFERENCES key_sets(key_id) ON DELETE CASCADE, stride INTEGER NOT NULL,
    model_id TEXT NOT NULL, chunk INTEGER NOT NULL, ciphertext BLOB NOT NULL, template_ids TEXT NOT NULL,
    level INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (key_id, stride, model_id, chunk));
CREATE INDEX IF NOT EXISTS templates_subject ON templates(subject_id);
"""


class SQLiteStore:
    """Template store in one SQLite file (``:memory:`` is refused: per-thread connections need a file)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if str(path) == ":memory:":
            raise ValueError("SQLiteStore needs a file path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)  # idempotent (IF NOT EXISTS)
        with self._tx() as cur:
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (json.dumps(SCHEMA_VERSION),))
        version = self.get_meta("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(f"{self.path}: store schema version {version}, this build reads {SCHEMA_VERSION}")

    # -- connections / transactions -------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        conn = self._conn()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):  # closed from another thread already
                    conn.close()
            self._all.clear()
        self._local = threading.local()

    # -- key sets -----------------------------------------------------------------------------
    def add_key_set(self, backend: str, params_json: str, keys: Mapping[str, bytes]) -> KeySetRecord:
        """Store a client's public + evaluation keys; idempotent for the same public key."""
        bad = [k for k in keys if k.lower() in SECRET_KEY_KINDS or k.lower().startswith("secret")]
        if bad:
            raise StoreError("a secret key was offered to the store; only public and evaluation keys are kept")
        if "public" not in keys:
            raise StoreError("the key set has no public key")
        key_id = key_fingerprint(keys["public"])
        params_id = params_fingerprint(params_json)
        now = time.time()
        with self._tx() as cur:
            row = cur.execute("SELECT params_id FROM key_sets WHERE key_id = ?", (key_id,)).fetchone()
            if row is not None:
                if row[0] != params_id:
                    raise ConflictError(f"key set {key_id[:12]} is already registered with other parameters")
            else:
                cur.execute(
                    "INSERT INTO key_sets VALUES (?, ?, ?, ?, ?)", (key_id, backend, params_json, params_id, now)
                )
            for kind, data in keys.items():
                cur.execute("INSERT OR REPLACE INTO key_blobs VALUES (?, ?, ?)", (key_id, kind, bytes(data)))
        return self.get_key_set(key_id)

    def get_key_set(self, key_id: str) -> KeySetRecord:
        conn = self._conn()
        row = conn.execute("SELECT * FROM key_sets WHERE key_id = ?", (key_id,)).fetchone()
        if row is None:
            raise UnknownKeySetError(f"unknown key set {key_id!r}; register the client's keys first")
        kinds = tuple(
            r[0] for r in conn.execute("SELECT kind FROM key_blobs WHERE key_id = ? ORDER BY kind", (key_id,))
        )
        return KeySetRecord(row[0], row[1], row[2], row[3], row[4], kinds)

    def key_set_keys(self, key_id: str, kinds: Sequence[str] | None = None) -> dict[str, bytes]:
        """The key set's keys by kind; only ``kinds`` when given (a public key without gigabytes of rotation keys)."""
        self.get_key_set(key_id)
        if kinds is None:
            rows = self._conn().execute("SELECT kind, data FROM key_blobs WHERE key_id = ?", (key_id,))
        else:
            marks = ",".join("?" * len(kinds))
            rows = self._conn().execute(
                f"SELECT kind, data FROM key_blobs WHERE key_id = ? AND kind IN ({marks})", (key_id, *kinds)
            )
        return {kind: bytes(data) for kind, data in rows}

    def list_key_sets(self) -> list[KeySetRecord]:
        ids = [r[0] for r in self._conn().execute("SELECT key_id FROM key_sets ORDER BY created_at")]
        return [self.get_key_set(k) for k in ids]

    def delete_key_set(self, key_id: str, *, only_if_empty: bool = True) -> None:
        """Remove a key set and its keys; with ``only_if_empty`` a key set that still has subjects is a conflict."""
        with self._tx() as cur:
            if cur.execute("SELECT 1 FROM key_sets WHERE key_id = ?", (key_id,)).fetchone() is None:
                raise UnknownKeySetError(f"unknown key set {key_id!r}")
            if only_if_empty and cur.execute("SELECT 1 FROM subjects WHERE key_id = ?", (key_id,)).fetchone():
                raise ConflictError(f"key set {key_id[:12]} still has enrolled subjects")
            cur.execute("DELETE FROM key_sets WHERE key_id = ?", (key_id,))

    # -- subjects and templates -----------------------------------------------------------------
    def enroll(self, key_id: str, subject: str, templates: Sequence[NewTemplate]) -> list[int]:
        """Add ``templates`` to ``subject`` (created if new) in one transaction; drops stale packed galleries."""
        if not subject or len(subject) > 200:
            raise StoreError("subject names must have 1..200 characters")
        if not templates:
            raise StoreError("nothing to enrol")
        now = time.time()
        with self._tx() as cur:
            if cur.execute("SELECT 1 FROM key_sets WHERE key_id = ?", (key_id,)).fetchone() is None:
                raise UnknownKeySetError(f"unknown key set {key_id!r}; register the client's keys first")
            subject_id = self._insert_subject(cur, key_id, subject, now)
            ids = [self._insert_template(cur, subject_id, t, now) for t in templates]
            cur.execute("DELETE FROM galleries WHERE key_id = ?", (key_id,))
        return ids

    @staticmethod
    def _insert_subject(cur: sqlite3.Cursor, key_id: str, subject: str, now: float) -> int:
        cur.execute(
            "INSERT OR IGNORE INTO subjects (key_id, name, created_at) VALUES (?, ?, ?)", (key_id, subject, now)
        )
        return int(
            cur.execute("SELECT id FROM subjects WHERE key_id = ? AND name = ?", (key_id, subject)).fetchone()[0]
        )

    @staticmethod
    def _insert_template(cur: sqlite3.Cursor, subject_id: int, t: NewTemplate, now: float) -> int:
        cur.execute(
            "INSERT INTO templates (subject_id, ciphertext, level, stride, model_id, params_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (subject_id, bytes(t.ciphertext), int(t.level), int(t.stride), t.model_id, t.params_id, now),
        )
        return int(cur.lastrowid or 0)

    def subjects(self, key_id: str) -> list[str]:
        self.get_key_set(key_id)
        rows = self._conn().execute("SELECT name FROM subjects WHERE key_id = ? ORDER BY name", (key_id,))
        return [r[0] for r in rows]

    def templates(self, key_id: str, subject: str | None = None) -> list[TemplateRecord]:
        self.get_key_set(key_id)
        sql = (
            "SELECT t.id, s.key_id, s.name, t.ciphertext, t.level, t.stride, t.model_id, t.params_id, t.created_at "
            "FROM templates t JOIN subjects s ON t.subject_id = s.id WHERE s.key_id = ?"
        )
        args: tuple[Any, ...] = (key_id,)
        if subject is not None:
            sql += " AND s.name = ?"
            args += (subject,)
        rows = self._conn().execute(sql + " ORDER BY t.id", args).fetchall()
        if subject is not None and not rows:
            raise UnknownSubjectError(f"no subject {subject!r} is enrolled under this key set")
        return [TemplateRecord(r[0], r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7], r[8]) for r in rows]

    def delete_subject(self, key_id: str, subject: str) -> None:
        with self._tx() as cur:
            n = cur.execute("DELETE FROM subjects WHERE key_id = ? AND name = ?", (key_id, subject)).rowcount
            if n == 0:
                raise UnknownSubjectError(f"no subject {subject!r} is enrolled under this key set")
            cur.execute("DELETE FROM galleries WHERE key_id = ?", (key_id,))

    # -- galleries ------------------------------------------------------------------------------
    def galleries(self, key_id: str, stride: int, model_id: str) -> list[GalleryRecord]:
        rows = self._conn().execute(
            "SELECT key_id, stride, model_id, chunk, ciphertext, template_ids, level, created_at FROM galleries "
            "WHERE key_id = ? AND stride = ? AND model_id = ? ORDER BY chunk",
            (key_id, stride, model_id),
        )
        return [GalleryRecord(r[0], r[1], r[2], r[3], bytes(r[4]), tuple(json.loads(r[5])), r[6], r[7]) for r in rows]

    def replace_galleries(
        self, key_id: str, stride: int, model_id: str, chunks: Sequence[tuple[bytes, Sequence[int], int]]
    ) -> None:
        """Replace the packed galleries of (key set, stride, model): chunks of (ciphertext, template ids, level).

        Refused (nothing written) if a template was enrolled or deleted meanwhile, so a stale gallery is never kept.
        """
        now = time.time()
        with self._tx() as cur:
            current = {
                r[0]
                for r in cur.execute(
                    "SELECT t.id FROM templates t JOIN subjects s ON t.subject_id = s.id "
                    "WHERE s.key_id = ? AND t.stride = ? AND t.model_id = ?",
                    (key_id, stride, model_id),
                )
            }
            packed = {int(i) for _, ids, _ in chunks for i in ids}
            if packed != current:
                raise ConflictError("the gallery changed while it was being packed; pack again")
            cur.execute(
                "DELETE FROM galleries WHERE key_id = ? AND stride = ? AND model_id = ?", (key_id, stride, model_id)
            )
            for i, (ct, ids, level) in enumerate(chunks):
                cur.execute(
                    "INSERT INTO galleries VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (key_id, stride, model_id, i, bytes(ct), json.dumps([int(x) for x in ids]), int(level), now),
                )

    # -- metadata -------------------------------------------------------------------------------
    def get_meta(self, name: str, default: Any = None) -> Any:
        row = self._conn().execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, name: str, value: Any) -> None:
        with self._tx() as cur:
            cur.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

    def counts(self) -> dict[str, int]:
        conn = self._conn()
        return {
            t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0])
            for t in ("key_sets", "key_blobs", "subjects", "templates", "galleries")
        }
