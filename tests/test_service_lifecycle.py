"""Subject lifecycle over HTTP: explicit create vs add, a cap on templates, deletes that really erase."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.store.base import MAX_TEMPLATES_PER_SUBJECT
from test_service_support import Server, embedding, enrol, identify_scores, make_keys, probe, register, scores


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server.db")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys():
    return make_keys()


def test_create_add_cap_and_delete(server, keys):
    rng = np.random.default_rng(0)
    _, http = server.tenant("acme")
    kid = register(http, keys)
    alice, bob = embedding(rng), embedding(rng)
    r = enrol(http, kid, "alice", [probe(keys, alice)])
    assert r.status_code == 201
    sid, first = r.json()["subject_id"], r.json()["template_ids"]
    r = enrol(http, kid, "alice", [probe(keys, alice)])  # no silent append
    assert r.status_code == 409 and r.json()["error"] == "conflict"
    r = http.post(f"/v1/keysets/{kid}/subjects/{sid}/templates", json={"probes": [probe(keys, alice)] * 2})
    assert r.status_code == 201 and r.json()["subject_id"] == sid and len(r.json()["template_ids"]) == 3
    assert r.json()["template_ids"][0] == first[0]
    room = MAX_TEMPLATES_PER_SUBJECT - 3
    before = server.snapshot()
    r = http.post(f"/v1/keysets/{kid}/subjects/{sid}/templates", json={"probes": [probe(keys, alice)] * (room + 1)})
    assert r.status_code == 409 and r.json()["error"] == "template_cap"
    assert server.snapshot() == before
    assert http.post(f"/v1/keysets/{kid}/subjects/999/templates", json={"probes": [probe(keys, alice)]}).status_code \
        == 404
    r = http.post(f"/v1/keysets/{kid}/verify", json={"subject": "alice", "probe": probe(keys, alice)})
    assert len(scores(keys, r)) == 3  # one result per template
    r = enrol(http, kid, "bob", [probe(keys, bob)])
    bob_id, (bob_tid,) = r.json()["subject_id"], r.json()["template_ids"]
    assert set(identify_scores(keys, http.post(f"/v1/keysets/{kid}/identify",
                                               json={"probe": probe(keys, bob)}))) == {"alice", "bob"}
    # delete one of alice's templates, then bob's only template (bob goes with it), then alice
    assert http.delete(f"/v1/keysets/{kid}/templates/{first[0]}").status_code == 204
    assert http.delete(f"/v1/keysets/{kid}/templates/{first[0]}").status_code == 404
    assert http.delete(f"/v1/keysets/{kid}/templates/{bob_tid}").status_code == 204
    listed = http.get(f"/v1/keysets/{kid}/subjects").json()
    assert [s["subject"] for s in listed] == ["alice"] and len(listed[0]["template_ids"]) == 2
    assert http.delete(f"/v1/keysets/{kid}/subjects/{bob_id}").status_code == 404
    got = identify_scores(keys, http.post(f"/v1/keysets/{kid}/identify", json={"probe": probe(keys, bob)}))
    assert set(got) == {"alice"}  # the packed gallery was rebuilt without bob
    assert http.delete(f"/v1/keysets/{kid}/subjects/{sid}").status_code == 204
    assert http.get(f"/v1/keysets/{kid}/subjects").json() == []
    assert server.store.counts()["templates"] == 0 and server.store.counts()["galleries"] == 0
    r = http.post(f"/v1/keysets/{kid}/verify", json={"subject": "alice", "probe": probe(keys, alice)})
    assert r.status_code == 404 and r.json()["error"] == "unknown_subject"
    actions = [a["action"] for a in http.get("/v1/audit").json()]
    assert actions.count("template.delete") == 2 and actions.count("subject.delete") == 2


def test_key_set_delete_erases_everything(server, keys, tmp_path):
    rng = np.random.default_rng(1)
    _, http = server.tenant("acme")
    kid = register(http, keys)
    p = probe(keys, embedding(rng))
    r = enrol(http, kid, "carol", [p])
    tid = r.json()["template_ids"][0]
    stored = server.store.templates(kid)[0].ciphertext
    assert tid == server.store.templates(kid)[0].id
    http.post(f"/v1/keysets/{kid}/identify", json={"probe": p})  # leaves a packed gallery too
    assert http.delete(f"/v1/keysets/{kid}").status_code == 204
    counts = server.store.counts()
    assert counts["key_sets"] == counts["key_blobs"] == counts["subjects"] == counts["templates"] == 0
    assert counts["galleries"] == 0
    assert http.get(f"/v1/keysets/{kid}").status_code == 404
    # the bytes are gone from the database file and its write-ahead log (secure_delete + checkpoint)
    needle = stored[-4096:]
    for path in tmp_path.glob("server.db*"):
        assert needle not in path.read_bytes(), path
    # the same public key can be registered again afterwards (a fresh key set, e.g. after a mistaken delete)
    register(http, keys)


def test_names_are_validated_before_any_computation(server, keys):
    _, http = server.tenant("acme")
    kid = register(http, keys)
    server.service.cache.forget(kid)
    loads = server.service.cache.loads
    p = probe(keys, embedding(np.random.default_rng(2)))
    before = server.snapshot()
    for bad in ("", " alice", "alice ", "a/b", "a\\b", "..", "x..y", "a\x00b", "a\nb", "zero\u200bwidth", "a:b",
                "x" * 101, "bidi\u202eevil"):
        r = enrol(http, kid, bad, [p])
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", (bad, r.text)
        r = http.post(f"/v1/keysets/{kid}/verify", json={"subject": bad, "probe": p})
        assert r.status_code == 422, bad
    assert server.service.cache.loads == loads  # no key set was even loaded
    assert server.snapshot() == before
    # a name that looks like percent-encoding is data in a body: stored as sent; NFC makes one name of two spellings
    assert enrol(http, kid, "%41lice", [p]).status_code == 201
    assert enrol(http, kid, "Jose\u0301", [p]).status_code == 201
    assert enrol(http, kid, "Jos\u00e9", [p]).status_code == 409
    names = sorted(s["subject"] for s in http.get(f"/v1/keysets/{kid}/subjects").json())
    assert names == ["%41lice", "Jos\u00e9"]
