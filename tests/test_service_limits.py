"""Limits chosen by the route (413, chunked too), heavy slots and the memory budget (503 + Retry-After), and a
probe's packing that affects only its own request — over real HTTP."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from cryptoface.match.layout import TemplateLayout
from cryptoface.service.budget import working_set
from test_service_support import ADMIN_KEY, PARAMS, Server, b64, embedding, enrol, make_keys, probe, register, scores

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def keys():
    return make_keys()


def chunked(total: int, piece: int = 256 * 1024):
    """A body sent with Transfer-Encoding: chunked (no Content-Length to refuse it by)."""
    sent = 0
    while sent < total:
        n = min(piece, total - sent)
        sent += n
        yield b"A" * n


@pytest.fixture
def server(tmp_path):
    srv = Server(tmp_path / "server.db", max_body_bytes=1 * MIB, max_key_bytes=8 * MIB)
    yield srv
    srv.stop()


def test_body_limits_come_from_the_route(server, keys):
    _, http = server.tenant("acme")
    kid = register(http, keys)
    before = server.snapshot()
    url = f"/v1/keysets/{kid}/subjects"
    big = {"subject": "keys", "probes": [{"ciphertext": b64(b"x" * (2 * MIB))}]}
    r = http.post(url, json=big)  # a subject named "keys" gets the JSON limit, not the key limit
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    r = http.post(url, content=chunked(3 * MIB), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"
    # a key upload under the key limit but over the JSON limit is read (and refused for what it is, not its size)
    r = http.put(f"/v1/keysets/{kid}/keys/rotation:1", content=b"x" * (2 * MIB))
    assert r.status_code == 409  # stored already (create-only)
    r = http.put(f"/v1/keysets/{kid}/keys/keys", content=b"x" * (2 * MIB))
    assert r.status_code == 400 and r.json()["error"] == "bad_key_kind"
    r = http.put(f"/v1/keysets/{kid}/keys/relin", content=chunked(9 * MIB))
    assert r.status_code == 413
    with server.admin() as a:
        r = a.post("/v1/admin/tenants", json={"name": "x" * (100 * 1024)})
        assert r.status_code == 413
        r = a.post("/v1/admin/tenants", content=chunked(200 * 1024), headers={"content-type": "application/json"})
        assert r.status_code == 413
    assert server.snapshot() == before
    assert http.get("/v1/health").status_code == 200  # and the server is still there


@dataclass
class StubModel:
    """Enough of a FusedModel for admission (its plan never runs in these tests)."""

    resolution: int = 64
    n_patches: int = 4
    architecture: str = "stub"


def test_heavy_requests_get_503_with_retry_after_when_the_slots_are_full(tmp_path, keys):
    srv = Server(tmp_path / "s.db", max_heavy=1, retry_after=7, model=StubModel())
    try:
        _, http = srv.tenant("acme")
        kid = register(http, keys)
        img = {"images": [probe(keys, embedding(np.random.default_rng(0)))["ciphertext"]], "resolution": 64}
        srv.service.slots.acquire()  # an inference is running
        try:
            before = srv.snapshot()
            for method, path, kw in (
                ("PUT", f"/v1/keysets/{kid}/keys/relin", {"content": b"any key"}),  # refused before it is read
                ("POST", "/v1/keysets", {"json": {"backend": "simulator", "params": {}, "keys": {"public": "AA=="}}}),
                ("POST", f"/v1/keysets/{kid}/infer", {"json": {"probe": img}}),  # heavy once the body says images
                ("POST", f"/v1/keysets/{kid}/subjects", {"json": {"subject": "a", "probes": [img]}}),
            ):
                r = http.request(method, path, **kw)
                assert r.status_code == 503 and r.headers["retry-after"] == "7", (path, r.text)
                assert r.json()["error"] == "busy"
            assert srv.snapshot() == before
            assert http.get("/v1/health").json()["status"] == "ok"
            # matching encrypted templates is not heavy: it is admitted by the memory budget alone
            t = probe(keys, embedding(np.random.default_rng(1)))
            assert enrol(http, kid, "b", [t]).status_code == 201
        finally:
            srv.service.slots.release()
    finally:
        srv.stop()


def test_memory_budget_refuses_instead_of_dying_and_evicts_idle_key_sets(tmp_path):
    srv = Server(tmp_path / "s.db", budget_baseline=0, retry_after=3)
    try:
        rng = np.random.default_rng(1)
        people = []
        for i in range(2):
            k = make_keys()
            _, http = srv.tenant(f"t{i}")
            kid = register(http, k)
            e = embedding(rng)
            assert enrol(http, kid, "x", [probe(k, e)]).status_code == 201
            people.append((k, http, kid, e))
        svc = srv.service
        cost, reading = svc._key_cost(srv.store.get_key_set(people[0][2]))
        need = working_set(PARAMS, "match") + 4 * MIB + reading  # one matching request, its body, one key set read
        svc.cache.evict(10**15)
        svc.budget.limit, svc.budget.peak = cost + need, 0  # room for one loaded key set at a time
        for _ in range(2):
            for k, http, kid, e in people:  # alternating tenants: each request evicts the other's idle key set
                r = http.post(f"/v1/keysets/{kid}/verify", json={"subject": "x", "probe": probe(k, e)})
                assert scores(k, r)[0] > 0.99
        assert svc.cache.evictions >= 3 and svc.budget.peak <= svc.budget.limit
        svc.budget.limit = cost // 2  # not even one key set fits now
        svc.cache.evict(svc.budget.limit * 100)
        k, http, kid, e = people[0]
        before = srv.snapshot()
        r = http.post(f"/v1/keysets/{kid}/verify", json={"subject": "x", "probe": probe(k, e)})
        assert r.status_code == 503 and r.headers["retry-after"] == "3" and r.json()["error"] == "busy"
        assert srv.snapshot() == before
        health = httpx.get(srv.url + "/v1/health").json()
        assert health["memory"]["refusals"] >= 1
    finally:
        srv.stop()


def test_packing_affects_only_its_own_request(tmp_path, keys, monkeypatch):
    """The finding: a probe with packing 'units' switched the server's executor for good."""
    import cryptoface.engine.parallel as parallel
    import cryptoface.engine.units as units

    @dataclass
    class Layout:
        n_cts: int = 1

    @dataclass
    class Plan:
        input_layout: Layout

    class Engine:
        def __init__(self, executor, model, model_id):
            self.executor = executor

        def infer(self, backend, handle, groups):
            (cts,) = groups
            return cts[0], TemplateLayout(1)

    monkeypatch.setattr(units, "unit_plan", lambda slots, levels: Plan(Layout()))
    monkeypatch.setattr(parallel, "PatchParallelEngine", Engine)
    srv = Server(tmp_path / "s.db", model=StubModel())
    try:
        _, http = srv.tenant("acme")
        kid = register(http, keys)
        img = probe(keys, embedding(np.random.default_rng(2)))["ciphertext"]
        r = http.post(f"/v1/keysets/{kid}/infer", json={"probe": {"images": [img], "packing": "units"}})
        assert r.status_code == 200, r.text
        assert srv.service.executor is None  # the server's own way of running inference is unchanged
        r = http.post(f"/v1/keysets/{kid}/infer", json={"probe": {"images": [img], "packing": "bogus"}})
        assert r.status_code == 422
    finally:
        srv.stop()


def test_health_answers_without_credentials_and_shows_no_data(tmp_path):
    srv = Server(tmp_path / "s.db")
    try:
        h = httpx.get(srv.url + "/v1/health").json()
        assert h["status"] == "ok" and "threshold" not in h and ADMIN_KEY not in str(h)
    finally:
        srv.stop()
