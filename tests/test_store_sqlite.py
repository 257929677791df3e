"""SQLiteStore: persistence, transactions (raise inside, process killed mid-enrolment), secret keys refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cryptoface.store import (
    ConflictError,
    NewTemplate,
    SQLiteStore,
    StoreError,
    UnknownKeySetError,
    UnknownSubjectError,
    key_fingerprint,
)

KEYS = {"public": b"public-key-bytes", "relin": b"relin", "rotation:1": b"rot1"}


def tpl(i: int = 0) -> NewTemplate:
    return NewTemplate(b"ct%d" % i, 5, 1, "model", "params")


def test_persistence_across_reopen(tmp_path: Path):
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    ks = store.add_key_set("simulator", '{"levels": 24}', KEYS)
    assert ks.key_id == key_fingerprint(KEYS["public"])
    store.enroll(ks.key_id, "alice", [tpl(1), tpl(2)])
    store.enroll(ks.key_id, "bob", [tpl(3)])
    store.close()
    again = SQLiteStore(db)
    assert again.subjects(ks.key_id) == ["alice", "bob"]
    assert [t.ciphertext for t in again.templates(ks.key_id, "alice")] == [b"ct1", b"ct2"]
    assert again.key_set_keys(ks.key_id) == KEYS
    assert again.get_key_set(ks.key_id).backend == "simulator"


def test_errors(tmp_path: Path):
    store = SQLiteStore(tmp_path / "s.db")
    with pytest.raises(UnknownKeySetError):
        store.enroll("nope", "x", [tpl()])
    with pytest.raises(StoreError):
        store.add_key_set("simulator", "{}", {**KEYS, "secret": b"sk"})
    ks = store.add_key_set("simulator", '{"levels": 24}', KEYS)
    with pytest.raises(ConflictError):
        store.add_key_set("simulator", '{"levels": 12}', KEYS)
    with pytest.raises(UnknownSubjectError):
        store.templates(ks.key_id, "ghost")
    assert store.counts()["key_sets"] == 1


def test_exception_inside_enrolment_leaves_nothing(tmp_path: Path, monkeypatch):
    store = SQLiteStore(tmp_path / "s.db")
    ks = store.add_key_set("simulator", '{"levels": 24}', KEYS)

    def boom(*args, **kwargs):
        raise RuntimeError("crash between the subject and the template")

    monkeypatch.setattr(SQLiteStore, "_insert_template", staticmethod(boom))
    with pytest.raises(RuntimeError):
        store.enroll(ks.key_id, "carol", [tpl()])
    monkeypatch.undo()
    assert store.subjects(ks.key_id) == []
    assert store.counts()["templates"] == 0


def test_killed_process_leaves_no_partial_record(tmp_path: Path):
    db = tmp_path / "s.db"
    store = SQLiteStore(db)
    ks = store.add_key_set("simulator", '{"levels": 24}', KEYS)
    store.enroll(ks.key_id, "alice", [tpl()])
    store.close()
    marker = tmp_path / "between"
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from cryptoface.store import SQLiteStore, NewTemplate
        real = SQLiteStore._insert_template
        def slow(cur, subject_id, t, now):
            out = real(cur, subject_id, t, now)
            Path({str(marker)!r}).write_text("x")
            time.sleep(60)
            return out
        SQLiteStore._insert_template = staticmethod(slow)
        store = SQLiteStore({str(db)!r})
        store.enroll({ks.key_id!r}, "mallory", [NewTemplate(b"c", 5, 1, "m", "p")])
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None, "the enrolment process died early"
            assert time.time() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    after = SQLiteStore(db)
    assert after.subjects(ks.key_id) == ["alice"]
    assert after.counts()["templates"] == 1


def test_gallery_replacement_is_refused_when_stale(tmp_path: Path):
    store = SQLiteStore(tmp_path / "s.db")
    ks = store.add_key_set("simulator", '{"levels": 24}', KEYS)
    (a,) = store.enroll(ks.key_id, "alice", [tpl()])
    store.replace_galleries(ks.key_id, 1, "model", [(b"g", [a], 3)])
    assert store.galleries(ks.key_id, 1, "model")[0].template_ids == (a,)
    (b,) = store.enroll(ks.key_id, "bob", [tpl()])
    assert store.galleries(ks.key_id, 1, "model") == []  # enrolment drops stale galleries
    with pytest.raises(ConflictError):
        store.replace_galleries(ks.key_id, 1, "model", [(b"g", [a], 3)])
    store.replace_galleries(ks.key_id, 1, "model", [(b"g", [a, b], 3)])
