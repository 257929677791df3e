"""Who may do what: API keys on every route but health, tenants' key sets invisible to each other, proof of
possession at registration, create-only key sets, the audit log — each finding of issue 22 as an attack over HTTP."""

from __future__ import annotations

import base64
import logging
import os

import httpx
import numpy as np
import pytest

from cryptoface.service.auth import AdminKeyError, load_admin_key
from cryptoface.service.proof import MAX_FAILED_PROOFS
from test_service_support import (
    ADMIN_KEY,
    Server,
    embedding,
    enrol,
    make_keys,
    probe,
    prove,
    register,
    register_body,
    running,
    scores,
)

UNAUTHORIZED = {"error": "unauthorized"}
KID = "ab" * 32


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server.db")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def victim_keys():
    return make_keys()


@pytest.fixture(scope="module")
def attacker_keys():
    return make_keys()


ROUTES = [
    ("GET", "/v1/keysets"), ("POST", "/v1/keysets"), ("GET", f"/v1/keysets/{KID}"), ("DELETE", f"/v1/keysets/{KID}"),
    ("POST", f"/v1/keysets/{KID}/proof"), ("PUT", f"/v1/keysets/{KID}/keys/relin"),
    ("GET", f"/v1/keysets/{KID}/subjects"), ("POST", f"/v1/keysets/{KID}/subjects"),
    ("POST", f"/v1/keysets/{KID}/subjects/1/templates"), ("DELETE", f"/v1/keysets/{KID}/subjects/1"),
    ("DELETE", f"/v1/keysets/{KID}/templates/1"), ("POST", f"/v1/keysets/{KID}/infer"),
    ("POST", f"/v1/keysets/{KID}/verify"), ("POST", f"/v1/keysets/{KID}/identify"), ("GET", "/v1/audit"),
    ("POST", f"/v1/keysets/{KID}/jobs"), ("GET", "/v1/jobs"), ("GET", f"/v1/jobs/{'A' * 22}"),
    ("GET", f"/v1/jobs/{'A' * 22}/result"), ("POST", f"/v1/jobs/{'A' * 22}/cancel"), ("DELETE", f"/v1/jobs/{'A' * 22}"),
    ("GET", "/v1/model/tail"),
]
ADMIN_ROUTES = [("POST", "/v1/admin/tenants"), ("GET", "/v1/admin/tenants"),
                ("POST", "/v1/admin/tenants/tn_0123456789abcdef/api-keys"), ("DELETE", "/v1/admin/api-keys/abc")]


def test_every_route_but_health_needs_a_credential(server):
    _, tenant = server.tenant("acme")
    _, revoked = server.tenant("gone")
    key_id = revoked.headers["x-api-key"].split("_", 2)[1]
    with server.admin() as a:
        assert a.delete(f"/v1/admin/api-keys/{key_id}").status_code == 204
    before = server.snapshot()
    anon = server.anonymous()
    forged = httpx.Client(base_url=server.url, headers={"x-api-key": "cf_" + "0" * 12 + "_" + "A" * 43})
    junk = httpx.Client(base_url=server.url, headers={"x-api-key": "junk", "authorization": "Bearer nope"})
    for client in (anon, forged, junk, revoked):
        for method, path in ROUTES:
            r = client.request(method, path, json={})
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", (method, path, r.text)
    for client in (anon, tenant, junk, revoked):  # a tenant's key opens no admin route
        for method, path in ADMIN_ROUTES:
            r = client.request(method, path, json={"name": "x"})
            assert r.status_code == 401, (method, path, r.text)
    assert anon.get("/v1/health").status_code == 200
    assert anon.get("/openapi.json").status_code == 200
    assert server.snapshot() == before


def test_admin_routes_are_off_without_an_admin_credential(tmp_path):
    with running(tmp_path / "s.db", admin_key=None) as srv:
        client = httpx.Client(base_url=srv.url, headers={"authorization": f"Bearer {ADMIN_KEY}"})
        for method, path in ADMIN_ROUTES:
            r = client.request(method, path, json={"name": "x"})
            assert r.status_code == 503 and r.json()["error"] == "admin_disabled", (method, path)
        assert srv.store.counts()["tenants"] == 0


def test_admin_key_is_never_defaulted_and_its_file_must_be_private(tmp_path, monkeypatch):
    monkeypatch.delenv("CRYPTOFACE_ADMIN_KEY", raising=False)
    assert load_admin_key() is None
    f = tmp_path / "admin.key"
    f.write_text(ADMIN_KEY + "\n")
    os.chmod(f, 0o644)
    with pytest.raises(AdminKeyError):
        load_admin_key(f)
    os.chmod(f, 0o600)
    assert load_admin_key(f) == ADMIN_KEY
    f.write_text("short")
    with pytest.raises(AdminKeyError):
        load_admin_key(f)
    assert load_admin_key(env={"CRYPTOFACE_ADMIN_KEY": ADMIN_KEY}) == ADMIN_KEY


def test_admin_api_tenants_and_keys(server):
    with server.admin() as a:
        r = a.post("/v1/admin/tenants", json={"name": "acme"})
        assert r.status_code == 201 and r.json()["tenant_id"].startswith("tn_")
        tid = r.json()["tenant_id"]
        assert a.post("/v1/admin/tenants", json={"name": "acme"}).status_code == 409
        assert a.post("/v1/admin/tenants", json={"name": "bad/name"}).status_code == 422
        assert [t["tenant_id"] for t in a.get("/v1/admin/tenants").json()] == [tid]
        assert a.post("/v1/admin/tenants/tn_0000000000000000/api-keys").status_code == 404
        k = a.post(f"/v1/admin/tenants/{tid}/api-keys").json()
        assert k["token"].startswith(f"cf_{k['key_id']}_") and k["tenant_id"] == tid
        assert a.delete("/v1/admin/api-keys/ffffffffffff").status_code == 404
    stored = server.store.api_key_by_id(k["key_id"])
    assert stored.token_hash != k["token"] and k["token"] not in str(server.snapshot())  # only the hash is kept
    tenant = httpx.Client(base_url=server.url, headers={"x-api-key": k["token"]})
    assert tenant.get("/v1/keysets").status_code == 200
    with server.admin() as a:
        assert a.delete(f"/v1/admin/api-keys/{k['key_id']}").status_code == 204
    assert tenant.get("/v1/keysets").status_code == 401


def test_impostor_cannot_touch_another_tenants_key_set(server, victim_keys, attacker_keys):
    """The finding: knowing a key id, an attacker appended their face to the victim's subject and replaced keys."""
    rng = np.random.default_rng(0)
    _, victim = server.tenant("victim-co")
    _, attacker = server.tenant("attacker-co")
    kid = register(victim, victim_keys)
    victim_face, attacker_face = embedding(rng), embedding(rng)
    r = enrol(victim, kid, "victim", [probe(victim_keys, victim_face)])
    assert r.status_code == 201
    sid, (tid,) = r.json()["subject_id"], r.json()["template_ids"]
    before = server.snapshot()
    # the attacker holds the victim's public key (it is public) and uses it to make a "template" of their own face
    planted = probe(victim_keys, attacker_face)
    relin = dict(attacker_keys.evaluation_keys())["relin"]
    attempts = [
        attacker.get(f"/v1/keysets/{kid}"),
        attacker.get(f"/v1/keysets/{kid}/subjects"),
        attacker.post(f"/v1/keysets/{kid}/subjects/{sid}/templates", json={"probes": [planted]}),
        attacker.post(f"/v1/keysets/{kid}/subjects", json={"subject": "victim2", "probes": [planted]}),
        attacker.post(f"/v1/keysets/{kid}/verify", json={"subject": "victim", "probe": planted}),
        attacker.post(f"/v1/keysets/{kid}/identify", json={"probe": planted}),
        attacker.put(f"/v1/keysets/{kid}/keys/relin", content=relin),
        attacker.put(f"/v1/keysets/{kid}/keys/rotation:1", content=relin),
        attacker.delete(f"/v1/keysets/{kid}/templates/{tid}"),
        attacker.delete(f"/v1/keysets/{kid}/subjects/{sid}"),
        attacker.delete(f"/v1/keysets/{kid}"),
        attacker.post(f"/v1/keysets/{kid}/proof", json={"proof": "0" * 64}),
    ]
    for r in attempts:
        assert r.status_code == 404 and r.json()["error"] == "unknown_key_set", (r.request.method, r.request.url)
    # the same public key registered again (by anyone) is a conflict: key sets are create-only
    assert attacker.post("/v1/keysets", json=register_body(victim_keys)).status_code == 409
    assert attacker.get("/v1/keysets").json() == []
    assert server.snapshot() == before
    # the victim's own verify still rejects the attacker's face, and accepts the victim's
    url = f"/v1/keysets/{kid}/verify"
    (s,) = scores(victim_keys, victim.post(url, json={"subject": "victim", "probe": probe(victim_keys, attacker_face)}))
    assert s < 0.23
    (s,) = scores(victim_keys, victim.post(url, json={"subject": "victim", "probe": probe(
        victim_keys, embedding(rng, victim_face, 0.8))}))
    assert s > 0.7
    assert [x["subject_id"] for x in victim.get(f"/v1/keysets/{kid}/subjects").json()] == [sid]


def test_someone_elses_public_key_cannot_be_registered_as_ones_own(server, victim_keys):
    """Front-running: the attacker submits the victim's public key first; without the secret key no proof passes."""
    _, victim = server.tenant("victim-co")
    _, attacker = server.tenant("attacker-co")
    r = attacker.post("/v1/keysets", json=register_body(victim_keys))
    assert r.status_code == 201 and r.json()["status"] == "pending"
    kid = r.json()["key_id"]
    ch = r.json()["challenge"]
    assert ch["count"] == 16 and len(bytes.fromhex(ch["nonce"])) == 16
    planted = probe(victim_keys, embedding(np.random.default_rng(1)))
    r = attacker.post(f"/v1/keysets/{kid}/subjects", json={"subject": "victim", "probes": [planted]})
    assert r.status_code == 409 and r.json()["error"] == "key_set_pending"
    r = attacker.post(f"/v1/keysets/{kid}/verify", json={"subject": "victim", "probe": planted})
    assert r.status_code == 409 and r.json()["error"] == "key_set_pending"
    for attempt in range(1, MAX_FAILED_PROOFS):
        guess = f"{attempt:064x}"  # guessing: the challenge has 1000^16 answers
        r = attacker.post(f"/v1/keysets/{kid}/proof", json={"proof": guess})
        assert r.status_code == 403 and r.json()["error"] == "proof_failed"
    # squatting: the attacker's registration is still pending, and it does not stand in the owner's way
    register(victim, victim_keys)
    assert victim.get(f"/v1/keysets/{kid}").json()["status"] == "active"
    assert attacker.get(f"/v1/keysets/{kid}").status_code == 404  # the owner's proof dropped the squatter's
    r = attacker.post(f"/v1/keysets/{kid}/proof", json={"proof": "0" * 64})
    assert r.status_code == 404
    assert attacker.post("/v1/keysets", json=register_body(victim_keys)).status_code == 409  # active now


def test_wrong_proofs_delete_the_registration(server, victim_keys):
    _, attacker = server.tenant("attacker-co")
    kid = attacker.post("/v1/keysets", json=register_body(victim_keys)).json()["key_id"]
    for attempt in range(1, MAX_FAILED_PROOFS + 1):
        r = attacker.post(f"/v1/keysets/{kid}/proof", json={"proof": f"{attempt:064x}"})
        assert r.status_code == 403 and r.json()["error"] == "proof_failed"
    assert attacker.get(f"/v1/keysets/{kid}").status_code == 404  # deleted after the last failed attempt
    assert server.store.counts()["registrations"] == 0


def test_proof_is_a_hash_of_rounded_integers(server, victim_keys):
    _, http = server.tenant("acme")
    r = http.post("/v1/keysets", json=register_body(victim_keys))
    reg = r.json()
    ct = victim_keys.backend.deserialize(base64.b64decode(reg["challenge"]["ciphertext"]))
    values = victim_keys.backend.decrypt(ct)
    ints = np.rint(values[:16])
    assert np.all((ints >= 0) & (ints < 1000)) and np.abs(values[:16] - ints).max() < 1e-3
    assert http.post(f"/v1/keysets/{reg['key_id']}/proof", json={"proof": "z" * 64}).status_code == 422
    assert prove(http, victim_keys, reg).status_code == 200
    r = prove(http, victim_keys, reg)
    assert r.status_code == 409  # active already: no challenge left to answer
    rows = server.store.audit(None)
    assert [a.action for a in rows if a.key_id == reg["key_id"]] == ["keyset.register", "keyset.activate"]


def test_key_sets_are_create_only(server, victim_keys):
    _, http = server.tenant("acme")
    kid = register(http, victim_keys)
    before = server.snapshot()
    relin = dict(victim_keys.evaluation_keys())["relin"]
    r = http.put(f"/v1/keysets/{kid}/keys/relin", content=relin)  # the same key again
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = http.put(f"/v1/keysets/{kid}/keys/relin", content=b"junk")  # junk over a stored key: still 409
    assert r.status_code == 409
    assert http.post("/v1/keysets", json=register_body(victim_keys)).status_code == 409
    assert server.snapshot() == before
    assert server.store.key_set_keys(kid, ("relin",))["relin"] == relin


def test_pending_key_sets_take_no_keys_and_refuse_matching(server, victim_keys):
    _, http = server.tenant("acme")
    kid = http.post("/v1/keysets", json=register_body(victim_keys)).json()["key_id"]
    relin = dict(victim_keys.evaluation_keys())["relin"]
    for kind, body in (("relin", relin), ("rotation:1", b"\x00junk")):  # keys come after the proof
        r = http.put(f"/v1/keysets/{kid}/keys/{kind}", content=body)
        assert r.status_code == 409 and r.json()["error"] == "key_set_pending", kind
    p = probe(victim_keys, embedding(np.random.default_rng(2)))
    for path, body in ((f"/v1/keysets/{kid}/subjects", {"subject": "a", "probes": [p]}),
                       (f"/v1/keysets/{kid}/identify", {"probe": p})):
        r = http.post(path, json=body)
        assert r.status_code == 409 and r.json()["error"] == "key_set_pending", path
    assert http.delete(f"/v1/keysets/{kid}").status_code == 204
    assert server.store.counts()["key_sets"] == server.store.counts()["registrations"] == 0


def test_audit_log_holds_ids_not_names(server, victim_keys, attacker_keys):
    rng = np.random.default_rng(3)
    _, a = server.tenant("tenant-a")
    _, b = server.tenant("tenant-b")
    kid_a, kid_b = register(a, victim_keys), register(b, attacker_keys)
    r = enrol(a, kid_a, "Alice Secretname", [probe(victim_keys, embedding(rng))])
    sid = r.json()["subject_id"]
    enrol(b, kid_b, "Bob Hiddenname", [probe(attacker_keys, embedding(rng))])
    assert a.delete(f"/v1/keysets/{kid_a}/subjects/{sid}").status_code == 204
    rows_a = a.get("/v1/audit").json()
    assert {r["key_id"] for r in rows_a if r["key_id"]} == {kid_a}
    assert [r["action"] for r in rows_a if r["subject_id"] == sid] == ["subject.create", "subject.delete"]
    last = rows_a[-1]["id"]
    assert a.get("/v1/audit", params={"after": last}).json() == []
    with server.admin() as admin:
        rows = admin.get("/v1/audit").json()
    assert {kid_a, kid_b} <= {r["key_id"] for r in rows}
    assert {"tenant.create", "api_key.create", "keyset.register", "keyset.activate", "key.add", "subject.create",
            "subject.delete"} <= {r["action"] for r in rows}
    text = str(rows)
    assert "Secretname" not in text and "Hiddenname" not in text


def test_access_log_shows_ids_never_names_or_keys(tmp_path, victim_keys):
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    with running(tmp_path / "s.db", access_log=True) as srv:
        handler = Keep()
        logging.getLogger("uvicorn.access").addHandler(handler)
        try:
            _, http = srv.tenant("acme")
            kid = register(http, victim_keys)
            p = probe(victim_keys, embedding(np.random.default_rng(4)))
            assert enrol(http, kid, "Zelda Lognamecheck", [p]).status_code == 201
            http.post(f"/v1/keysets/{kid}/verify", json={"subject": "Zelda Lognamecheck", "probe": p})
        finally:
            logging.getLogger("uvicorn.access").removeHandler(handler)
    text = "\n".join(records)
    assert kid in text  # the log is there, with ids
    assert "Lognamecheck" not in text and http.headers["x-api-key"] not in text and p["ciphertext"][:40] not in text
