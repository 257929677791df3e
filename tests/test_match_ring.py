"""The matching ring: refreshed score-mode templates encrypted, stored and matched under a second, small key set.

Parameters (128-bit, a 394 KB template), grouped 1:N galleries (every slot a full score, the answers' slots), the key
home's second key set (save, load, public folder, a mismatched ring refused), the client over a real HTTP server
(where templates go, decision-ready subjects in the network's ring, one subject namespace, identify over both,
erasure, key rotation), what a probe of the wrong ring or an image sent to the ring gets, and real OpenFHE scoring
at the ring's 128-bit parameters.
"""

from __future__ import annotations

import json
import os
import stat

import httpx
import numpy as np
import pytest

from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.client import Client, ClientKeys, HTTPTransport, ServerError
from cryptoface.client.client import SubjectExistsError, UnknownSubjectError
from cryptoface.client.keys import MATCH_DIR, KeyHomeError, PublicKeys
from cryptoface.client.rotation import rotate_keys
from cryptoface.errors import CryptoFaceError, ParameterError
from cryptoface.match import homomorphic as hm
from cryptoface.match.clear import cosine_clear, encrypt_embedding_for_tests
from cryptoface.match.layout import (
    EMBEDDING_DIM,
    GalleryLayout,
    gallery_layout,
    normalised_layout,
    pack_gallery_slots,
)
from cryptoface.params import (
    LEVELS,
    MATCH_LOG_RING,
    ciphertext_bytes,
    match_parameters,
    params_to_json,
    switching_key_bytes,
)
from test_client_service import tenant
from test_service_support import LEVEL, PARAMS, b64, embedding, running


@pytest.fixture(scope="module")
def keys():
    return ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7, match_ring=True)


def connect(url: str, keys: ClientKeys, token: str) -> Client:
    return Client(keys, HTTPTransport(url, api_key=token), threshold=0.23)


def raw(client: Client, e: np.ndarray):
    """A raw template as the engine leaves it, under the network's key set (a stand-in for an inference)."""
    k = client.keys
    return client.template_probe(encrypt_embedding_for_tests(k.backend, e, k.layout, LEVEL))


def units(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.standard_normal((n, EMBEDDING_DIM))
    return t / np.linalg.norm(t, axis=1, keepdims=True)


# -- parameters -------------------------------------------------------------------------------------------
def test_the_ring_is_128_bit_and_a_template_on_it_is_under_half_a_megabyte():
    p = match_parameters()
    p.check_security()
    assert (p.log_ring, p.levels) == (MATCH_LOG_RING, LEVELS.fresh_template("score")) == (13, 2)
    assert (p.key_switch_digits, p.special_primes) == (3, 1)  # one special prime: cheap key switching
    assert ciphertext_bytes(p) == 2 * 8192 * 3 * 8 <= 500_000  # a stored template: 394 KB
    assert switching_key_bytes(p) < 2_000_000  # a rotation key: 1.6 MB (the network's: 155 MB)


# -- grouped galleries -------------------------------------------------------------------------------------
def _sim() -> SimulatorBackend:
    be = SimulatorBackend(PARAMS)  # 2048 slots: chunks of 8 templates, groups of 16 chunks
    be.generate_keys(hm.rotation_steps(normalised_layout(be.slots), be.slots))  # the keys a client makes
    return be


def test_grouped_galleries_hold_a_full_score_in_every_slot_and_name_each_template_s_slot():
    be = _sim()
    gallery = gallery_layout(be.slots)
    rng = np.random.default_rng(0)
    probe = units(rng, 1)[0]
    counts = [8] * 36 + [5]
    chunks = [units(rng, n) for n in counts]
    rep = be.encrypt(pack_gallery_slots(np.tile(probe, (gallery.capacity, 1)), gallery), 2)
    templates = [be.encrypt(pack_gallery_slots(t[None], gallery), 2) for c in chunks for t in c]
    for workers in (1, 2):
        built = list(hm.build_galleries(be, templates, gallery, True, workers))
        assert [len(g) for g in built] == [hm.GROUP_CHUNKS] * 3 and {be.level(c) for g in built for c in g} == {1}
        groups = list(zip(built, hm.gallery_counts(len(templates), gallery, True), strict=True))
        assert [sum(n) for _, n in groups] == [16 * 8, 16 * 8, 4 * 8 + 5]
        answers = list(hm.grouped_answers(be, rep, groups, gallery, workers))
        got = np.concatenate([be.decrypt(ct)[slots] for ct, slots in answers])
        np.testing.assert_allclose(got, np.concatenate([c @ probe for c in chunks]), atol=1e-6)
        assert {be.level(ct) for ct, _ in answers} == {0}  # the mask and the product: the template's 2 levels
    # the store rows: a group is 16 rows with its ids on the first; read back in either form
    ids = list(range(100, 100 + len(templates)))
    rows = hm.gallery_rows(be, built, ids, gallery, True)
    assert len(rows) == 48 and [len(part) for _, part, _ in rows[::16]] == [128, 128, 37]
    grouped, stored = hm.stored_galleries([(c, part) for c, part, _ in rows])
    assert grouped and [part for _, part in stored] == [ids[:128], ids[128:256], ids[256:]]
    chunk_rows = hm.gallery_rows(be, hm.build_galleries(be, templates, gallery, False), ids, gallery, False)
    grouped, stored = hm.stored_galleries([(c, part) for c, part, _ in chunk_rows])
    assert not grouped and len(stored) == 37 and stored[-1][1] == ids[-5:]
    # no partial sum anywhere: slot S*u + i holds the full score of template i of chunk u mod 16
    first, _ = answers[0]
    s = gallery.stride
    expect = np.array([chunks[(k // s) % 16][k % s] @ probe for k in range(be.slots)])
    np.testing.assert_allclose(be.decrypt(first), expect, atol=1e-6)


def test_grouped_galleries_need_the_ring_filling_gallery_and_at_most_16_chunks():
    be = _sim()
    with pytest.raises(ParameterError, match="ring-filling"):
        hm.grouped_gallery(be, [be.encrypt(np.zeros(be.slots), 2)], GalleryLayout(1, be.slots))
    with pytest.raises(ParameterError, match="1 to 16 chunks"):
        hm.grouped_gallery(be, [], gallery_layout(be.slots))


# -- the key home ------------------------------------------------------------------------------------------
def test_the_home_holds_both_key_sets_and_refuses_a_ring_it_does_not_name(tmp_path):
    keys = ClientKeys.generate("simulator", PARAMS, stride=1, match_ring=True)
    home, public = tmp_path / "home", tmp_path / "public"
    keys.save(home, public_out=public)
    meta = json.loads((home / "keyset.json").read_text())
    assert meta["match_key_id"] == keys.match.key_id != keys.key_id
    assert stat.S_IMODE((home / MATCH_DIR / "secret.key").stat().st_mode) == 0o600
    assert not (public / MATCH_DIR / "secret.key").exists()
    ring_public = PublicKeys.load(public / MATCH_DIR)
    assert ring_public.key_id == keys.match.key_id and ring_public.params == match_parameters()
    loaded = ClientKeys.load(home)
    assert loaded.match.key_id == keys.match.key_id and loaded.match.params == match_parameters()
    assert [k.key_id for k in loaded.key_sets()] == [keys.key_id, keys.match.key_id]
    # another home's ring moved in: the key id keyset.json names no longer matches
    other = ClientKeys.generate_match("simulator")
    other.save(tmp_path / "other")
    for name in ("keyset.json", "secret.key"):
        os.replace(tmp_path / "other" / name, home / MATCH_DIR / name)
    os.replace(tmp_path / "other" / "eval", home / MATCH_DIR / "eval.tmp")
    os.rename(home / MATCH_DIR / "eval", tmp_path / "old-eval")
    os.rename(home / MATCH_DIR / "eval.tmp", home / MATCH_DIR / "eval")
    with pytest.raises(KeyHomeError, match="not the matching key set"):
        ClientKeys.load(home)
    # replacing the home with keys that have no ring removes the old ring
    ClientKeys.generate("simulator", PARAMS, stride=1).save(home, overwrite=True)
    assert not (home / MATCH_DIR).exists() and ClientKeys.load(home).match is None


# -- the client over HTTP ----------------------------------------------------------------------------------
def test_score_templates_live_on_the_ring_and_decision_ready_ones_in_the_network_ring(tmp_path, keys):
    rng = np.random.default_rng(1)
    people = {f"p{i}": embedding(rng) for i in range(20)}
    ring = keys.match
    with running(tmp_path / "s.db") as srv, connect(srv.url, keys, tenant(srv.url, "acme")["token"]) as c:
        for name, e in people.items():
            c.enroll(name, [raw(c, e)])
        stored = srv.service.store.templates(ring.key_id)
        assert len(stored) == 20 and not srv.service.store.templates(keys.key_id)
        assert {r.level for r in stored} == {LEVELS.fresh_template("score")}
        assert {srv.service.store.get_key_set(ring.key_id).params_json} == {params_to_json(match_parameters())}

        genuine = embedding(rng, people["p3"], 0.7)
        r = c.verify("p3", raw(c, genuine))
        assert r.accepted and abs(r.score - cosine_clear(genuine, people["p3"])) < 1e-5
        assert not c.verify("p3", raw(c, embedding(rng, people["p3"], 0.0))).accepted
        assert c.identify(raw(c, embedding(rng, people["p17"], 0.6))).subject == "p17"
        (answer,) = c.transport.identify(ring.key_id, c.refresh(raw(c, people["p4"])), "score")  # 2 chunks merged
        assert sorted(answer.subjects) == sorted(people)
        assert c.compare(raw(c, genuine), raw(c, people["p3"])).same

        # decision-ready: the network's ring (the sign's levels do not fit N = 2^13), one namespace for both
        c.enroll("d", [raw(c, people["p5"])], decision_ready=True)
        assert [s.name for s in srv.service.store.subjects(keys.key_id)] == ["d"]
        assert c.verify("d", raw(c, embedding(rng, people["p5"], 0.8)), mode="decision").accepted
        assert c.verify("d", raw(c, embedding(rng, people["p5"], 0.8))).accepted  # score mode there too
        with pytest.raises(CryptoFaceError, match="--decision-ready"):
            c.verify("p3", raw(c, genuine), mode="decision")
        with pytest.raises(SubjectExistsError):
            c.enroll("d", [raw(c, people["p6"])])
        with pytest.raises(CryptoFaceError, match="cannot hold decision-ready"):
            c.enroll("p3", [raw(c, genuine)], add=True, decision_ready=True)
        # identify covers both key sets: the decision-ready subject is found from the network's ring
        found = c.identify(raw(c, embedding(rng, people["p5"], 0.9)))
        assert found.subject in ("d", "p5") and {"d", "p5", "p0"} <= set(found.scores)

        assert len(c.subjects()) == 21
        c.delete_subject("d")
        c.delete_template(c.find_subject("p0").template_ids[0])
        assert {s.name for s in c.subjects()} == set(people) - {"p0"}
        c.delete_key_set()
        assert c.transport.key_set(keys.key_id) is None and c.transport.key_set(ring.key_id) is None
        assert not srv.service.backends_hold_secret_keys()


def test_a_probe_refreshed_for_one_key_set_is_moved_to_the_other_and_forms_are_not_thrashed(tmp_path, keys):
    rng = np.random.default_rng(5)
    alice, bob = embedding(rng), embedding(rng)
    with running(tmp_path / "s.db") as srv, connect(srv.url, keys, tenant(srv.url, "acme")["token"]) as c:
        c.enroll("alice", [raw(c, alice)])  # the ring
        with pytest.raises(UnknownSubjectError, match="--decision-ready"):
            c.identify(raw(c, alice), mode="decision")
        c.enroll("bob", [raw(c, bob)], decision_ready=True)  # the network's key set
        on_ring = c.refresh(raw(c, embedding(rng, bob, 0.8)))  # what the web app holds: a ring probe
        assert c.verify("bob", on_ring).accepted  # encrypted afresh under the network's key set
        assert c.verify("bob", on_ring, mode="decision").accepted  # ... with the sign's levels
        found = c.identify(on_ring)  # both key sets hold subjects: the probe goes to each in its own ring
        assert found.subject == "bob" and set(found.scores) == {"alice", "bob"}
        # the network's key set serves both modes: score identify stores its grouped form, decision identify
        # scores chunks for that request only instead of replacing it
        rows = srv.service.store.galleries(keys.key_id, normalised_layout(keys.backend.slots).stride, "none")
        assert len(rows) == 16 and sum(1 for g in rows if not g.template_ids) == 15
        assert c.identify(raw(c, embedding(rng, bob, 0.8)), mode="decision").subject == "bob"
        again = srv.service.store.galleries(keys.key_id, normalised_layout(keys.backend.slots).stride, "none")
        assert [g.ciphertext for g in again] == [g.ciphertext for g in rows]
        erased = c.delete_subject_id(c.find_subject("bob").subject_id)
        assert erased.name == "bob" and [s.name for s in c.subjects()] == ["alice"]


def test_a_public_folder_inside_the_home_is_refused(tmp_path):
    keys = ClientKeys.generate("simulator", PARAMS, stride=1, match_ring=True)
    for inside in (tmp_path / "home" / "match", tmp_path / "home" / "pub"):
        with pytest.raises(KeyHomeError, match="outside the key home"):
            keys.save(tmp_path / "home", public_out=inside)


def test_a_probe_of_the_wrong_ring_is_refused_and_nothing_is_stored(tmp_path, keys):
    rng = np.random.default_rng(2)
    be = keys.backend  # the network's ring: 2048 slots, not the matching ring's 4096
    with running(tmp_path / "s.db") as srv:
        token = tenant(srv.url, "acme")["token"]
        with connect(srv.url, keys, token) as c:
            c.enroll("alice", [raw(c, embedding(rng))])
            wrong = c.refresh(raw(c, embedding(rng)), keys=keys)  # encrypted under the network's key set
            with httpx.Client(base_url=srv.url, timeout=60, headers={"x-api-key": token}) as http:
                before = srv.service.store.counts()
                for stride in (be.slots // EMBEDDING_DIM, keys.match.backend.slots // EMBEDDING_DIM):
                    probe = {"ciphertext": b64(wrong.ciphertext), "stride": stride, "replicas": 1, "normalised": True}
                    r = http.post(f"/v1/keysets/{keys.match.key_id}/subjects", json={"subject": "x",
                                                                                      "probes": [probe]})
                    assert r.status_code == 400, r.text
                    r = http.post(f"/v1/keysets/{keys.match.key_id}/verify",
                                  json={"subject": "alice", "probe": probe})
                    assert r.status_code == 400, r.text
                assert srv.service.store.counts() == before


def test_images_sent_to_the_ring_are_refused_before_any_inference(tmp_path, faces_dir):
    from cryptoface.model.random import random_model
    from cryptoface.params import default_parameters

    net = ClientKeys.generate("simulator", default_parameters(64), resolution=64, match_ring=True)
    with running(tmp_path / "s.db", model=random_model(64, 0), model_id="random-0") as srv:
        _, http = srv.tenant("acme")
        c = Client(net, HTTPTransport(srv.url, api_key=http.headers["x-api-key"]), threshold=0.3)
        c.register()
        probe = c.encrypt_photo(next(iter(sorted(faces_dir.glob("*.jpg")))))
        with pytest.raises(ServerError) as exc:
            c.transport.submit_infer(net.match.key_id, probe)
        assert exc.value.status == 400 and "matching key set" in exc.value.detail


def test_key_rotation_replaces_both_key_sets(tmp_path, keys):
    rng = np.random.default_rng(3)
    home = tmp_path / "home"
    ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7, match_ring=True).save(home)
    people = {"ann": embedding(rng), "bo": embedding(rng)}
    with running(tmp_path / "s.db") as srv:
        old = Client(ClientKeys.load(home), HTTPTransport(srv.url, api_key=tenant(srv.url, "acme")["token"]),
                     threshold=0.23)
        for name, e in people.items():
            old.enroll(name, [raw(old, e)])
        new, _ = rotate_keys(old, {n: [e] for n, e in people.items()},
                                    make_probe=lambda client, e: raw(client, e))
        assert new.keys.match is not None and new.keys.match.key_id != old.keys.match.key_id
        assert old.transport.key_set(old.keys.match.key_id) is None and old.transport.key_set(old.key_id) is None
        assert [r.subject for r in srv.service.store.templates(new.keys.match.key_id)] == ["ann", "bo"]
        assert new.verify("bo", raw(new, embedding(rng, people["bo"], 0.8))).accepted
        assert ClientKeys.load(home).match.key_id == new.keys.match.key_id


# -- real CKKS ---------------------------------------------------------------------------------------------
def test_grouped_scoring_on_openfhe_at_the_ring_s_128_bit_parameters():
    pytest.importorskip("openfhe")
    from cryptoface.backends import backend_class

    client = ClientKeys.generate_match("openfhe")
    server = backend_class("openfhe").from_public_keys(client.params, dict(client.evaluation_keys()))
    assert not server.has_secret_key
    be = client.backend
    gallery = gallery_layout(be.slots)
    rng = np.random.default_rng(4)
    probe = units(rng, 1)[0]
    templates = units(rng, 300)  # two groups: 256 + 44 templates
    fresh = [be.serialize(be.encrypt(pack_gallery_slots(t[None], gallery), 2)) for t in templates]
    assert len(fresh[0]) <= 500_000  # a stored template
    groups = list(zip(hm.build_galleries(server, fresh, gallery, True, workers=2),
                      hm.gallery_counts(len(fresh), gallery, True), strict=True))
    rep = hm.replicate_probe(server, server.deserialize(be.serialize(
        be.encrypt(pack_gallery_slots(probe[None], gallery), 2))), gallery)
    answers = list(hm.grouped_answers(server, rep, groups, gallery, workers=2))
    got = np.concatenate([be.decrypt(be.deserialize(server.serialize(hm.lowest_level(server, a))))[s]
                          for a, s in answers])
    np.testing.assert_allclose(got, templates @ probe, atol=1e-5)
