"""The refresh protocol: the client normalises the server's raw template in the clear and encrypts it afresh.

Parameters (network levels only, decision mode at the default parameters), the pure slot functions, the client's
refresh over a real HTTP server (levels of what is stored, scores against the clear cosine, decision-only mode,
both protocols side by side) and what a hostile normalised probe gets.
"""

from __future__ import annotations

import httpx
import numpy as np
import pytest

from cryptoface.client import Client, ClientKeys, HTTPTransport, ServerError, TamperingError
from cryptoface.client.transport import TemplateProbe
from cryptoface.engine.layout import TemplateLayout
from cryptoface.errors import CiphertextError, CryptoFaceError
from cryptoface.match.clear import cosine_clear, encrypt_embedding_for_tests
from cryptoface.match.layout import EMBEDDING_DIM, normalised_layout, place
from cryptoface.match.refresh import normalised, raw_embedding, refreshed_slots
from cryptoface.params import LEVELS, PROTOCOLS, default_parameters
from test_client_service import tenant
from test_service_support import LEVEL, PARAMS, b64, embedding, running


@pytest.fixture(scope="module")
def keys():
    return ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7)


def connect(url: str, keys: ClientKeys, token: str, protocol: str, sent: list | None = None) -> Client:
    hooks = {} if sent is None else {"request": [lambda r: sent.append((r.method, r.url.path, r.read()))]}
    http = httpx.Client(base_url=url, timeout=60, event_hooks=hooks)
    return Client(keys, HTTPTransport(url, api_key=token, client=http), threshold=0.23, protocol=protocol)


def raw(client: Client, keys: ClientKeys, e: np.ndarray, level: int = LEVEL) -> TemplateProbe:
    """A raw template as the engine leaves it (a stand-in: the clear embedding encrypted in the engine's layout)."""
    return client.template_probe(encrypt_embedding_for_tests(keys.backend, e, keys.layout, level))


# -- parameters ---------------------------------------------------------------------------------------
def test_refresh_parameters_carry_the_network_levels_only_and_are_128_bit():
    refresh, one_round = default_parameters(64), default_parameters(64, protocol="one-round")
    assert refresh.levels == LEVELS.trunk_levels(64) == 21  # Net4's tail is done by the client (test_clear_tail)
    assert one_round.levels == 23 + LEVELS.matching_reserve == 30
    assert default_parameters(64, mode="decision") == refresh  # the fresh probe carries the sign's levels
    assert default_parameters(64, mode="decision", protocol="one-round").levels == 39
    for p in (refresh, one_round):
        p.check_security()
    assert refresh.log_qp < one_round.log_qp
    assert LEVELS.fresh_template("score") == 2 and LEVELS.fresh_template("decision") == 10  # cosine + mask / sign
    with pytest.raises(ValueError, match="protocol"):
        default_parameters(64, protocol="two-round")
    assert set(PROTOCOLS) == {"refresh", "one-round"}


# -- slots ----------------------------------------------------------------------------------------------
def test_refreshed_slots_hold_the_unit_template_in_the_normalised_layout():
    rng = np.random.default_rng(0)
    e = rng.standard_normal(EMBEDDING_DIM) * 7
    layout = TemplateLayout(1, 8)  # replicated, the engine's default scale
    noisy = place(e, layout, 2048) + rng.normal(0, 1e-6, 2048)
    assert np.allclose(raw_embedding(noisy, layout), e, atol=1e-4)  # the scale removed, replicas averaged
    slots = refreshed_slots(noisy, layout)
    target = normalised_layout(2048)
    assert np.allclose(slots[target.slots_of(EMBEDDING_DIM)], e / np.linalg.norm(e), atol=1e-6)
    assert np.count_nonzero(slots) == EMBEDDING_DIM and abs(np.linalg.norm(slots) - 1) < 1e-9


@pytest.mark.parametrize("bad", [np.zeros(EMBEDDING_DIM), np.full(EMBEDDING_DIM, np.nan), np.ones(3)])
def test_a_template_that_is_no_face_is_refused(bad):
    with pytest.raises(CiphertextError):
        normalised(bad)


# -- the client over HTTP -------------------------------------------------------------------------------
def test_refresh_round_trip_over_http_stores_compact_templates_and_matches_the_clear_cosine(tmp_path, keys):
    rng = np.random.default_rng(1)
    people = {f"p{i}": embedding(rng) for i in range(10)}  # 10 > 8: two gallery ciphertexts
    sent: list = []
    with running(tmp_path / "s.db") as srv:
        with connect(srv.url, keys, tenant(srv.url, "acme")["token"], "refresh", sent) as c:
            for name, e in people.items():
                c.enroll(name, [raw(c, keys, e)])
            stored = srv.service.store.templates(keys.key_id)
            assert {r.level for r in stored} == {LEVELS.fresh_template("score")}  # compact: the cosine's + mask
            assert {r.stride for r in stored} == {normalised_layout(keys.backend.slots).stride}
            genuine, impostor = embedding(rng, people["p3"], 0.7), embedding(rng, people["p3"], 0.0)
            r = c.verify("p3", raw(c, keys, genuine))
            assert r.accepted and abs(r.score - cosine_clear(genuine, people["p3"])) < 1e-5  # exact normalisation
            (answer,) = c.transport.verify(keys.key_id, "p3", c.refresh(raw(c, keys, genuine)), "score")
            assert keys.backend.level(keys.backend.deserialize(answer)) == 0  # dropped to one limb before sending
            assert not c.verify("p3", raw(c, keys, impostor)).accepted
            assert c.identify(raw(c, keys, embedding(rng, people["p9"], 0.6))).subject == "p9"
            assert c.identify(raw(c, keys, embedding(rng))).subject is None
            # 1:N answers densely: the two gallery chunks' scores come back in one ciphertext
            (answer,) = c.transport.identify(keys.key_id, c.refresh(raw(c, keys, people["p4"])), "score")
            assert sorted(answer.subjects) == sorted(people) and len(set(answer.slots)) == len(people)
            assert c.compare(raw(c, keys, genuine), raw(c, keys, people["p3"])).same

            # decision-only mode at these parameters: templates enrolled decision-ready, the probe fresh at 10 levels
            with pytest.raises(ServerError, match="decision-ready"):
                c.verify("p3", raw(c, keys, genuine), mode="decision")
            c.enroll("d", [raw(c, keys, people["p5"])], decision_ready=True)
            assert c.verify("d", raw(c, keys, embedding(rng, people["p5"], 0.8)), mode="decision").accepted
            assert not c.verify("d", raw(c, keys, embedding(rng)), mode="decision").accepted
        assert not srv.service.backends_hold_secret_keys()
    # every template that reached the server was a client-normalised ciphertext
    bodies = [body for method, path, body in sent
              if method == "POST" and path.endswith(("/subjects", "/verify", "/identify", "/compare"))]
    assert bodies and all(b'"normalised":true' in body.replace(b" ", b"") for body in bodies)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_both_protocols_give_the_same_decisions(tmp_path, keys, protocol):
    rng = np.random.default_rng(2)
    alice = embedding(rng)
    with running(tmp_path / "s.db") as srv, connect(srv.url, keys, tenant(srv.url, "acme")["token"], protocol) as c:
        c.enroll("alice", [raw(c, keys, alice)])
        probe = embedding(rng, alice, 0.6)
        r = c.verify("alice", raw(c, keys, probe))
        # one-round normalises with the encrypted Chebyshev 1/sqrt: its error is larger than the refresh's
        assert r.accepted and abs(r.score - cosine_clear(probe, alice)) < 1e-3
        assert not c.verify("alice", raw(c, keys, embedding(rng))).accepted
        level = srv.service.store.templates(keys.key_id)[0].level
        assert level == (LEVELS.fresh_template("score") if protocol == "refresh" else LEVEL - LEVELS.normalise)


def test_a_probe_of_the_other_protocol_is_refused_with_a_message(tmp_path, keys):
    rng = np.random.default_rng(3)
    with running(tmp_path / "s.db") as srv:
        token = tenant(srv.url, "acme")["token"]
        with connect(srv.url, keys, token, "refresh") as fresh, connect(srv.url, keys, token, "one-round") as old:
            fresh.enroll("bob", [raw(fresh, keys, embedding(rng))])
            with pytest.raises(ServerError) as exc:
                old.verify("bob", raw(old, keys, embedding(rng)))
            assert exc.value.status == 400 and "stride" in exc.value.detail


def test_dense_scores_gather_256_chunks_per_answer_and_keep_empty_slots_zero():
    from cryptoface.backends.simulator import SimulatorBackend
    from cryptoface.match import homomorphic as hm
    from cryptoface.match.layout import gallery_layout

    be = SimulatorBackend(PARAMS)  # 2048 slots: chunks of 8, 256 per answer
    be.generate_keys(set())
    gallery = gallery_layout(be.slots)
    rng = np.random.default_rng(6)
    counts = [8] * 299 + [3]
    values = [rng.uniform(-1, 1, gallery.capacity) for _ in counts]
    # a chunk's scores as gallery_scores leaves them: score n in every slot = n (mod capacity)
    chunks = [(be.encrypt(np.tile(v, be.slots // gallery.capacity), 2), n) for v, n in zip(values, counts, strict=True)]
    answers = list(hm.dense_scores(be, chunks, gallery))
    assert len(answers) == 2 and [len(s) for _, s in answers] == [256 * 8, 43 * 8 + 3]
    got = np.concatenate([be.decrypt(ct)[slots] for ct, slots in answers])
    want = np.concatenate([v[:n] for v, n in zip(values, counts, strict=True)])
    np.testing.assert_allclose(got, want, atol=1e-6)
    last, slots = answers[1]
    rest = np.ones(be.slots, bool)
    rest[slots] = False
    assert np.all(np.abs(be.decrypt(last)[rest]) < 1e-6) and be.level(last) == 1  # one level: the mask


# -- hostile normalised probes ----------------------------------------------------------------------------
def test_hostile_normalised_probes_get_4xx_and_a_scaled_template_is_caught_by_the_client(tmp_path, keys):
    rng = np.random.default_rng(4)
    be = keys.backend
    stride = normalised_layout(be.slots).stride
    unit = embedding(rng)
    unit = unit / np.linalg.norm(unit)

    def fresh(values: np.ndarray, level: int, **kw) -> dict:
        ct = be.encrypt(place(values, normalised_layout(be.slots), be.slots), level)
        return {"ciphertext": b64(be.serialize(ct)), "stride": stride, "replicas": 1, "normalised": True, **kw}

    with running(tmp_path / "s.db") as srv:
        token = tenant(srv.url, "acme")["token"]
        with connect(srv.url, keys, token, "refresh") as c:
            c.enroll("carol", [raw(c, keys, unit * 15)])
            http = httpx.Client(base_url=srv.url, timeout=60, headers={"x-api-key": token})
            url = f"/v1/keysets/{keys.key_id}"
            cases = {
                "level 0 (no level for the cosine)": {"subject": "x", "probes": [fresh(unit, 0)]},
                "wrong stride": {"subject": "x", "probes": [fresh(unit, 1, stride=1)]},
                "replicated": {"subject": "x", "probes": [fresh(unit, 1, replicas=2)]},
                "not base64": {"subject": "x", "probes": [{**fresh(unit, 1), "ciphertext": "%%%"}]},
                "junk bytes": {"subject": "x", "probes": [{**fresh(unit, 1), "ciphertext": b64(b"junk" * 40)}]},
            }
            before = len(srv.service.store.templates(keys.key_id))
            for what, body in cases.items():
                r = http.post(f"{url}/subjects", json=body)
                assert 400 <= r.status_code < 500, (what, r.status_code, r.text)
            r = http.post(f"{url}/compare", json={"pairs": [{"a": fresh(unit, 1), "b": {
                "ciphertext": b64(be.serialize(encrypt_embedding_for_tests(be, unit, keys.layout, LEVEL))),
                "stride": 1, "replicas": 1}}]})
            assert r.status_code == 400 and "all raw or all client-normalised" in r.text
            assert len(srv.service.store.templates(keys.key_id)) == before  # nothing stored

            # someone with the tenant's API key plants a "normalised" template 1000x too long: the client's
            # cosine check reports tampering instead of accepting
            r = http.post(f"{url}/subjects", json={"subject": "victim", "probes": [fresh(unit * 1e3, 1)]})
            assert r.status_code == 201, r.text
            with pytest.raises(TamperingError):
                c.verify("victim", raw(c, keys, unit))
            http.close()


def test_a_key_set_without_the_decision_levels_says_so(tmp_path):
    from cryptoface.backends.protocol import CkksParameters

    small = ClientKeys.generate("simulator", CkksParameters(log_ring=12, levels=6), stride=1, noise=1e-7)
    with running(tmp_path / "s.db") as srv, connect(srv.url, small, tenant(srv.url, "acme")["token"], "refresh") as c:
        e = embedding(np.random.default_rng(5))
        c.enroll("dan", [raw(c, small, e, level=6)])
        with pytest.raises(CryptoFaceError, match="needs 10 levels"):
            c.verify("dan", raw(c, small, e, level=6), mode="decision")
