"""Encrypted pair scores (cryptoface.match.pairs) on the simulator against the clear cosine of the embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends import available_backends, backend_class, create_backend
from cryptoface.backends.protocol import CkksParameters
from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.errors import CiphertextError, ParameterError
from cryptoface.match import homomorphic as hm
from cryptoface.match.clear import cosine_clear, encrypt_embedding_for_tests, synthetic_embedding
from cryptoface.match.layout import TemplateLayout
from cryptoface.match.pairs import (
    batch_capacity,
    compare_templates,
    pair_levels,
    score_pairs,
    score_slots,
    unpack_scores,
)
from cryptoface.params import LEVELS

TOL = 1e-3  # as the matching tests: the 1/sqrt fit's error on the training norm range, noise included


def sim(log_ring: int, layout: TemplateLayout, noise: float = 1e-7) -> SimulatorBackend:
    be = SimulatorBackend(CkksParameters(log_ring=log_ring, levels=24), noise=noise, seed=3)
    be.generate_keys(hm.rotation_steps(layout, be.slots))
    return be


def engine_layout(slots: int) -> TemplateLayout:
    """The engine's template layout: element j at every slot = j (mod 256)."""
    return TemplateLayout(1, slots // 256)


def pairs_of(rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(n):
        a = synthetic_embedding(rng)
        out.append((a, synthetic_embedding(rng, a, float(rng.uniform(-0.4, 0.95)))))
    return out


@pytest.mark.parametrize(("log_ring", "replicated"), [(13, True), (13, False), (16, True)])
def test_compare_templates_matches_clear_cosine(log_ring: int, replicated: bool) -> None:
    layout = TemplateLayout(1, (1 << (log_ring - 1)) // 256) if replicated else TemplateLayout(4)
    be = sim(log_ring, layout)
    start = LEVELS.matching_reserve  # what the engine leaves on its template
    for a, b in pairs_of(np.random.default_rng(log_ring), 3):
        ta = encrypt_embedding_for_tests(be, a, layout, start)
        tb = encrypt_embedding_for_tests(be, b, layout, start)
        s = compare_templates(be, ta, tb, layout)
        assert be.level(s) == start - pair_levels(layout) == 0
        v = be.decrypt(s).reshape(-1, be.slots // 256)
        assert abs(v[0, 0] - cosine_clear(a, b)) < TOL
        assert np.abs(v[:, 1:]).max() < 5e-5  # only the score, replicated; zeros elsewhere


def test_score_pairs_packs_batches_in_order() -> None:
    be = sim(12, engine_layout(2048))
    layout = engine_layout(be.slots)
    cap = batch_capacity(be.slots)
    assert cap == 8 and batch_capacity(1 << 15) == 128
    pairs = pairs_of(np.random.default_rng(5), 11)
    cts = ((encrypt_embedding_for_tests(be, a, layout, 9), encrypt_embedding_for_tests(be, b, layout, 9))
           for a, b in pairs)
    batches = list(score_pairs(be, cts, layout))
    assert [(p.first, p.count) for p in batches] == [(0, 8), (8, 3)]
    got = np.concatenate([unpack_scores(be.decrypt(p.ciphertext), p.count) for p in batches])
    np.testing.assert_allclose(got, [cosine_clear(a, b) for a, b in pairs], atol=TOL)
    assert all(be.level(p.ciphertext) == 9 - pair_levels(layout) for p in batches)
    np.testing.assert_array_equal(score_slots(be.slots, 3), [0, 1, 2])


def test_score_pairs_capacity_one_sends_each_score_alone() -> None:
    be = sim(12, engine_layout(2048))
    layout = engine_layout(be.slots)
    pairs = pairs_of(np.random.default_rng(6), 3)
    cts = [(encrypt_embedding_for_tests(be, a, layout, 8), encrypt_embedding_for_tests(be, b, layout, 8))
           for a, b in pairs]
    batches = list(score_pairs(be, cts, layout, capacity=1))
    assert [(p.first, p.count) for p in batches] == [(0, 1), (1, 1), (2, 1)]
    for p, (a, b) in zip(batches, pairs, strict=True):
        assert abs(unpack_scores(be.decrypt(p.ciphertext), 1)[0] - cosine_clear(a, b)) < TOL
    with pytest.raises(ParameterError):
        list(score_pairs(be, cts, layout, capacity=9))
    with pytest.raises(ParameterError):
        score_slots(be.slots, 0)


def test_too_few_levels_is_refused_before_computing() -> None:
    layout = engine_layout(4096)
    be = sim(13, layout)
    rng = np.random.default_rng(8)
    a, b = pairs_of(rng, 1)[0]
    low = encrypt_embedding_for_tests(be, a, layout, pair_levels(layout) - 1)
    ok = encrypt_embedding_for_tests(be, b, layout, pair_levels(layout))
    before = sum(be.counters.values())
    with pytest.raises(CiphertextError, match="first template is at level 6"):
        compare_templates(be, low, ok, layout)
    with pytest.raises(CiphertextError, match="second template"):
        compare_templates(be, ok, low, layout)
    assert sum(be.counters.values()) == before  # nothing evaluated


def test_engine_templates_of_two_faces_score_like_the_clear_model(faces_dir) -> None:
    """Two photos through the encrypted engine (as the service runs it) and compare_templates: the clear cosine."""
    from cryptoface.assets import default_model_path
    from cryptoface.engine import encrypt_image, infer_template, rotation_steps_for
    from cryptoface.face import preprocess
    from cryptoface.model.file import load_model
    from cryptoface.model.reference import forward
    from cryptoface.params import default_parameters

    model = load_model(default_model_path())
    be = SimulatorBackend(default_parameters(model.resolution, protocol="one-round"))  # the server normalises
    layout = engine_layout(be.slots)
    be.generate_keys(set(rotation_steps_for(model.resolution, be.slots, be.params.levels))
                     | set(hm.rotation_steps(layout, be.slots)))
    xs = [preprocess(faces_dir / name, model.resolution) for name in ("obama3.jpg", "obama4.jpg", "chirac1.jpg")]
    templates = []
    for x in xs:
        ct, got_layout = infer_template(be, model, encrypt_image(be, model.resolution, x), workers=1)
        assert got_layout == layout
        templates.append(ct)
    want = [cosine_clear(forward(model, xs[0]), forward(model, xs[i])) for i in (1, 2)]
    batches = list(score_pairs(be, [(templates[0], templates[1]), (templates[0], templates[2])], got_layout))
    got = unpack_scores(be.decrypt(batches[0].ciphertext), 2)
    np.testing.assert_allclose(got, want, atol=TOL)
    assert got[0] > got[1]  # Obama matches Obama better than Chirac


@pytest.mark.skipif("openfhe" not in available_backends(), reason="openfhe is not installed in this venv")
def test_openfhe_pair_scores_on_a_public_key_backend() -> None:
    """OpenFHE (test-only N = 2^14, matching levels only): the server side holds public keys alone, scores two
    pairs into one packed ciphertext, and the client's decryption gives the clear cosines."""
    from cryptoface.params import secure_parameters

    client = create_backend("openfhe", secure_parameters(LEVELS.matching_reserve, log_ring=14))
    layout = engine_layout(client.slots)
    client.generate_keys(sorted(hm.rotation_steps(layout, client.slots)))
    server = backend_class("openfhe").from_public_keys(client.params, client.export_evaluation_keys())
    assert not server.has_secret_key
    pairs = pairs_of(np.random.default_rng(9), 2)
    start = client.params.levels
    cts = [tuple(server.deserialize(client.serialize(encrypt_embedding_for_tests(client, e, layout, start)))
                 for e in pair) for pair in pairs]
    (batch,) = score_pairs(server, cts, layout)
    got = unpack_scores(client.decrypt(client.deserialize(server.serialize(batch.ciphertext))), batch.count)
    np.testing.assert_allclose(got, [cosine_clear(a, b) for a, b in pairs], atol=TOL)
