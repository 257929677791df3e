"""The matching server over real HTTP (uvicorn on 127.0.0.1 in a thread, real SQLite store) with simulator keys."""

from __future__ import annotations

import ast
import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import cryptoface.service as service_pkg
from cryptoface.backends.protocol import CkksParameters
from cryptoface.client import ClientKeys
from cryptoface.match.clear import cosine_clear
from cryptoface.service.app import ERRORS
from test_service_support import (
    PARAMS,
    Server,
    b64,
    embedding,
    enrol,
    identify_scores,
    make_keys,
    probe,
    register,
    register_body,
    running,
    scores,
)


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server.db", max_body_bytes=4 * 1024 * 1024)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys():
    return make_keys()


def test_round_trip_and_restart(tmp_path, keys):
    rng = np.random.default_rng(0)
    people = {f"p{i}": embedding(rng) for i in range(10)}  # 10 > 8: two gallery ciphertexts
    with running(tmp_path / "server.db") as srv:
        _, http = srv.tenant("acme")
        token = http.headers["x-api-key"]
        kid = register(http, keys)
        for name, e in people.items():
            r = enrol(http, kid, name, [probe(keys, e)])
            assert r.status_code == 201, r.text
            assert r.json()["subject"] == name and len(r.json()["template_ids"]) == 1
        listed = http.get(f"/v1/keysets/{kid}/subjects").json()
        assert sorted(s["subject"] for s in listed) == sorted(people)
        genuine = embedding(rng, people["p3"], 0.7)
        impostor = embedding(rng, people["p3"], 0.0)
        url = f"/v1/keysets/{kid}/verify"
        (s,) = scores(keys, http.post(url, json={"subject": "p3", "probe": probe(keys, genuine)}))
        assert abs(s - cosine_clear(genuine, people["p3"])) < 1e-3
        (s,) = scores(keys, http.post(url, json={"subject": "p3", "probe": probe(keys, impostor)}))
        assert abs(s - cosine_clear(impostor, people["p3"])) < 1e-3
        r = http.post(url, json={"subject": "p3", "probe": probe(keys, genuine), "mode": "decision"})
        assert r.json()["threshold"] is not None and abs(scores(keys, r)[0] - 1) < 0.02
        r = http.post(url, json={"subject": "p3", "probe": probe(keys, genuine)})
        assert r.json()["threshold"] is None  # score mode: the client decides with its own threshold
        got = identify_scores(keys, http.post(f"/v1/keysets/{kid}/identify",
                                              json={"probe": probe(keys, embedding(rng, people["p9"], 0.6))}))
        assert max(got, key=got.get) == "p9" and set(got) == set(people)
        assert not srv.service.backends_hold_secret_keys()

    with running(tmp_path / "server.db") as srv:  # restart: every committed subject is served, the API key holds
        http = httpx.Client(base_url=srv.url, timeout=60, headers={"x-api-key": token})
        r = http.post(f"/v1/keysets/{kid}/verify",
                      json={"subject": "p5", "probe": probe(keys, embedding(rng, people["p5"], 0.8))})
        assert scores(keys, r)[0] > 0.7
        _, stranger = srv.tenant("other")
        assert stranger.get(f"/v1/keysets/{kid}").status_code == 404  # another tenant's key set is invisible


def test_bad_inputs_give_4xx_and_leave_store_unchanged(server, keys):
    rng = np.random.default_rng(1)
    _, http = server.tenant("acme")
    kid = register(http, keys)
    assert enrol(http, kid, "alice", [probe(keys, embedding(rng))]).status_code == 201
    before = server.snapshot()
    good = probe(keys, embedding(rng))
    url = f"/v1/keysets/{kid}/subjects"
    other = ClientKeys.generate("simulator", PARAMS, stride=1)
    wrong = ClientKeys.generate("simulator", CkksParameters(log_ring=13, levels=24), stride=1)
    cases = {
        "unknown key id": (f"/v1/keysets/{'0' * 64}/subjects", {"subject": "bob", "probes": [good]}, 404),
        "malformed key id": ("/v1/keysets/xyz/subjects", {"subject": "bob", "probes": [good]}, 422),
        "truncated ciphertext": (url, {"subject": "bob", "probes": [{**good, "ciphertext": good["ciphertext"][:400]}]},
                                 400),
        "not base64": (url, {"subject": "bob", "probes": [{**good, "ciphertext": "!!!"}]}, 400),
        "bad stride": (url, {"subject": "bob", "probes": [{**good, "stride": 3}]}, 422),
        "too few levels": (url, {"subject": "bob", "probes": [probe(keys, embedding(rng), level=4)]}, 400),
        "images without model": (url, {"subject": "bob", "probes": [{"images": [good["ciphertext"]],
                                                                     "resolution": 64}]}, 501),
        "empty images": (url, {"subject": "bob", "probes": [{"images": []}]}, 422),
        "both ciphertext and images": (url, {"subject": "bob", "probes": [{**good, "images": [good["ciphertext"]]}]},
                                       422),
        "unknown field": (url, {"subject": "bob", "probes": [good], "secret_key": "x"}, 422),
        "no probes": (url, {"subject": "bob", "probes": []}, 422),
        "unknown subject": (f"/v1/keysets/{kid}/verify", {"subject": "ghost", "probe": good}, 404),
        "subject exists": (url, {"subject": "alice", "probes": [good]}, 409),
        "foreign ciphertext": (url, {"subject": "bob", "probes": [probe(other, embedding(rng))]}, 400),
        "wrong parameters": (url, {"subject": "bob", "probes": [probe(wrong, embedding(rng))]}, 400),
        "bad mode": (f"/v1/keysets/{kid}/verify", {"subject": "alice", "probe": good, "mode": "x"}, 422),
    }
    for name, (path, body, status) in cases.items():
        r = http.post(path, json=body)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json().get("detail") and r.json().get("error"), name
        assert server.snapshot() == before, name
    big = {"subject": "bob", "probes": [{"ciphertext": b64(b"x" * (5 * 1024 * 1024))}]}
    r = http.post(url, json=big)
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    r = http.post("/v1/keysets", json={**register_body(other), "params": {"extra": None}})
    assert r.status_code == 422
    assert server.snapshot() == before


def test_secret_keys_are_refused_and_never_held(server, keys):
    _, http = server.tenant("acme")
    body = register_body(keys)
    for kind in ("secret", "secret_key", "sk", "relin"):  # registration takes the public key alone
        r = http.post("/v1/keysets", json={**body, "keys": {**body["keys"], kind: "AAAA"}})
        assert r.status_code == 422, r.text
    assert server.store.counts()["key_sets"] == 0
    kid = register(http, keys)
    secret = keys.backend.export_secret_key()
    for kind in ("secret", "secret_key", "sk", "sk ", "private_key", "private", "public", "rotation:3", "Relin",
                 "keys"):
        r = http.put(f"/v1/keysets/{kid}/keys/{kind}", content=secret)
        assert r.status_code == 400 and r.json()["error"] == "bad_key_kind", (kind, r.text)
    assert "sk" not in server.store.key_set_keys(kid)
    assert enrol(http, kid, "a", [probe(keys, embedding(np.random.default_rng(2)))]).status_code == 201
    assert not server.service.backends_hold_secret_keys()
    # the server package never generates or loads a secret key, and never logs or prints
    for path in Path(service_pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"generate_keys", "deserialize_secret_key", "load_secret_key", "read_secret_key",
                            "ClientKeys", "decrypt", "logging", "logger", "print"}, path
        assert "cryptoface.client" not in path.read_text()


def test_concurrent_enrolments(server, keys):
    rng = np.random.default_rng(3)
    embs = {f"s{i}": embedding(rng) for i in range(12)}
    _, http = server.tenant("acme")
    kid = register(http, keys)
    probes = {n: probe(keys, e) for n, e in embs.items()}

    def one(name):
        r = enrol(http, kid, name, [probes[name]])
        assert r.status_code == 201, r.text
        return r.json()["template_ids"]

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(one, embs))
    assert len({i for x in ids for i in x}) == 12
    got = identify_scores(keys, http.post(f"/v1/keysets/{kid}/identify",
                                          json={"probe": probe(keys, embedding(rng, embs["s7"], 0.8))}))
    assert max(got, key=got.get) == "s7"


def test_openapi_documents_every_status_and_the_probe_exclusivity(server):
    spec = server.anonymous().get("/openapi.json").json()
    paths = spec["paths"]
    assert {"/v1/keysets", "/v1/keysets/{key_id}/verify", "/v1/keysets/{key_id}/identify", "/v1/keysets/{key_id}/proof",
            "/v1/keysets/{key_id}/subjects", "/v1/keysets/{key_id}/subjects/{subject_id}/templates",
            "/v1/keysets/{key_id}/templates/{template_id}", "/v1/audit", "/v1/admin/tenants"} <= set(paths)
    documented = {int(s) for p in paths.values() for op in p.values() for s in op["responses"]}
    assert {401, 403, 404, 409, 413, 422, 501, 503} <= documented
    assert {status for _, status, _ in ERRORS} <= documented
    for path, ops in paths.items():
        for method, op in ops.items():
            if path != "/v1/health":
                assert {"401", "503"} <= set(op["responses"]), (method, path)
            if "requestBody" in op:
                assert "413" in op["responses"], (method, path)
    schemas = spec["components"]["schemas"]
    assert schemas["TemplateProbe"]["additionalProperties"] is False
    assert schemas["ImageProbe"]["additionalProperties"] is False
    assert "ciphertext" in schemas["TemplateProbe"]["required"] and "images" in schemas["ImageProbe"]["required"]
    assert "ciphertext" not in schemas["ImageProbe"]["properties"]
    assert "images" not in schemas["TemplateProbe"]["properties"]


def test_in_process_service_matches_http(tmp_path, keys):
    from cryptoface.service import MatchService
    from cryptoface.service.auth import Caller
    from cryptoface.service.proof import answer_challenge
    from cryptoface.store import SQLiteStore

    rng = np.random.default_rng(8)
    store = SQLiteStore(tmp_path / "local.db")
    svc = MatchService(store)
    tenant = svc.create_tenant(Caller(None, "admin"), "local")
    me = Caller(tenant.tenant_id, "local")
    public = dict(keys.evaluation_keys())
    rec, ch = svc.register(me, "simulator", keys.params_json, public.pop("public"))
    values = keys.backend.decrypt(keys.backend.deserialize(ch.ciphertext))
    assert svc.prove(me, rec.key_id, answer_challenge(values, ch.count, ch.nonce)).status == "active"
    for kind, data in public.items():
        svc.add_key(me, rec.key_id, kind, data)
    alice = embedding(rng)
    p = probe(keys, alice)
    as_bytes = {"ciphertext": base64.b64decode(p["ciphertext"]), "stride": 1, "replicas": 1}
    s = svc.create_subject(me, rec.key_id, "alice", [as_bytes])
    assert s.name == "alice" and len(s.template_ids) == 1
    q = probe(keys, embedding(rng, alice, 0.7))
    (res,) = svc.verify(me, rec.key_id, "alice", {**q, "ciphertext": base64.b64decode(q["ciphertext"])})
    assert abs(keys.backend.decrypt(keys.backend.deserialize(res))[0] - 0.7) < 0.05
    store.close()
