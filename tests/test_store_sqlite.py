"""SQLite only: erasure really erases (the deleted bytes are in neither the file nor its -wal), the file rules.

The store protocol itself, on SQLite and PostgreSQL, is tests/test_store.py.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from cryptoface.store import NewTemplate, SQLiteStore, StoreError, open_store

PROOF = hashlib.sha256(b"proof").hexdigest()


def _files(db: Path) -> bytes:
    """The database file and its write-ahead log, as they are on disk now."""
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists())


def _setup(db: Path) -> tuple[SQLiteStore, str, str]:
    store = SQLiteStore(db)
    tenant = store.create_tenant("acme").tenant_id
    key_id = store.create_key_set(tenant, "simulator", "{}", os.urandom(3000), PROOF, actor="k").key_id
    store.activate_key_set(tenant, key_id, actor="k")
    return store, tenant, key_id


def _ct() -> bytes:
    return os.urandom(6000)  # spans overflow pages, like a real (MB-sized) ciphertext


def _present(blob: bytes, haystack: bytes) -> bool:
    """Whether any 32-byte piece of ``blob`` is in ``haystack`` (random bytes: no false positives)."""
    return any(blob[i : i + 32] in haystack for i in range(0, len(blob) - 32, 512))


@pytest.mark.parametrize("how", ["template", "subject"])
def test_deleted_template_bytes_are_gone_from_file_and_wal(tmp_path: Path, how: str):
    db = tmp_path / "s.db"
    store, tenant, key_id = _setup(db)
    gone, kept = _ct(), _ct()
    sid, (gone_id, _) = store.create_subject(
        tenant, key_id, "alice", [NewTemplate(gone, 5, 1, "m", "p"), NewTemplate(kept, 5, 1, "m", "p")], actor="k"
    )
    store.replace_galleries(key_id, 1, "m", [(gone + kept, store.get_subject(key_id, sid).template_ids, 3)])
    assert _present(gone, _files(db)) and _present(kept, _files(db))  # the probe finds what is there
    if how == "template":
        store.delete_template(tenant, key_id, gone_id, actor="k")
        assert _present(kept, _files(db))
    else:
        store.delete_subject(tenant, key_id, sid, actor="k")
    assert not _present(gone, _files(db))  # nor in the dropped gallery, nor in a freed page, nor in the log
    store.close()


def test_deleted_key_set_bytes_are_gone(tmp_path: Path):
    db = tmp_path / "s.db"
    store, tenant, key_id = _setup(db)
    relin, ct = os.urandom(20000), _ct()
    store.add_key(tenant, key_id, "relin", relin, actor="k")
    store.create_subject(tenant, key_id, "alice", [NewTemplate(ct, 5, 1, "m", "p")], actor="k")
    public = store.key_set_keys(key_id, kinds=("public",))["public"]
    assert all(_present(b, _files(db)) for b in (relin, ct, public))
    store.delete_key_set(tenant, key_id, actor="k")
    assert not any(_present(b, _files(db)) for b in (relin, ct, public))


def test_secure_delete_is_on_for_every_connection(tmp_path: Path):
    store = SQLiteStore(tmp_path / "s.db")
    assert store._conn().execute("PRAGMA secure_delete").fetchone()[0] == 1
    assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_file_rules(tmp_path: Path):
    with pytest.raises(ValueError):
        SQLiteStore(":memory:")
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE photos (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not a CryptoFace store"):
        SQLiteStore(other)
    assert isinstance(open_store(tmp_path / "new.db"), SQLiteStore)
    with pytest.raises(StoreError):
        open_store(tmp_path / "x.db", schema="s")
