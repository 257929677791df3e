"""The matching server over real HTTP (uvicorn on 127.0.0.1 in a thread) with simulator keys."""

from __future__ import annotations

import ast
import base64
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

import cryptoface.service as service_pkg
from cryptoface.backends.protocol import CkksParameters
from cryptoface.client import Client, ClientKeys, HTTPTransport, ImageProbe, ServerError, TamperingError
from cryptoface.match.clear import cosine_clear, encrypt_embedding_for_tests
from cryptoface.service import MatchService, create_app
from cryptoface.store import SQLiteStore

PARAMS = CkksParameters(log_ring=12, levels=24)  # 2048 slots: 8 templates per gallery ciphertext
LEVEL = 21  # a stand-in for the engine's output level (leaves room for decision mode)


def embedding(rng, like=None, cos=0.8):
    if like is None:
        e = rng.standard_normal(256)
    else:
        u = like / np.linalg.norm(like)
        v = rng.standard_normal(256)
        v -= (v @ u) * u
        e = cos * u + np.sqrt(1 - cos**2) * v / np.linalg.norm(v)
    return e * np.sqrt(rng.uniform(100, 550)) / np.linalg.norm(e)


class Server:
    def __init__(self, db: Path, **kw):
        self.store = SQLiteStore(db)
        self.app = create_app(self.store, **kw)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)
        self.store.close()


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server.db", max_body_bytes=4 * 1024 * 1024)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def keys():
    return ClientKeys.generate("simulator", PARAMS, stride=1, noise=1e-7)


def enc(keys, e, level=LEVEL):
    return encrypt_embedding_for_tests(keys.backend, e, keys.layout, level)


def CryptoFaceClient(url, keys):  # reads like the class it builds
    return Client(keys, HTTPTransport(url), threshold=0.23)


def wire(probe):
    """A TemplateProbe as the JSON body carries it."""
    return {"ciphertext": base64.b64encode(probe.ciphertext).decode(), "stride": probe.stride,
            "replicas": probe.replicas}


def test_round_trip_and_restart(tmp_path, keys):
    rng = np.random.default_rng(0)
    srv = Server(tmp_path / "server.db")
    people = {f"p{i}": embedding(rng) for i in range(10)}  # 10 > 8: two gallery ciphertexts
    with CryptoFaceClient(srv.url, keys) as client:
        assert client.register() is True
        assert client.register() is False  # already there: nothing uploaded again
        for name, e in people.items():
            client.enroll(name, [client.template_probe(enc(keys, e))])
        assert client.subjects() == sorted(people)
        genuine = embedding(rng, people["p3"], 0.7)
        impostor = embedding(rng, people["p3"], 0.0)
        r = client.verify("p3", client.template_probe(enc(keys, genuine)))
        assert r.accepted and abs(r.score - cosine_clear(genuine, people["p3"])) < 1e-3
        r = client.verify("p3", client.template_probe(enc(keys, impostor)))
        assert not r.accepted and abs(r.score - cosine_clear(impostor, people["p3"])) < 1e-3
        d = client.verify("p3", client.template_probe(enc(keys, genuine)), mode="decision")
        assert d.accepted and d.score is None and abs(d.values[0] - 1) < 0.02
        ident = client.identify(client.template_probe(enc(keys, embedding(rng, people["p9"], 0.6))))
        assert ident.subject == "p9"
        for name, e in people.items():
            want = cosine_clear(e, embedding(np.random.default_rng(1), people["p9"], 0.6))
            assert np.isfinite(ident.scores[name]) and want is not None
        unknown = client.identify(client.template_probe(enc(keys, embedding(rng))))
        assert unknown.subject is None
    assert not srv.app.state.service.backends_hold_secret_keys()
    srv.stop()

    srv = Server(tmp_path / "server.db")  # restart: every committed subject is served
    with CryptoFaceClient(srv.url, keys) as client:
        assert client.subjects() == sorted(people)
        r = client.verify("p5", client.template_probe(enc(keys, embedding(rng, people["p5"], 0.8))))
        assert r.accepted
    srv.stop()


def _counts(srv):
    return srv.store.counts()


def test_bad_inputs_give_4xx_and_leave_store_unchanged(server, keys):
    rng = np.random.default_rng(1)
    http = httpx.Client(base_url=server.url, timeout=60)
    client = CryptoFaceClient(server.url, keys)
    client.register()
    client.enroll("alice", [client.template_probe(enc(keys, embedding(rng)))])
    before = _counts(server)
    good = wire(client.template_probe(enc(keys, embedding(rng))))
    url = f"/v1/keysets/{keys.key_id}/subjects/bob/templates"

    def post(path, body):
        return http.post(path, json=body)

    cases = {
        "unknown key id": (f"/v1/keysets/{'0' * 64}/subjects/bob/templates", {"probes": [good]}, 404),
        "truncated ciphertext": (url, {"probes": [{**good, "ciphertext": good["ciphertext"][:400]}]}, 400),
        "not base64": (url, {"probes": [{**good, "ciphertext": "!!!"}]}, 400),
        "bad stride": (url, {"probes": [{**good, "stride": 3}]}, 400),
        "too few levels": (url, {"probes": [wire(client.template_probe(enc(keys, embedding(rng), level=4)))]}, 400),
        "images without model": (url, {"probes": [{"images": [good["ciphertext"]], "resolution": 64}]}, 501),
        "unknown field": (url, {"probes": [good], "secret_key": "x"}, 422),
        "unknown subject": (f"/v1/keysets/{keys.key_id}/verify", {"subject": "ghost", "probe": good}, 404),
    }
    other = ClientKeys.generate("simulator", PARAMS, stride=1)
    other_probe = CryptoFaceClient(server.url, other).template_probe(enc(other, embedding(rng)))
    foreign = wire(other_probe)
    cases["foreign ciphertext"] = (url, {"probes": [foreign]}, 400)
    wrong = ClientKeys.generate("simulator", CkksParameters(log_ring=13, levels=24), stride=1)
    wrong_probe = wire(CryptoFaceClient(server.url, wrong).template_probe(enc(wrong, embedding(rng))))
    cases["wrong parameters"] = (url, {"probes": [wrong_probe]}, 400)
    for name, (path, body, status) in cases.items():
        r = post(path, body)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json().get("detail"), name
        assert _counts(server) == before, name
    big = {"probes": [{"ciphertext": base64.b64encode(b"x" * (5 * 1024 * 1024)).decode()}]}
    r = post(url, big)
    assert r.status_code == 413
    assert _counts(server) == before
    r = http.post(
        "/v1/keysets",
        json={"backend": "simulator", "params": PARAMS.__dict__ | {"extra": None}, "keys": {"public": "AA=="}},
    )
    assert r.status_code == 422
    with pytest.raises(ServerError) as err:  # a key set never registered: nothing to match against
        CryptoFaceClient(server.url, other).verify("alice", other_probe)
    assert err.value.status == 404 and err.value.code == "unknown_key_set"


def test_secret_keys_are_refused_and_never_held(server, keys):
    http = httpx.Client(base_url=server.url, timeout=60)
    pub = {k: base64.b64encode(v).decode() for k, v in keys.evaluation_keys()}
    params = {
        k: getattr(PARAMS, k)
        for k in ("log_ring", "levels", "scale_bits", "first_mod_bits", "special_mod_bits", "key_switch_digits")
    }
    for kind in ("secret", "secret_key", "sk"):
        r = http.post("/v1/keysets", json={"backend": "simulator", "params": params, "keys": {**pub, kind: "AAAA"}})
        assert r.status_code == 400, r.text
    assert server.store.counts()["key_sets"] == 0
    r = http.post("/v1/keysets", json={"backend": "simulator", "params": params, "keys": pub})
    assert r.status_code == 200
    r = http.put(f"/v1/keysets/{keys.key_id}/keys/secret", content=b"sk")
    assert r.status_code == 400
    client = CryptoFaceClient(server.url, keys)
    client.enroll("a", [client.template_probe(enc(keys, embedding(np.random.default_rng(2))))])
    assert not server.app.state.service.backends_hold_secret_keys()
    # the server package never generates or loads a secret key
    for path in Path(service_pkg.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        assert not names & {"generate_keys", "generate", "deserialize_secret_key", "read_secret_key", "ClientKeys"}
        assert "cryptoface.client" not in path.read_text()


def test_concurrent_enrolments(server, keys):
    rng = np.random.default_rng(3)
    embs = {f"s{i}": embedding(rng) for i in range(12)}
    CryptoFaceClient(server.url, keys).register()
    probes = {n: CryptoFaceClient(server.url, keys).template_probe(enc(keys, e)) for n, e in embs.items()}

    def enrol(name):
        with CryptoFaceClient(server.url, keys) as c:
            return c.enroll(name, [probes[name]])

    with ThreadPoolExecutor(6) as pool:
        ids = list(pool.map(enrol, embs))
    assert len({i for x in ids for i in x}) == 12
    with CryptoFaceClient(server.url, keys) as c:
        assert c.subjects() == sorted(embs)
        assert c.identify(c.template_probe(enc(keys, embedding(rng, embs["s7"], 0.8)))).subject == "s7"


def test_openapi_lists_routes(server):
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/v1/keysets", "/v1/keysets/{key_id}/verify", "/v1/keysets/{key_id}/identify"} <= set(spec["paths"])


def test_failed_enrolment_leaves_no_key_set(server, keys):
    # the server has no model, so an image probe fails with 501 after the keys were uploaded
    client = CryptoFaceClient(server.url, keys)
    probe = ImageProbe((keys.backend.serialize(enc(keys, embedding(np.random.default_rng(4)))),), 64)
    with pytest.raises(ServerError) as err:
        client.enroll("alice", [probe])
    assert err.value.status == 501
    assert server.store.counts()["key_sets"] == 0


def test_a_key_set_with_subjects_cannot_be_withdrawn(server, keys):
    client = CryptoFaceClient(server.url, keys)
    client.enroll("alice", [client.template_probe(enc(keys, embedding(np.random.default_rng(5))))])
    with pytest.raises(ServerError) as err:
        client.transport.delete_key_set(keys.key_id)
    assert err.value.status == 409
    assert client.subjects() == ["alice"]


def test_out_of_range_scores_are_reported_as_tampering(server, keys):
    # a template far outside the normalisation's fitted range (planted through the public key) scores ~1e12
    rng = np.random.default_rng(6)
    client = CryptoFaceClient(server.url, keys)
    victim = embedding(rng)
    client.enroll("victim", [client.template_probe(enc(keys, victim * 1e3))])
    with pytest.raises(TamperingError):
        client.verify("victim", client.template_probe(enc(keys, embedding(rng, victim, 0.1))))
    with pytest.raises(TamperingError):
        client.identify(client.template_probe(enc(keys, embedding(rng, victim, 0.1))))


def test_subject_names_travel_escaped(server, keys):
    client = CryptoFaceClient(server.url, keys)
    client.enroll("%41lice", [client.template_probe(enc(keys, embedding(np.random.default_rng(7))))])
    assert client.subjects() == ["%41lice"]


def test_in_process_transport_matches_http(tmp_path, keys):
    rng = np.random.default_rng(8)
    store = SQLiteStore(tmp_path / "local.db")
    local = Client.in_process(keys, MatchService(store), threshold=0.23)
    alice = embedding(rng)
    local.enroll("alice", [local.template_probe(enc(keys, alice))])
    probe = local.template_probe(enc(keys, embedding(rng, alice, 0.7)))
    r = local.verify("alice", probe)
    assert r.accepted and abs(r.score - 0.7) < 0.05
    assert local.identify(probe).subject == "alice"
    store.close()
