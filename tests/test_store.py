"""The store protocol, run on SQLite and on a real PostgreSQL server: tenants, API keys, tenant-scoped create-only
key sets, subjects and templates with a cap, deletes, the audit log, transactions (an exception or a kill -9
mid-write leaves nothing), concurrent writers (kill -9 during concurrent enrolment loses nothing acknowledged).

PostgreSQL: ``$CRYPTOFACE_TEST_POSTGRES`` (default ``postgresql://postgres@127.0.0.1:5432/test``); each test gets
its own schema, dropped afterwards. Without a server (or without psycopg) those tests skip, saying why, unless
``CRYPTOFACE_REQUIRE_POSTGRES=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from functools import cache
from pathlib import Path

import pytest

from cryptoface.names import InvalidNameError
from cryptoface.store import (
    AuditRecord,
    ConflictError,
    KeySetPendingError,
    NewTemplate,
    SchemaVersionError,
    SQLiteStore,
    StoreError,
    TemplateCapError,
    TemplateStore,
    UnknownApiKeyError,
    UnknownKeySetError,
    UnknownSubjectError,
    UnknownTemplateError,
    UnknownTenantError,
    key_fingerprint,
    open_store,
)
from cryptoface.store.sql import SQLStore

PG_URL = os.environ.get("CRYPTOFACE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
PARAMS = '{"levels": 24}'
PROOF = hashlib.sha256(b"expected proof").hexdigest()
PUBLIC = b"public-key-bytes"


@cache
def postgres_unavailable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or None."""
    try:
        import psycopg
    except ImportError:
        return "psycopg 3 is not installed (pip install 'cryptoface[postgres]')"
    try:
        psycopg.connect(PG_URL, connect_timeout=3).close()
    except psycopg.Error as e:
        return f"no PostgreSQL server answers at {PG_URL} ($CRYPTOFACE_TEST_POSTGRES): {str(e).strip()}"
    return None


class Backend:
    """Where one test's store lives; opens it (again) here or in a child process, and cleans up."""

    kind = ""

    def __init__(self) -> None:
        self.opened: list[TemplateStore] = []

    def open(self) -> TemplateStore:
        store = self._open()
        self.opened.append(store)
        return store

    def _open(self) -> TemplateStore:
        raise NotImplementedError

    def source(self) -> str:
        """Python statements that bind ``store`` to this store in another process."""
        raise NotImplementedError

    def make_v1(self) -> None:
        raise NotImplementedError

    def cleanup(self) -> None:
        for store in self.opened:
            store.close()


class SQLiteBackend(Backend):
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    def _open(self) -> TemplateStore:
        return SQLiteStore(self.path)

    def source(self) -> str:
        return f"from cryptoface.store import SQLiteStore\nstore = SQLiteStore({str(self.path)!r})"

    def run_sql(self, *statements: str) -> None:
        conn = sqlite3.connect(self.path)
        for stmt in statements:
            conn.execute(stmt)
        conn.commit()
        conn.close()

    def make_v1(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.executescript(
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "INSERT INTO meta VALUES ('schema_version', '1');"
            "CREATE TABLE key_sets (key_id TEXT PRIMARY KEY, backend TEXT, params_json TEXT, params_id TEXT,"
            " created_at REAL);"
        )
        conn.close()


class PostgresBackend(Backend):
    kind = "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.schema = "cf_test_" + uuid.uuid4().hex[:16]

    def _open(self) -> TemplateStore:
        return open_store(PG_URL, schema=self.schema)

    def source(self) -> str:
        return (
            "from cryptoface.store.postgres import PostgresStore\n"
            f"store = PostgresStore({PG_URL!r}, schema={self.schema!r})"
        )

    def _admin(self, *statements: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for s in statements:
                conn.execute(sql.SQL(s).format(schema=sql.Identifier(self.schema)))

    def run_sql(self, *statements: str) -> None:
        self._admin("SET search_path TO {schema}", *statements)

    def make_v1(self) -> None:
        self._admin(
            "CREATE SCHEMA {schema}",
            "CREATE TABLE {schema}.meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "INSERT INTO {schema}.meta VALUES ('schema_version', '1')",
            "CREATE TABLE {schema}.key_sets (key_id TEXT PRIMARY KEY, backend TEXT, params_json TEXT)",
        )

    def cleanup(self) -> None:
        super().cleanup()
        self._admin("DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request, tmp_path: Path):
    if request.param == "sqlite":
        b: Backend = SQLiteBackend(tmp_path / "s.db")
    else:
        reason = postgres_unavailable()
        if reason is not None:
            if os.environ.get("CRYPTOFACE_REQUIRE_POSTGRES") == "1":
                pytest.fail(f"CRYPTOFACE_REQUIRE_POSTGRES=1 but {reason}")
            pytest.skip(reason)
        b = PostgresBackend()
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def store(backend: Backend) -> TemplateStore:
    return backend.open()


def tpl(i: int = 0, tag: bytes = b"ct") -> NewTemplate:
    return NewTemplate(b"%s-%d" % (tag, i), 5, 1, "model", "params")


def active_key_set(store: TemplateStore, tenant: str = "acme", public: bytes = PUBLIC) -> tuple[str, str]:
    """(tenant id, key id) of a new tenant's activated key set."""
    t = store.create_tenant(tenant)
    ks = store.create_key_set(t.tenant_id, "simulator", PARAMS, public, PROOF, actor="k1")
    store.activate_key_set(t.tenant_id, ks.key_id, actor="k1")
    return t.tenant_id, ks.key_id


# -- persistence and transactions -------------------------------------------------------------------


def test_store_satisfies_the_protocol(store):
    assert isinstance(store, TemplateStore)


def test_persistence_across_reopen(backend: Backend):
    store = backend.open()
    tenant, key_id = active_key_set(store)
    assert key_id == key_fingerprint(PUBLIC)
    store.add_key(tenant, key_id, "relin", b"relin", actor="k1")
    store.add_key(tenant, key_id, "rotation:1", b"rot1", actor="k1")
    alice, alice_tpls = store.create_subject(tenant, key_id, "alice", [tpl(1), tpl(2)], actor="k1")
    store.create_subject(tenant, key_id, "bob", [tpl(3)], actor="k1")
    store.add_api_key(tenant, "0123456789ab", hashlib.sha256(b"token").hexdigest())
    store.set_meta("norm", {"a": 1})
    store.close()

    again = backend.open()
    assert [(s.name, len(s.template_ids)) for s in again.subjects(key_id)] == [("alice", 2), ("bob", 1)]
    assert again.get_subject(key_id, alice).template_ids == tuple(alice_tpls)
    assert [t.ciphertext for t in again.templates(key_id, "alice")] == [b"ct-1", b"ct-2"]
    assert {t.subject_id for t in again.templates(key_id, "alice")} == {alice}
    assert again.key_set_keys(key_id) == {"public": PUBLIC, "relin": b"relin", "rotation:1": b"rot1"}
    ks = again.get_key_set(key_id, tenant)
    assert (ks.backend, ks.status, ks.tenant_id, ks.proof_hash) == ("simulator", "active", tenant, PROOF)
    assert ks.key_kinds == ("public", "relin", "rotation:1")
    assert again.api_key_by_id("0123456789ab").tenant_id == tenant
    assert again.get_meta("norm") == {"a": 1}
    assert [a.action for a in again.audit(None)][-3:] == ["subject.create", "subject.create", "api_key.create"]


def test_exception_inside_enrolment_leaves_nothing(store, monkeypatch):
    tenant, key_id = active_key_set(store)
    before = store.audit(None)

    def boom(*args, **kwargs):
        raise RuntimeError("crash between the subject and the template")

    monkeypatch.setattr(SQLStore, "_insert_template", boom)
    with pytest.raises(RuntimeError):
        store.create_subject(tenant, key_id, "carol", [tpl()], actor="k1")
    monkeypatch.undo()
    assert store.subjects(key_id) == []
    assert store.counts()["templates"] == 0
    assert store.audit(None) == before  # the audit row goes with the change or not at all


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        assert proc.poll() is None, "the child process died early"
        assert time.time() < deadline, "the child process never got there"
        time.sleep(0.05)


def test_killed_process_leaves_no_partial_record(backend: Backend, tmp_path: Path):
    store = backend.open()
    tenant, key_id = active_key_set(store)
    store.create_subject(tenant, key_id, "alice", [tpl()], actor="k1")
    n_audit = len(store.audit(None))
    store.close()
    marker = tmp_path / "between"
    script = backend.source() + textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from cryptoface.store import NewTemplate
        from cryptoface.store.sql import SQLStore
        real = SQLStore._insert_template
        def slow(self, tx, subject_id, t, now):
            out = real(self, tx, subject_id, t, now)
            Path({str(marker)!r}).write_text("x")
            time.sleep(60)
            return out
        SQLStore._insert_template = slow
        store.create_subject({tenant!r}, {key_id!r}, "mallory", [NewTemplate(b"c", 5, 1, "m", "p")] * 2, actor="k")
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        _wait_for(marker, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    after = backend.open()
    assert [s.name for s in after.subjects(key_id)] == ["alice"]
    assert after.counts()["templates"] == 1
    assert len(after.audit(None)) == n_audit
    # the name is free again: the killed transaction left no row and (PostgreSQL) no lock behind
    after.create_subject(tenant, key_id, "mallory", [tpl()], actor="k1")


_WRITER = """
import sys
from cryptoface.store import NewTemplate
tenant, key_id, tag, ack = sys.argv[1:5]
with open(ack, "a", buffering=1) as out:
    for i in range(100000):
        name = f"{tag}-{i}"
        t = [NewTemplate(f"{name}/{j}".encode() * 50, 5, 1, "m", "p") for j in range(2)]
        sid, ids = store.create_subject(tenant, key_id, name, t, actor="writer")
        out.write(f"{name} {sid} {ids[0]} {ids[1]}\\n")  # acknowledged: the call returned
"""


def _all_audit_rows(store: TemplateStore) -> list[AuditRecord]:
    rows: list[AuditRecord] = []
    while page := store.audit(None, rows[-1].id if rows else 0, 5000):
        rows += page
    return rows


def test_kill_during_concurrent_enrolment_loses_nothing_acknowledged(backend: Backend, tmp_path: Path):
    store = backend.open()
    tenant, key_id = active_key_set(store)
    store.close()
    script = backend.source() + _WRITER
    acked: dict[str, tuple[int, int, int]] = {}
    for rnd in range(5):
        files = [tmp_path / f"ack-{rnd}-{w}" for w in range(2)]
        procs = [
            subprocess.Popen([sys.executable, "-c", script, tenant, key_id, f"r{rnd}w{w}", str(f)])
            for w, f in enumerate(files)
        ]
        try:  # let both write concurrently for a while, then kill them at an arbitrary moment
            deadline = time.time() + 60
            while not all(f.exists() and f.read_text().count("\n") >= 5 + 3 * rnd for f in files):
                assert all(p.poll() is None for p in procs), "a writer died early"
                assert time.time() < deadline, "the writers made no progress"
                time.sleep(0.02)
        finally:
            for p in procs:
                os.kill(p.pid, signal.SIGKILL)
            for p in procs:
                p.wait()
        for f in files:
            for line in f.read_text().splitlines(keepends=True):
                if line.endswith("\n"):  # a line cut by the kill was never acknowledged
                    name, sid, a, b = line.split()
                    acked[name] = (int(sid), int(a), int(b))
        check = backend.open()
        subjects = {s.name: s for s in check.subjects(key_id)}
        for name, (sid, a, b) in acked.items():
            assert name in subjects, f"acknowledged enrolment {name} was lost"
            assert (subjects[name].id, subjects[name].template_ids) == (sid, (a, b))
        for s in subjects.values():  # nothing half-written: every enrolment has both its templates
            assert len(s.template_ids) == 2, s
            assert [t.ciphertext for t in check.templates(key_id, s.name)] == [
                f"{s.name}/{j}".encode() * 50 for j in range(2)
            ]
        # one audit row per committed enrolment, none for the killed ones (paged: fast writers pass 10,000 rows)
        n_creates = sum(a.action == "subject.create" for a in _all_audit_rows(check))
        assert n_creates == len(subjects)
        check.close()
    assert len(acked) >= 2 * sum(5 + 3 * r for r in range(5))


# -- tenants and API keys ---------------------------------------------------------------------------


def test_tenants(store):
    a = store.create_tenant("Acme")
    assert a.tenant_id.startswith("tn_") and len(a.tenant_id) == 19
    assert store.get_tenant(a.tenant_id) == a
    with pytest.raises(ConflictError):
        store.create_tenant("Acme")
    b = store.create_tenant("Caf\u0065\u0301")  # stored in NFC form: the same name as "Café"
    assert b.name == "Caf\u00e9"
    with pytest.raises(ConflictError):
        store.create_tenant("Caf\u00e9")
    with pytest.raises(InvalidNameError):
        store.create_tenant("a/b")
    with pytest.raises(UnknownTenantError):
        store.get_tenant("tn_0000000000000000")
    assert [t.name for t in store.list_tenants()] == ["Acme", "Caf\u00e9"]
    assert store.counts()["tenants"] == 2


def test_api_keys_are_stored_hashed_and_revocable(store):
    t = store.create_tenant("acme")
    token_hash = hashlib.sha256(b"cf_0123456789ab_secret").hexdigest()
    with pytest.raises(StoreError, match="sha256"):
        store.add_api_key(t.tenant_id, "0123456789ab", "cf_0123456789ab_secret")  # a raw token is refused
    with pytest.raises(UnknownTenantError):
        store.add_api_key("tn_0000000000000000", "0123456789ab", token_hash)
    rec = store.add_api_key(t.tenant_id, "0123456789ab", token_hash)
    assert rec.revoked_at is None and rec.token_hash == token_hash
    with pytest.raises(ConflictError):
        store.add_api_key(t.tenant_id, "0123456789ab", token_hash)
    assert store.api_key_by_id("0123456789ab") == rec
    assert store.api_key_by_id("ffffffffffff") is None
    store.revoke_api_key("0123456789ab", actor="admin")
    revoked = store.api_key_by_id("0123456789ab")
    assert revoked is not None and revoked.revoked_at is not None
    store.revoke_api_key("0123456789ab")  # again: no change, no second audit row
    assert store.api_key_by_id("0123456789ab").revoked_at == revoked.revoked_at
    with pytest.raises(UnknownApiKeyError):
        store.revoke_api_key("ffffffffffff")
    assert [k.key_id for k in store.api_keys(t.tenant_id)] == ["0123456789ab"]
    actions = [(a.action, a.detail) for a in store.audit(t.tenant_id)]
    assert actions == [
        ("tenant.create", ""),
        ("api_key.create", "api_key=0123456789ab"),
        ("api_key.revoke", "api_key=0123456789ab"),
    ]


# -- key sets -----------------------------------------------------------------------------------


def test_key_sets_are_tenant_scoped_and_create_only(store):
    a = store.create_tenant("a").tenant_id
    b = store.create_tenant("b").tenant_id
    with pytest.raises(UnknownTenantError):
        store.create_key_set("tn_0000000000000000", "simulator", PARAMS, PUBLIC, PROOF, actor="k")
    with pytest.raises(StoreError):
        store.create_key_set(a, "simulator", "{not json", PUBLIC, PROOF, actor="k")
    ks = store.create_key_set(a, "simulator", PARAMS, PUBLIC, PROOF, actor="ka")
    assert (ks.key_id, ks.status, ks.tenant_id, ks.key_kinds) == (key_fingerprint(PUBLIC), "pending", a, ("public",))
    assert store.get_key_set(ks.key_id, a) == ks
    with pytest.raises(UnknownKeySetError):  # only active key sets exist outside their tenant's registration
        store.get_key_set(ks.key_id)
    with pytest.raises(ConflictError):  # the same tenant again: answer the challenge, or delete and register anew
        store.create_key_set(a, "simulator", PARAMS, PUBLIC, PROOF, actor="k")
    # another tenant sees nothing: every tenant-scoped call says "unknown", as for a key set that does not exist
    with pytest.raises(UnknownKeySetError):
        store.get_key_set(ks.key_id, b)
    for call in (
        lambda: store.activate_key_set(b, ks.key_id, actor="kb"),
        lambda: store.record_failed_proof(b, ks.key_id, actor="kb"),
        lambda: store.add_key(b, ks.key_id, "relin", b"junk", actor="kb"),
        lambda: store.delete_key_set(b, ks.key_id, actor="kb"),
    ):
        with pytest.raises(UnknownKeySetError):
            call()
    assert store.list_key_sets(b) == [] and [k.key_id for k in store.list_key_sets(a)] == [ks.key_id]
    with pytest.raises(KeySetPendingError):  # keys come after the proof
        store.add_key(a, ks.key_id, "relin", b"R" * 10, actor="ka")
    store.activate_key_set(a, ks.key_id, actor="ka")
    for tenant in (a, b):  # the same public key again, by its owner or anyone else: create-only once active
        with pytest.raises(ConflictError):
            store.create_key_set(tenant, "simulator", PARAMS, PUBLIC, PROOF, actor="k")
    store.add_key(a, ks.key_id, "relin", b"R" * 10, actor="ka")  # once each
    with pytest.raises(ConflictError):
        store.add_key(a, ks.key_id, "relin", b"other", actor="ka")
    for bad in ("public", "secret", "sk", "Secret_key", "private_key", "sk ", ""):
        with pytest.raises(StoreError):
            store.add_key(a, ks.key_id, bad, b"x", actor="ka")
    assert store.key_set_keys(ks.key_id) == {"public": PUBLIC, "relin": b"R" * 10}
    assert store.key_set_keys(ks.key_id, kinds=("public",)) == {"public": PUBLIC}
    assert store.key_set_bytes(ks.key_id) == len(PUBLIC) + 10
    with pytest.raises(UnknownKeySetError):
        store.key_set_keys("nope")
    assert [k.key_id for k in store.list_key_sets()] == [ks.key_id]


def test_a_registration_nobody_proves_never_blocks_the_owner(store):
    """Squatting: a tenant registers someone else's public key and never answers. The owner registers the same
    key in its own tenant, proves first and gets it; the squatter's registration is gone."""
    squatter = store.create_tenant("squatter").tenant_id
    owner = store.create_tenant("owner").tenant_id
    squat = store.create_key_set(squatter, "simulator", PARAMS, PUBLIC, PROOF, actor="ks")
    mine = store.create_key_set(owner, "simulator", PARAMS, PUBLIC, PROOF, actor="ko")
    assert squat.key_id == mine.key_id and mine.tenant_id == owner and mine.status == "pending"
    assert store.activate_key_set(owner, mine.key_id, actor="ko").tenant_id == owner
    assert store.get_key_set(mine.key_id).tenant_id == owner
    for call in (lambda: store.get_key_set(mine.key_id, squatter),
                 lambda: store.activate_key_set(squatter, mine.key_id, actor="ks")):
        with pytest.raises(UnknownKeySetError):
            call()
    assert store.counts()["registrations"] == 0


def test_unproven_registrations_expire(store, monkeypatch):
    import cryptoface.store.sql as sql

    t = store.create_tenant("slow").tenant_id
    ks = store.create_key_set(t, "simulator", PARAMS, PUBLIC, PROOF, actor="k")
    monkeypatch.setattr(sql, "PENDING_TTL_S", -1.0)  # every registration is now older than the TTL
    with pytest.raises(UnknownKeySetError):
        store.activate_key_set(t, ks.key_id, actor="k")
    assert store.list_key_sets(t) == []
    store.create_key_set(t, "simulator", PARAMS, PUBLIC, PROOF, actor="k")  # purges the expired row first
    assert store.counts()["registrations"] == 1


def test_proof_attempts_and_activation(store):
    t = store.create_tenant("acme").tenant_id
    ks = store.create_key_set(t, "simulator", PARAMS, PUBLIC, PROOF, actor="k1")
    assert store.record_failed_proof(t, ks.key_id, actor="k1") == 1
    assert store.record_failed_proof(t, ks.key_id, actor="k1") == 2
    assert store.get_key_set(ks.key_id, t).failed_proofs == 2
    with pytest.raises(KeySetPendingError):  # a pending key set takes no subject
        store.create_subject(t, ks.key_id, "alice", [tpl()], actor="k1")
    active = store.activate_key_set(t, ks.key_id, actor="k1")
    assert active.status == "active"
    assert store.activate_key_set(t, ks.key_id, actor="k1").status == "active"  # idempotent
    with pytest.raises(ConflictError):
        store.record_failed_proof(t, ks.key_id, actor="k1")
    assert [a.action for a in store.audit(t)] == [
        "tenant.create", "keyset.register", "keyset.proof_failed", "keyset.proof_failed", "keyset.activate"
    ]


def test_delete_key_set_erases_everything_under_it(store):
    tenant, key_id = active_key_set(store)
    store.add_key(tenant, key_id, "relin", b"relin", actor="k1")
    _, ids = store.create_subject(tenant, key_id, "alice", [tpl(1), tpl(2)], actor="k1")
    store.replace_galleries(key_id, 1, "model", [(b"g", ids, 3)])
    other_t = store.create_tenant("other").tenant_id
    pending = store.create_key_set(other_t, "simulator", PARAMS, b"other-public", PROOF, actor="k2")
    store.delete_key_set(tenant, key_id, actor="k1")
    store.delete_key_set(other_t, pending.key_id, actor="k2")  # any state
    counts = store.counts()
    erased = ("registrations", "key_sets", "key_blobs", "subjects", "templates", "galleries")
    assert {k: counts[k] for k in erased} == dict.fromkeys(erased, 0)
    with pytest.raises(UnknownKeySetError):
        store.get_key_set(key_id)
    with pytest.raises(UnknownKeySetError):
        store.delete_key_set(tenant, key_id, actor="k1")
    last = store.audit(tenant)[-1]
    assert (last.action, last.key_id, last.actor, last.detail) == ("keyset.delete", key_id, "k1", "subjects=1")
    # the id is free again: the same public key can be registered anew (key rotation back, or a new owner)
    assert store.create_key_set(other_t, "simulator", PARAMS, PUBLIC, PROOF, actor="k2").tenant_id == other_t


# -- subjects and templates ---------------------------------------------------------------------------


def test_subject_lifecycle(store):
    tenant, key_id = active_key_set(store)
    alice, (a1, a2) = store.create_subject(tenant, key_id, "alice", [tpl(1), tpl(2)], actor="k1")
    with pytest.raises(ConflictError):  # no silent append
        store.create_subject(tenant, key_id, "alice", [tpl(3)], actor="k1")
    (a3,) = store.add_templates(tenant, key_id, alice, [tpl(3)], actor="k1")
    assert store.get_subject(key_id, alice).template_ids == (a1, a2, a3)
    with pytest.raises(UnknownSubjectError):
        store.add_templates(tenant, key_id, alice + 1000, [tpl()], actor="k1")
    with pytest.raises(StoreError):
        store.add_templates(tenant, key_id, alice, [], actor="k1")
    bob, (b1,) = store.create_subject(tenant, key_id, "bob", [tpl(4)], actor="k1")
    assert [(s.id, s.name, s.template_ids) for s in store.subjects(key_id)] == [
        (alice, "alice", (a1, a2, a3)), (bob, "bob", (b1,))
    ]
    recs = store.templates(key_id)
    assert [(r.id, r.subject_id, r.subject) for r in recs] == [
        (a1, alice, "alice"), (a2, alice, "alice"), (a3, alice, "alice"), (b1, bob, "bob")
    ]
    with pytest.raises(UnknownSubjectError):
        store.templates(key_id, "ghost")

    store.delete_template(tenant, key_id, a2, actor="k1")
    assert store.get_subject(key_id, alice).template_ids == (a1, a3)
    with pytest.raises(UnknownTemplateError):
        store.delete_template(tenant, key_id, a2, actor="k1")
    store.delete_template(tenant, key_id, b1, actor="k1")  # bob's last template: bob goes too
    with pytest.raises(UnknownSubjectError):
        store.get_subject(key_id, bob)
    store.delete_subject(tenant, key_id, alice, actor="k1")
    with pytest.raises(UnknownSubjectError):
        store.delete_subject(tenant, key_id, alice, actor="k1")
    assert store.subjects(key_id) == [] and store.counts()["templates"] == 0
    # ids are never reused: an id a client still holds can never name someone else's template
    carol, (c1,) = store.create_subject(tenant, key_id, "carol", [tpl(5)], actor="k1")
    assert carol > bob and c1 > a3


def test_template_cap(store):
    tenant, key_id = active_key_set(store)
    with pytest.raises(TemplateCapError):
        store.create_subject(tenant, key_id, "alice", [tpl(i) for i in range(9)], actor="k1")
    sid, _ = store.create_subject(tenant, key_id, "alice", [tpl(i) for i in range(6)], actor="k1")
    with pytest.raises(TemplateCapError):
        store.add_templates(tenant, key_id, sid, [tpl(7), tpl(8), tpl(9)], actor="k1")
    store.add_templates(tenant, key_id, sid, [tpl(7), tpl(8)], actor="k1")
    with pytest.raises(TemplateCapError) as err:
        store.add_templates(tenant, key_id, sid, [tpl(10)], actor="k1")
    assert isinstance(err.value, ConflictError)
    assert len(store.get_subject(key_id, sid).template_ids) == 8
    assert store.add_templates(tenant, key_id, sid, [tpl(11)], cap=9, actor="k1")  # the caller sets the cap


def test_other_tenants_cannot_touch_subjects(store):
    tenant, key_id = active_key_set(store)
    other = store.create_tenant("mallory").tenant_id
    sid, (t1,) = store.create_subject(tenant, key_id, "alice", [tpl(1)], actor="k1")
    for call in (
        lambda: store.create_subject(other, key_id, "mallory", [tpl(2)], actor="m"),
        lambda: store.add_templates(other, key_id, sid, [tpl(2)], actor="m"),
        lambda: store.delete_subject(other, key_id, sid, actor="m"),
        lambda: store.delete_template(other, key_id, t1, actor="m"),
    ):
        with pytest.raises(UnknownKeySetError):
            call()
    # and a subject id of one key set is unknown under another key set of the same tenant
    ks2 = store.create_key_set(tenant, "simulator", PARAMS, b"second-public", PROOF, actor="k1")
    store.activate_key_set(tenant, ks2.key_id, actor="k1")
    with pytest.raises(UnknownSubjectError):
        store.add_templates(tenant, ks2.key_id, sid, [tpl(3)], actor="k1")
    with pytest.raises(UnknownTemplateError):
        store.delete_template(tenant, ks2.key_id, t1, actor="k1")
    assert store.get_subject(key_id, sid).template_ids == (t1,)


def test_subject_names_are_validated_and_normalised(store):
    tenant, key_id = active_key_set(store)
    for bad in ("", " alice", "a/b", "..", "al\u200bice", "a\nb", "x" * 101, "a\x00b"):
        with pytest.raises(InvalidNameError):
            store.create_subject(tenant, key_id, bad, [tpl()], actor="k1")
    assert store.counts()["subjects"] == 0 and len(store.audit(tenant)) == 3
    sid, _ = store.create_subject(tenant, key_id, "Jose\u0301", [tpl()], actor="k1")
    assert store.get_subject(key_id, sid).name == "Jos\u00e9"
    assert [t.subject_id for t in store.templates(key_id, "Jose\u0301")] == [sid]  # either spelling finds it
    with pytest.raises(ConflictError):
        store.create_subject(tenant, key_id, "Jos\u00e9", [tpl()], actor="k1")


def test_audit_log(store):
    tenant, key_id = active_key_set(store)
    other, other_key = active_key_set(store, "other", b"other-public")
    store.add_key(tenant, key_id, "relin", b"relin-key-bytes", actor="k1")
    sid, (t1, t2) = store.create_subject(tenant, key_id, "alice smith", [tpl(1, b"SECRET"), tpl(2)], actor="k1")
    (t3,) = store.add_templates(tenant, key_id, sid, [tpl(3)], actor="k2")
    store.delete_template(tenant, key_id, t1, actor="k2")
    store.delete_subject(tenant, key_id, sid, actor="admin")
    store.delete_key_set(tenant, key_id, actor="k1")
    store.create_subject(other, other_key, "bob", [tpl(4)], actor="o1")

    rows = store.audit(tenant)
    assert [(r.action, r.actor, r.key_id, r.subject_id, r.template_ids) for r in rows] == [
        ("tenant.create", "admin", None, None, ()),
        ("keyset.register", "k1", key_id, None, ()),
        ("keyset.activate", "k1", key_id, None, ()),
        ("key.add", "k1", key_id, None, ()),
        ("subject.create", "k1", key_id, sid, (t1, t2)),
        ("template.add", "k2", key_id, sid, (t3,)),
        ("template.delete", "k2", key_id, sid, (t1,)),
        ("subject.delete", "admin", key_id, sid, (t2, t3)),
        ("keyset.delete", "k1", key_id, None, ()),
    ]
    assert {r.tenant_id for r in rows} == {tenant}
    everything = store.audit(None)
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    assert len(everything) == len(rows) + 4 and everything[-1].tenant_id == other
    assert store.audit(None, after=rows[4].id, limit=2) == [r for r in everything if r.id > rows[4].id][:2]
    text = repr(everything)
    for leaked in ("alice", "bob", "SECRET", "relin-key-bytes", PUBLIC.decode()):  # ids only
        assert leaked not in text


def test_audit_paging_misses_no_row_under_concurrent_writers(store):
    tenant, key_id = active_key_set(store)
    errors: list[BaseException] = []
    done = threading.Event()
    seen: list[int] = []

    def writer(w: int) -> None:
        try:
            for i in range(15):
                store.create_subject(tenant, key_id, f"w{w}-{i}", [tpl(i)], actor=f"w{w}")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:  # a consumer following the log with ?after=<last id seen>
        last = 0
        while True:
            finished = done.is_set()
            rows = store.audit(tenant, after=last)
            seen.extend(r.id for r in rows)
            last = rows[-1].id if rows else last
            if finished and not rows:
                return
            time.sleep(0.002)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    follow = threading.Thread(target=reader)
    follow.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    follow.join()
    assert not errors
    everything = [r.id for r in store.audit(tenant)]
    assert len(everything) == 3 + 45
    assert seen == everything  # audit ids rise in commit order, so paging by id skips nothing


def test_concurrent_additions_respect_the_cap(store):
    tenant, key_id = active_key_set(store)
    sid, _ = store.create_subject(tenant, key_id, "alice", [tpl(0)], actor="k1")
    outcomes: list[str] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        try:
            store.add_templates(tenant, key_id, sid, [tpl(i), tpl(i + 100)], actor="k1")
            result = "ok"
        except TemplateCapError:
            result = "cap"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["cap"] * 5 + ["ok"] * 3  # 1 + 3 x 2 = 7 fit under 8; an 8th pair would not
    assert len(store.get_subject(key_id, sid).template_ids) == 7


def test_concurrent_creation_of_one_subject_makes_one(store):
    tenant, key_id = active_key_set(store)
    outcomes: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(4)

    def create() -> None:
        start.wait()
        try:
            store.create_subject(tenant, key_id, "alice", [tpl()], actor="k1")
            result = "ok"
        except ConflictError:
            result = "conflict"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
    assert len(store.subjects(key_id)) == 1 and store.counts()["templates"] == 1


# -- galleries, meta, schema ------------------------------------------------------------------------


def test_gallery_replacement_is_refused_when_stale(store):
    tenant, key_id = active_key_set(store)
    _, (a,) = store.create_subject(tenant, key_id, "alice", [tpl()], actor="k1")
    store.replace_galleries(key_id, 1, "model", [(b"g", [a], 3)])
    assert store.galleries(key_id, 1, "model")[0].template_ids == (a,)
    _, (b,) = store.create_subject(tenant, key_id, "bob", [tpl()], actor="k1")
    assert store.galleries(key_id, 1, "model") == []  # enrolment drops stale galleries
    with pytest.raises(ConflictError):
        store.replace_galleries(key_id, 1, "model", [(b"g", [a], 3)])
    store.replace_galleries(key_id, 1, "model", [(b"g1", [a], 3), (b"g2", [b], 3)])
    assert [(g.chunk, g.ciphertext) for g in store.galleries(key_id, 1, "model")] == [(0, b"g1"), (1, b"g2")]
    store.delete_template(tenant, key_id, b, actor="k1")
    assert store.galleries(key_id, 1, "model") == []  # so does a deletion
    with pytest.raises(UnknownKeySetError):
        store.replace_galleries("nope", 1, "model", [])


def test_meta_and_counts(store):
    assert store.get_meta("missing", 7) == 7
    store.set_meta("norm", {"lo": 57.1, "hi": 865.2})
    store.set_meta("norm", {"lo": 1.0})
    assert store.get_meta("norm") == {"lo": 1.0}
    with pytest.raises(StoreError):
        store.set_meta("schema_version", 3)
    assert store.get_meta("schema_version") == 3
    assert set(store.counts()) == {
        "tenants", "api_keys", "registrations", "key_sets", "key_blobs", "subjects", "templates", "galleries", "audit"
    }


def test_a_version_2_store_is_migrated(backend: Backend):
    """Version 2 kept pending key sets in ``key_sets``; opening it moves them to ``registrations``."""
    first = backend.open()
    tenant, key_id = active_key_set(first)
    pending = first.create_key_set(tenant, "simulator", PARAMS, b"other-public", PROOF, actor="k1")
    first.close()
    backend.run_sql(  # the version-2 layout of the same content
        "INSERT INTO key_sets (key_id, tenant_id, backend, params_json, params_id, created_at, status, proof_hash, "
        "failed_proofs) SELECT key_id, tenant_id, backend, params_json, params_id, created_at, 'pending', "
        "proof_hash, 1 FROM registrations",
        "INSERT INTO key_blobs (key_id, kind, data, size) SELECT key_id, 'public', public_key, 12 FROM registrations",
        "DROP TABLE registrations",
        "UPDATE meta SET value = '2' WHERE name = 'schema_version'",
    )
    store = backend.open()
    assert store.get_meta("schema_version") == 3
    assert store.get_key_set(key_id, tenant).status == "active"
    moved = store.get_key_set(pending.key_id, tenant)
    assert (moved.status, moved.failed_proofs, moved.proof_hash) == ("pending", 1, PROOF)
    assert store.activate_key_set(tenant, pending.key_id, actor="k1").status == "active"
    assert store.key_set_keys(pending.key_id) == {"public": b"other-public"}
    assert store.counts()["registrations"] == 0


def test_schema_version_1_is_refused(backend: Backend):
    backend.make_v1()
    with pytest.raises(SchemaVersionError, match=r"schema version 1, this build reads version 3 only"):
        backend.open()


def test_reopening_checks_the_version_and_keeps_data(backend: Backend):
    first = backend.open()
    second = backend.open()  # a second replica on the same database
    tenant, key_id = active_key_set(first)
    assert second.get_key_set(key_id, tenant).status == "active"
    assert second.get_meta("schema_version") == 3


def test_a_lost_postgres_connection_is_unavailable_not_a_crash(backend: Backend):
    """The database drops the connection mid-session (restart, failover): the call raises StoreUnavailableError,
    which the server answers with 503 + Retry-After, and the next call reconnects."""
    if backend.kind != "postgres":
        pytest.skip("PostgreSQL only: a SQLite file has no connection to lose")
    from cryptoface.service.app import error_status
    from cryptoface.store import StoreUnavailableError

    store = backend.open()
    t = store.create_tenant("acme").tenant_id
    with store._pool.connection() as conn:  # the pooled connection the next call will reuse
        pid = conn.info.backend_pid
    backend._admin(f"SELECT pg_terminate_backend({int(pid)})")
    with pytest.raises(StoreUnavailableError) as e:
        store.get_tenant(t)
    assert error_status(e.value) == (503, "store_unavailable")
    assert store.get_tenant(t).tenant_id == t
