"""The Client against the real service: over HTTP (create_app under uvicorn, SQLite) and in process, as tenants.

Registration with a real proof of possession, create vs add, deletes, the client's decision and tampering check,
restart, and what another tenant and a revoked key get. The clients here speak the one-round protocol (the server
normalises raw templates, so a planted raw template reaches the client's check); tests/test_refresh_protocol.py
runs the same requests under the default refresh protocol.
"""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from cryptoface.client import (
    AdminClient,
    AuthError,
    Client,
    ClientKeys,
    HTTPTransport,
    ServerError,
    SubjectExistsError,
    TamperingError,
)
from cryptoface.match.clear import cosine_clear, encrypt_embedding_for_tests
from test_service_support import ADMIN_KEY, LEVEL, PARAMS, embedding, running


@pytest.fixture(scope="module")
def keys():
    return ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7)


def tenant(url: str, name: str) -> dict:
    """A tenant and one API key, made through the admin client: {tenant_id, key_id, token, ...}."""
    with AdminClient(url, ADMIN_KEY) as admin:
        t = admin.create_tenant(name)
        return admin.create_api_key(t["tenant_id"])


def connect(url: str, keys: ClientKeys, token: str, sent: list | None = None) -> Client:
    hooks = {} if sent is None else {"request": [lambda r: sent.append((r.method, r.url.path, r.read()))]}
    http = httpx.Client(base_url=url, timeout=60, event_hooks=hooks)
    return Client(keys, HTTPTransport(url, api_key=token, client=http), threshold=0.23, protocol="one-round")


def tp(client: Client, keys: ClientKeys, e: np.ndarray):
    return client.template_probe(encrypt_embedding_for_tests(keys.backend, e, keys.layout, LEVEL))


def test_round_trip_over_http_with_lifecycle_and_restart(tmp_path, keys):
    rng = np.random.default_rng(0)
    people = {f"p{i}": embedding(rng) for i in range(10)}  # 10 > 8: two gallery ciphertexts
    sent: list = []
    with running(tmp_path / "s.db") as srv:
        token = tenant(srv.url, "acme")["token"]
        with connect(srv.url, keys, token, sent) as c:
            assert c.register() is True and c.register() is False
            for name, e in people.items():
                c.enroll(name, [tp(c, keys, e)])
            assert sorted(s.name for s in c.subjects()) == sorted(people)
            genuine, impostor = embedding(rng, people["p3"], 0.7), embedding(rng, people["p3"], 0.0)
            r = c.verify("p3", tp(c, keys, genuine))
            assert r.accepted and abs(r.score - cosine_clear(genuine, people["p3"])) < 1e-3
            assert not c.verify("p3", tp(c, keys, impostor)).accepted
            d = c.verify("p3", tp(c, keys, genuine), mode="decision")
            assert d.accepted and d.score is None
            assert c.identify(tp(c, keys, embedding(rng, people["p9"], 0.6))).subject == "p9"
            assert c.identify(tp(c, keys, embedding(rng))).subject is None

            with pytest.raises(SubjectExistsError, match="--add"):
                c.enroll("p3", [tp(c, keys, genuine)])
            s = c.enroll("p3", [tp(c, keys, genuine)], add=True)
            assert len(s.template_ids) == 2
            c.delete_template(s.template_ids[1])
            assert next(x for x in c.subjects() if x.name == "p3").template_ids == s.template_ids[:1]
            c.delete_subject("p0")
            assert "p0" not in {x.name for x in c.subjects()}
            assert c.enroll("%41lice", [tp(c, keys, embedding(rng))]).name == "%41lice"  # data, never a path
            c.delete_subject("%41lice")
        assert not srv.service.backends_hold_secret_keys()
    # the proof body is one 64-hex digest; no request carried a decrypted value or a subject name in its URL
    (proof,) = [body for m, path, body in sent if path.endswith("/proof")]
    assert set(json.loads(proof)) == {"proof"} and len(json.loads(proof)["proof"]) == 64
    assert not any(name in path for _, path, _ in sent for name in people)

    with running(tmp_path / "s.db") as srv, connect(srv.url, keys, token) as c:  # restarted
        assert len(c.subjects()) == 9
        assert c.verify("p5", tp(c, keys, embedding(rng, people["p5"], 0.8))).accepted
        victim = embedding(rng)
        c.enroll("victim", [tp(c, keys, victim * 1e3)])  # a template far outside the fitted range
        with pytest.raises(TamperingError):
            c.verify("victim", tp(c, keys, embedding(rng, victim, 0.1)))
        with pytest.raises(TamperingError):
            c.identify(tp(c, keys, embedding(rng, victim, 0.1)))
        c.delete_key_set()
        assert c.subjects() == [] and c.transport.key_set(keys.key_id) is None


def test_other_tenants_see_nothing_and_a_revoked_key_is_refused(tmp_path, keys):
    rng = np.random.default_rng(1)
    victim_face, attacker_face = embedding(rng), embedding(rng)
    attacker_keys = ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7)
    with running(tmp_path / "s.db") as srv:
        v, a = tenant(srv.url, "victim org"), tenant(srv.url, "attacker org")
        with connect(srv.url, keys, v["token"]) as victim, connect(srv.url, attacker_keys, a["token"]) as attacker:
            alice = victim.enroll("alice", [tp(victim, keys, victim_face)])
            # the attacker knows the victim's key id and subject id, and holds a probe under the victim's public key
            stolen = tp(victim, keys, attacker_face)
            with pytest.raises(ServerError) as exc:
                attacker.transport.add_templates(keys.key_id, alice.subject_id, [stolen])
            assert exc.value.status == 404
            with pytest.raises(ServerError) as exc:
                attacker.transport.subjects(keys.key_id)
            assert exc.value.status == 404
            with pytest.raises(ServerError) as exc:  # registering the victim's public key as its own
                attacker.transport.create_key_set("simulator", keys.params_json, dict(keys.evaluation_keys())["public"])
            assert exc.value.status == 409
            assert not victim.verify("alice", tp(victim, keys, attacker_face)).accepted
            assert victim.verify("alice", tp(victim, keys, embedding(rng, victim_face, 0.8))).accepted
            with AdminClient(srv.url, ADMIN_KEY) as admin:
                admin.revoke_api_key(v["key_id"])
            with pytest.raises(AuthError):
                victim.subjects()


def test_in_process_transport_matches_http(tmp_path, keys):
    from cryptoface.service import MatchService
    from cryptoface.store import SQLiteStore

    rng = np.random.default_rng(8)
    store = SQLiteStore(tmp_path / "local.db")
    local = Client.in_process(keys, MatchService(store), threshold=0.23)
    alice = embedding(rng)
    assert local.enroll("alice", [tp(local, keys, alice)]).name == "alice"
    with pytest.raises(SubjectExistsError):
        local.enroll("alice", [tp(local, keys, alice)])
    assert len(local.enroll("alice", [tp(local, keys, embedding(rng, alice, 0.9))], add=True).template_ids) == 2
    probe = tp(local, keys, embedding(rng, alice, 0.7))
    r = local.verify("alice", probe)
    assert r.accepted and abs(r.score - 0.7) < 0.05
    assert local.identify(probe).subject == "alice"
    actions = [row["action"] for row in local.transport.audit()]
    assert {"keyset.register", "keyset.activate", "subject.create", "template.add"} <= set(actions)
    again = Client.in_process(keys, local.transport.service, threshold=0.23)  # the same local tenant
    assert [s.name for s in again.subjects()] == ["alice"]
    local.delete_subject("alice")
    assert local.subjects() == []
    store.close()


def test_compare_scores_pairs_without_enrolling_anything(tmp_path, keys):
    """Pair scoring (the HE benchmark's 1:1 verification): a batch of pairs in one request, scores in pair order,
    the decision the client's own; nothing is stored, and another tenant cannot use the key set."""
    rng = np.random.default_rng(5)
    faces = [embedding(rng) for _ in range(3)]
    pairs = [(faces[0], embedding(rng, faces[0], 0.8)), (faces[1], faces[2]), (faces[2], embedding(rng, faces[2], 0.6))]
    with running(tmp_path / "s.db") as srv:
        token = tenant(srv.url, "acme")["token"]
        with connect(srv.url, keys, token) as c:
            c.register()
            before = srv.snapshot()
            results = c.compare_pairs([(tp(c, keys, a), tp(c, keys, b)) for a, b in pairs])
            assert [r.same for r in results] == [True, False, True]
            for r, (a, b) in zip(results, pairs, strict=True):
                assert abs(r.score - cosine_clear(a, b)) < 1e-3 and r.threshold == 0.23
            one = c.compare(tp(c, keys, faces[1]), tp(c, keys, faces[1]))
            assert one.same and abs(one.score - 1.0) < 1e-3
            counts, audit = srv.snapshot()
            assert counts == before[0] and audit == before[1]  # nothing enrolled, nothing audited
            other = tenant(srv.url, "intruder")["token"]
            with connect(srv.url, keys, other) as intruder, pytest.raises(ServerError) as e:
                intruder.compare(tp(c, keys, faces[0]), tp(c, keys, faces[0]))
            assert e.value.status == 404
        with httpx.Client(base_url=srv.url, headers={"x-api-key": token}) as http:
            p = {"ciphertext": "AAAA", "stride": 1, "replicas": 1}
            r = http.post(f"/v1/keysets/{keys.key_id}/compare", json={"pairs": [{"a": p, "b": p}] * 129})
            assert r.status_code == 422  # more pairs than one score ciphertext holds
            r = http.post(f"/v1/keysets/{keys.key_id}/compare", json={"pairs": []})
            assert r.status_code == 422
