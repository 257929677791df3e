"""Patch-parallel units and the executor seam: local vs Ray (a local cluster started here), faults, key transfers.

Full-size simulator (N = 2^16, the real plans, random models). The Ray tests start ``ray.init(num_cpus=2)``
themselves and shut it down; they are skipped, with the reason, where ray is not installed.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from cryptoface.backends import create_backend
from cryptoface.engine import infer_template, plan_for
from cryptoface.engine.evaluator import pack_input
from cryptoface.engine.executor import LocalExecutor
from cryptoface.engine.parallel import PatchParallelEngine, sharded_scores
from cryptoface.engine.units import (
    encrypt_units,
    pack_units,
    unit_costs,
    unit_models,
    unit_patches,
    unit_rotation_steps,
)
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import TemplateLayout, gallery_layout, normalised_layout
from cryptoface.model import spec
from cryptoface.model.random import random_model
from cryptoface.model.reference import forward, patch_forward
from cryptoface.params import default_parameters

try:
    import ray
except ImportError:  # pragma: no cover - depends on the environment
    ray = None

needs_ray = pytest.mark.skipif(ray is None, reason="ray is not installed (pip install 'cryptoface[ray]')")

TAU = 0.23


@pytest.fixture(scope="module")
def params():
    return default_parameters(128)


@pytest.fixture(scope="module")
def backend(params):
    be = create_backend("simulator", params)
    steps = set(unit_rotation_steps(params.slots, params.levels))
    steps |= hm.rotation_steps(TemplateLayout(1, params.slots // 256), params.slots)  # 1:N packing and scores
    be.generate_keys(steps)
    return be


@pytest.fixture(scope="module")
def ray_cluster():
    if ray is None:
        pytest.skip("ray is not installed (pip install 'cryptoface[ray]')")
    if ray.is_initialized():  # pragma: no cover
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def _face(resolution: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (3, resolution, resolution))


def _ray_executor(workers: int = 2):
    from cryptoface.engine.executor import RayExecutor

    return RayExecutor(workers)


# -- the decomposition itself (no encryption) ---------------------------------------------------------------
def test_unit_partition():
    assert unit_patches(4) == [[0, 1, 2, 3]]
    assert unit_patches(9) == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert unit_patches(16) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]


@pytest.mark.parametrize("resolution", [96, 128])
def test_unit_models_cover_every_patch_once(resolution):
    """Unit u's sub-model holds the model's patches of group u in order, then all-zero padding patches whose
    head contribution is exactly 0; no bias (added once after the sum)."""
    model = random_model(resolution, 5)
    subs = unit_models(model)
    groups = unit_patches(model.n_patches)
    assert [p for g in groups for p in g] == list(range(model.n_patches))
    for sub, group in zip(subs, groups, strict=True):
        assert sub.n_patches == 4 and sub.resolution == 64 and not np.any(sub.bias)
        for j, net in enumerate(sub.patches):
            if j < len(group):
                assert net is model.patches[group[j]]
            else:
                x = np.random.default_rng(j).uniform(-1, 1, (1, 3, 32, 32))
                assert not np.any(patch_forward(net, x))


def test_net4_unit_packing_is_the_monolithic_packing(params):
    x = _face(64)
    mono = pack_input(plan_for(64, params.slots, params.levels), x)
    (unit,) = pack_units(x, params.slots, params.levels)
    assert len(unit) == len(mono)
    for a, b in zip(unit, mono, strict=True):
        assert np.array_equal(a, b)


def test_unit_keys_are_a_subset_of_every_resolutions_keys(params):
    keys = unit_rotation_steps(params.slots, params.levels)
    for r in (64, 96, 128):
        assert keys <= plan_for(r, params.slots, params.levels).rotation_keys


def test_unit_costs_report(params):
    c = unit_costs(128, params.slots, params.levels)
    assert c["units"] == 4
    for k in ("diagonals", "rotations", "ct_ct_mults"):
        assert c["units_total"][k] == 4 * c["per_unit"][k]
        assert c["ratio_units_over_monolithic"][k] == pytest.approx(c["units_total"][k] / c["monolithic"][k])


# -- local executor ----------------------------------------------------------------------------------------
def test_local_units_net4_bit_identical_to_monolithic(params, backend):
    model = random_model(64, 11)
    x = _face(64, 3)
    ex = LocalExecutor()
    engine = PatchParallelEngine(ex, model)
    keys = ex.keys("k", "simulator", params, backend=backend)
    out, layout = engine.infer(backend, keys, encrypt_units(backend, x))
    mono, mono_layout = infer_template(backend, model, [backend.encrypt(v, plan_for(64, params.slots,
                                                                                         params.levels).start_level)
                                                        for v in pack_input(plan_for(64, params.slots,
                                                                                     params.levels), x)])
    assert layout == mono_layout
    assert np.array_equal(backend.decrypt(out), backend.decrypt(mono))
    assert backend.level(out) == backend.level(mono)


# -- Ray ---------------------------------------------------------------------------------------------------
@needs_ray
def test_ray_net4_requests_bit_identical_and_keys_shipped_once(params, backend, ray_cluster):
    """2 requests on 2 actors: every result bit-identical to the local executor; the key set is put into the
    object store once and each actor loads it once (not per request); the unit weights likewise."""
    model = random_model(64, 12)
    local = LocalExecutor()
    lengine = PatchParallelEngine(local, model)
    lkeys = local.keys("k", "simulator", params, backend=backend)
    rx = _ray_executor(2)
    try:
        rengine = PatchParallelEngine(rx, model)
        for i in range(2):
            x = _face(64, 20 + i)
            cts = encrypt_units(backend, x)
            want, _ = lengine.infer(backend, lkeys, cts)
            keys = rx.keys("k", "simulator", params, backend=backend)  # what a service does per request
            got, _ = rengine.infer(backend, keys, cts)
            assert np.array_equal(backend.decrypt(got), backend.decrypt(want))
            assert rengine.last_report["resubmissions"] == 0
        stats = rx.stats()
        assert rx.key_puts == 1
        assert rx.model_puts == 1
        assert sum(s.get("units", 0) for s in stats) == 2
        assert [s.get("key_loads", 0) for s in stats] == [1, 1]  # both actors served, each loaded the keys once
        assert [s.get("model_loads", 0) for s in stats] == [1, 1]
        assert rx.resubmissions == 0
    finally:
        rx.close()


def _kill_while_running(rx, run):
    """Run ``run()`` in a thread, kill (restartable) the first actor seen busy, return run's result and the pid."""
    box: dict = {}
    t = threading.Thread(target=lambda: box.setdefault("out", run()))
    t.start()
    victim, pid = None, None
    deadline = time.monotonic() + 120
    while victim is None and time.monotonic() < deadline:
        for a in rx.actors:
            s = ray.get(a.stats.remote())
            if s["running"]:
                victim, pid = a, s["pid"]
                break
        else:
            time.sleep(0.05)
    assert victim is not None, "no actor was ever seen working"
    ray.kill(victim, no_restart=False)
    t.join(300)
    assert not t.is_alive()
    return box["out"], rx.actors.index(victim), pid


@needs_ray
def test_ray_killed_actor_during_inference(params, backend, ray_cluster):
    model = random_model(64, 13)
    x = _face(64, 4)
    cts = encrypt_units(backend, x)
    local = LocalExecutor()
    want, _ = PatchParallelEngine(local, model).infer(backend, local.keys("k", "simulator", params, backend=backend),
                                                      cts)
    rx = _ray_executor(2)
    try:
        engine = PatchParallelEngine(rx, model)
        keys = rx.keys("k", "simulator", params, backend=backend)
        (got, _), victim, old_pid = _kill_while_running(rx, lambda: engine.infer(backend, keys, cts))
        assert np.array_equal(backend.decrypt(got), backend.decrypt(want))
        assert rx.resubmissions >= 1
        assert rx.stats()[victim]["pid"] != old_pid  # Ray restarted it (empty caches)
        assert rx.key_puts == 1  # the retry reused the object-store copy of the keys
    finally:
        rx.close()


def _gallery(backend, rng, n_templates: int, level: int, probe_of: int):
    """Normalised templates packed into gallery chunks, and a replicated probe close to template ``probe_of``."""
    slots = backend.slots
    norm = normalised_layout(slots)
    gal = gallery_layout(slots)
    embs = rng.standard_normal((n_templates, spec.EMBEDDING_DIM))
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    probe = embs[probe_of] + 0.6 * rng.standard_normal(spec.EMBEDDING_DIM) / 16
    probe /= np.linalg.norm(probe)
    cts = [backend.encrypt(norm.pack(e, slots), level) for e in embs]
    chunks, counts = [], []
    for start in range(0, n_templates, gal.capacity):
        part = cts[start:start + gal.capacity]
        chunks.append(backend.serialize(hm.pack_gallery(backend, part, gal)))
        counts.append(len(part))
    rep = hm.replicate_probe(backend, backend.encrypt(norm.pack(probe, slots), level), gal)
    return chunks, counts, rep, embs @ probe


def _scores(backend, results, counts):
    gal = gallery_layout(backend.slots)
    out = []
    for data, n in zip(results, counts, strict=True):
        out.extend(backend.decrypt(backend.deserialize(data))[gal.score_slots(n)])
    return np.array(out)


@needs_ray
@pytest.mark.parametrize("mode", ["score", "decision"])
def test_ray_sharded_identify_equals_local(params, backend, ray_cluster, mode):
    rng = np.random.default_rng(8)
    chunks, counts, rep, truth = _gallery(backend, rng, 3 * 128 + 17, 12, probe_of=200)
    tau = TAU if mode == "decision" else None
    local = LocalExecutor()
    want = sharded_scores(local, backend, local.keys("k", "simulator", params, backend=backend), rep, chunks,
                          counts, tau)
    rx = _ray_executor(2)
    try:
        keys = rx.keys("k", "simulator", params, backend=backend)
        got = sharded_scores(rx, backend, keys, rep, chunks, counts, tau)
        assert rx.last_report["shards"] == 2
        assert got == want  # same bytes: the shards compute exactly what one process computes
        again = sharded_scores(rx, backend, keys, rep, chunks, counts, tau)
        assert again == want
        assert rx.chunk_puts == len(chunks)  # gallery chunks put once, reused by the second request
        assert sum(s.get("chunk_loads", 0) for s in rx.stats()) == len(chunks)
        assert rx.key_puts == 1
    finally:
        rx.close()
    values = _scores(backend, got, counts)
    if mode == "score":
        np.testing.assert_allclose(values, truth, atol=1e-9)
        assert int(np.argmax(values)) == 200
    else:  # decision-only: the client learns accept (> 0) / reject (< 0) per template, not the score
        clear = np.abs(truth - TAU) > 0.12
        assert np.array_equal(np.sign(values[clear]), np.sign(truth[clear] - TAU))
        assert values[200] > 0


@needs_ray
def test_ray_killed_actor_during_identify(params, backend, ray_cluster):
    rng = np.random.default_rng(9)
    # many small chunks (2 templates each): every shard takes a few seconds, long enough to be caught busy
    chunks, counts = [], []
    gal = gallery_layout(backend.slots)
    norm = normalised_layout(backend.slots)
    embs = rng.standard_normal((160, spec.EMBEDDING_DIM))
    embs /= np.linalg.norm(embs, axis=1, keepdims=True)
    for i in range(0, len(embs), 2):
        part = [backend.encrypt(norm.pack(e, backend.slots), 12) for e in embs[i:i + 2]]
        chunks.append(backend.serialize(hm.pack_gallery(backend, part, gal)))
        counts.append(len(part))
    probe = embs[33]
    rep = hm.replicate_probe(backend, backend.encrypt(norm.pack(probe, backend.slots), 12), gal)
    local = LocalExecutor()
    want = sharded_scores(local, backend, local.keys("k", "simulator", params, backend=backend), rep, chunks, counts,
                          TAU)
    rx = _ray_executor(2)
    try:
        keys = rx.keys("k", "simulator", params, backend=backend)
        got, victim, old_pid = _kill_while_running(
            rx, lambda: sharded_scores(rx, backend, keys, rep, chunks, counts, TAU))
        assert got == want
        assert rx.resubmissions >= 1
        assert rx.stats()[victim]["pid"] != old_pid
    finally:
        rx.close()
    values = _scores(backend, got, counts)
    assert values[33] > 0


@needs_ray
@pytest.mark.slow
def test_ray_net16_two_workers_bit_identical_to_local_and_reference(params, backend, ray_cluster):
    model = random_model(128, 14)
    x = _face(128, 5)
    cts = encrypt_units(backend, x)
    local = LocalExecutor()
    lengine = PatchParallelEngine(local, model)
    want, layout = lengine.infer(backend, local.keys("k", "simulator", params, backend=backend), cts)
    rx = _ray_executor(2)
    try:
        engine = PatchParallelEngine(rx, model)
        keys = rx.keys("k", "simulator", params, backend=backend)
        got, _ = engine.infer(backend, keys, cts)
        report = engine.last_report
        assert len(report["units"]) == 4 and {u["worker"] for u in report["units"]} == {"worker0", "worker1"}
        assert np.array_equal(backend.decrypt(got), backend.decrypt(want))
        # a second request, an actor killed while it works on it
        (again, _), _, _ = _kill_while_running(rx, lambda: engine.infer(backend, keys, cts))
        assert np.array_equal(backend.decrypt(again), backend.decrypt(want))
        assert rx.resubmissions >= 1 and rx.key_puts == 1
    finally:
        rx.close()
    err = np.max(np.abs(layout.unpack(backend.decrypt(got)) - forward(model, x)))
    assert err < 1e-9


# -- the service on Ray -------------------------------------------------------------------------------------
@needs_ray
def test_service_on_ray_same_store_and_results_and_survives_a_killed_actor(tmp_path, ray_cluster):
    """A MatchService with a Ray executor stores the same template bytes and returns the same 1:N ciphertexts
    as one without; an actor killed during an enrolment's inference loses nothing (one template stored)."""
    from cryptoface.client import Client, ClientKeys
    from cryptoface.engine import encrypt_image
    from cryptoface.service.core import MatchService
    from cryptoface.store import SQLiteStore

    params = default_parameters(64, protocol="one-round")  # image probes: the service normalises
    model = random_model(64, 21)
    keys = ClientKeys.generate("simulator", params, resolution=64)
    be = keys.backend
    faces = {"ann": _face(64, 31), "bob": _face(64, 32)}
    probes = {n: {"images": [be.serialize(c) for c in encrypt_image(be, 64, x)], "resolution": 64}
              for n, x in faces.items()}
    plain = MatchService(SQLiteStore(tmp_path / "plain.db"), model=model, model_id="m")
    rx = _ray_executor(2)
    try:
        svc = MatchService(SQLiteStore(tmp_path / "ray.db"), model=model, model_id="m", executor=rx)
        local = {}
        for name, service in (("plain", plain), ("ray", svc)):  # each service: its own local tenant, keys proven
            client = Client.in_process(keys, service, threshold=0.5)
            assert client.register()
            local[name] = client.transport.caller
        kid = keys.key_id
        for name, probe in probes.items():
            plain.create_subject(local["plain"], kid, name, [probe])
        record, _, _ = _kill_while_running(rx, lambda: svc.create_subject(local["ray"], kid, "ann", [probes["ann"]]))
        assert len(record.template_ids) == 1 and rx.resubmissions >= 1
        svc.create_subject(local["ray"], kid, "bob", [probes["bob"]])
        for name in faces:
            (a,) = plain.store.templates(kid, name)
            (b,) = svc.store.templates(kid, name)
            assert a.ciphertext == b.ciphertext
        want = plain.identify(local["plain"], kid, probes["bob"])
        got = svc.identify(local["ray"], kid, probes["bob"])
        assert got == want
        assert rx.key_puts == 1
    finally:
        rx.close()
    (s_bytes, slots, names), = got
    v = be.decrypt(be.deserialize(s_bytes))
    scores = dict(zip(names, v[slots], strict=True))
    assert scores["bob"] > 0.99 and scores["bob"] > scores["ann"]


# -- bench and projection ----------------------------------------------------------------------------------
@needs_ray
def test_bench_ray_json_and_projection(tmp_path, ray_cluster):
    """``bench --executor ray`` writes per-unit times, the per-request Ray overhead and object-store transfer
    probes; the projection script reads them (and nothing else) and projects latency and 1:N."""
    import importlib.util
    import json

    from conftest import REPO
    from cryptoface.cli import main

    out = tmp_path / "ray.json"
    assert main(["bench", "--backend", "simulator", "--resolution", "64", "--runs", "2",
                 "--executor", "ray", "--workers", "2", "--gallery", "300", "--transfer-sizes", "1000,1000000",
                 "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["units"] == 1 and len(r["runs"]) == 2 and r["rel_error"] < 1e-9
    for run in r["runs"]:
        (unit,) = run["units"]
        assert unit["compute_s"] > 0 and run["ray_overhead_s"] >= 0 and run["put_s"] >= 0
    assert [t["payload_bytes"] for t in r["ray_transfer"]] == [1000, 1000000]
    assert r["gallery"]["chunks"] == 3 and r["gallery"]["score_max_abs_error"] < 1e-9
    assert r["key_puts"] == 1 and [s["key_loads"] for s in r["worker_stats"]] == [1, 1]
    assert [k["worker"] for k in r["key_load"]] == ["worker0", "worker1"]  # preloaded, one actor after the other

    spec_ = importlib.util.spec_from_file_location("project_scaleout", REPO / "scripts" / "project_scaleout.py")
    mod = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(mod)
    proj = tmp_path / "proj.json"
    assert mod.main(["--unit-bench", str(out), "--ray-bench", str(out), "--gallery-bench", str(out),
                     "--json", str(proj)]) == 0
    p = json.loads(proj.read_text())
    assert p["inputs"]["unit_s"] == r["unit_compute_s_median"]
    rows = {row["workers"]: row for row in p["latency"]}
    assert rows[1]["Net16"] > 3.5 * rows[1]["Net4"]  # 4 units on one worker
    assert all(rows[w]["Net16/Net4"] <= 1.2 for w in range(4, 17))
    assert {g["templates"] for g in p["gallery"]["rows"]} == {10**4, 10**5, 10**6, 10**7}
