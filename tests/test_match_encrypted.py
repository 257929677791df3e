"""Encrypted matching against its clear reference: normalisation, 1:1 cosine, 1:N gallery, decision, levels."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.backends import available_backends, create_backend
from cryptoface.backends.protocol import CkksParameters
from cryptoface.backends.simulator import SimulatorBackend
from cryptoface.match import homomorphic as hm
from cryptoface.match import poly
from cryptoface.match.clear import cosine_clear, encrypt_embedding_for_tests, normalise_clear
from cryptoface.match.layout import GalleryLayout, TemplateLayout, gallery_layout, normalised_layout
from cryptoface.params import LEVELS

TAU = 0.23


def embedding(rng: np.random.Generator, norm_sq: float | None = None) -> np.ndarray:
    """A random 256-d 'raw template' whose squared norm is in the training range (82.4..576.8)."""
    e = rng.standard_normal(256)
    n2 = rng.uniform(82.4, 576.8) if norm_sq is None else norm_sq
    return e * np.sqrt(n2) / np.linalg.norm(e)


def correlated(rng: np.random.Generator, base: np.ndarray, cos: float) -> np.ndarray:
    """An embedding with cosine ~``cos`` to ``base`` and a random in-range norm."""
    u = base / np.linalg.norm(base)
    v = rng.standard_normal(256)
    v -= (v @ u) * u
    v /= np.linalg.norm(v)
    d = cos * u + np.sqrt(1 - cos**2) * v
    return d * np.sqrt(rng.uniform(82.4, 576.8))


def sim(log_ring: int = 13, stride: int = 1, noise: float = 1e-7, replicas: int = 1) -> SimulatorBackend:
    be = SimulatorBackend(CkksParameters(log_ring=log_ring, levels=24), noise=noise, seed=1)
    be.generate_keys(hm.rotation_steps(TemplateLayout(stride, replicas), be.slots))
    return be


def test_level_budget_equals_poly_depths():
    """The budget's matching rows are the depths of match.poly's degrees (the budget cannot import poly)."""
    assert LEVELS.normalise == 1 + poly.chebyshev_depth(poly.INV_SQRT_DEGREE) + 1 == 6
    assert LEVELS.score == 1  # one ct x ct product, no mask
    assert LEVELS.decision == poly.sign_depth(poly.SIGN_STAGES) == 9
    assert LEVELS.matching_reserve == 7 and LEVELS.match == 16


@pytest.mark.parametrize(("log_ring", "stride", "replicas"),
                         [(13, 1, 1), (13, 1, 16), (13, 8, 1), (16, 1, 128), (16, 128, 1), (16, 32, 1)])
def test_normalise_and_cosine_match_clear(log_ring, stride, replicas):
    rng = np.random.default_rng(stride)
    be = sim(log_ring, stride, replicas=replicas)
    lay = TemplateLayout(stride, replicas)
    out = normalised_layout(be.slots)
    start = 20
    for norm_sq in (82.4, 289.6, 576.8):
        a = embedding(rng, norm_sq)
        b = correlated(rng, a, rng.uniform(-0.3, 0.9))
        ta = hm.normalise(be, encrypt_embedding_for_tests(be, a, lay, start), lay)
        tb = hm.normalise(be, encrypt_embedding_for_tests(be, b, lay, start), lay)
        assert be.level(ta) == start - LEVELS.normalise
        got = be.decrypt(ta)
        np.testing.assert_allclose(out.unpack(got), normalise_clear(a), atol=1e-5)
        assert np.abs(np.delete(got, out.all_slots().ravel())).max() < 5e-5  # zeros (up to noise) elsewhere
        s = hm.cosine(be, ta, tb, lay)
        assert be.level(s) == start - LEVELS.normalise - LEVELS.score
        v = be.decrypt(s).reshape(-1, out.stride)
        assert abs(v[0, 0] - cosine_clear(a, b)) < 1e-3
        assert np.abs(v[:, 0] - v[0, 0]).max() < 5e-5  # the score, replicated, and nothing else (up to noise)
        assert np.abs(v[:, 1:]).max() < 5e-5


def test_normalise_unscaled_template_costs_one_more_level():
    rng = np.random.default_rng(11)
    be = sim(13, 1)
    lay = TemplateLayout(1, scale=1.0)
    assert hm.normalise_levels(lay) == LEVELS.normalise + 1
    a = embedding(rng)
    ta = hm.normalise(be, encrypt_embedding_for_tests(be, a, lay, 20), lay)
    assert be.level(ta) == 20 - LEVELS.normalise - 1
    np.testing.assert_allclose(normalised_layout(be.slots).unpack(be.decrypt(ta)), normalise_clear(a), atol=1e-5)


def test_gallery_scores_match_clear_over_two_chunks():
    rng = np.random.default_rng(7)
    be = sim(12, 2)  # 2048 slots: 8 templates per gallery ciphertext
    lay = TemplateLayout(2)
    gal = gallery_layout(be.slots)
    assert gal.capacity == 8
    embs = [embedding(rng) for _ in range(11)]
    probe = correlated(rng, embs[9], 0.7)
    norm = [hm.normalise(be, encrypt_embedding_for_tests(be, e, lay, 12), lay) for e in embs]
    p = hm.replicate_probe(be, hm.normalise(be, encrypt_embedding_for_tests(be, probe, lay, 12), lay), gal)
    got = []
    for start in range(0, len(norm), gal.capacity):
        part = norm[start : start + gal.capacity]
        s = hm.gallery_scores(be, p, hm.pack_gallery(be, part, gal), gal, len(part))
        assert be.level(s) == 12 - LEVELS.normalise - LEVELS.score
        v = be.decrypt(s)
        got.extend(v[gal.score_slots(len(part))])
        # every slot holds a score (slot s: template s mod 8), empty positions are zero: nothing else revealed
        rows = v.reshape(-1, gal.capacity)
        assert np.abs(rows - rows[0]).max() < 1e-5
        assert len(part) == gal.capacity or np.abs(rows[:, len(part):]).max() < 1e-5
    want = [cosine_clear(probe, e) for e in embs]
    np.testing.assert_allclose(got, want, atol=1e-3)
    assert int(np.argmax(got)) == 9


def test_gallery_capacity_is_128_at_n16_for_every_stride():
    for stride in (1, 2, 8, 64, 128):
        gal = GalleryLayout(stride, 1 << 15)
        assert gal.capacity == 128
        assert len(set(gal.score_slots().tolist())) == 128


def test_decision_correct_outside_band():
    rng = np.random.default_rng(3)
    be = sim(13, 1)
    lay = TemplateLayout(1)
    band = poly.sign_band(TAU)
    assert band < 0.12
    a = embedding(rng)
    for cos in (-0.5, 0.0, TAU - band - 0.01, TAU + band + 0.01, 0.6, 0.95):
        b = correlated(rng, a, cos)
        ta = hm.normalise(be, encrypt_embedding_for_tests(be, a, lay, 22), lay)
        tb = hm.normalise(be, encrypt_embedding_for_tests(be, b, lay, 22), lay)
        d = hm.decision(be, hm.cosine(be, ta, tb, lay), TAU)
        assert be.level(d) == 22 - LEVELS.match
        value = be.decrypt(d)[0]
        truth = np.sign(cosine_clear(a, b) - TAU)
        assert abs(value - truth) < 2e-2, (cos, value)


def test_rotation_steps_are_signed_powers_of_two():
    slots = 1 << 15
    for lay in (TemplateLayout(1), TemplateLayout(4), TemplateLayout(128), TemplateLayout(1, 128)):
        steps = hm.rotation_steps(lay, slots)
        assert len(steps) <= 32
        for k in steps:
            c = abs(((k + slots // 2) % slots) - slots // 2)
            assert c & (c - 1) == 0, k


def test_sign_polynomial_properties():
    u = np.linspace(-1, 1, 20001)
    f = poly.sign_clear(u, TAU)
    assert np.all(np.sign(f[np.abs(u - TAU) > 1e-3]) == np.sign(u - TAU)[np.abs(u - TAU) > 1e-3])
    assert np.abs(f).max() <= 1 + 1e-9  # bounded: the value never leaks a magnitude beyond the bit
    band = poly.sign_band(TAU)
    outside = np.abs(u - TAU) >= band
    assert np.max(np.abs(f[outside] - np.sign(u - TAU)[outside])) <= poly.SIGN_TOLERANCE


def test_inverse_sqrt_table():
    rows = {d: (depth, err) for d, depth, err in poly.inverse_sqrt_table((7, 15, 31))}
    assert rows[15][0] == 4 and rows[15][1] < 1e-4
    assert rows[7][1] > rows[15][1] > rows[31][1]


@pytest.mark.slow
@pytest.mark.skipif("desilofhe" not in available_backends(), reason="desilofhe is not installed")
def test_desilo_cosine_matches_clear():
    be = create_backend("desilofhe", CkksParameters(log_ring=16, levels=24))
    lay = TemplateLayout(1)
    be.generate_keys(hm.rotation_steps(lay, be.slots))
    rng = np.random.default_rng(5)
    a = embedding(rng)
    b = correlated(rng, a, 0.5)
    ta = hm.normalise(be, encrypt_embedding_for_tests(be, a, lay, 9), lay)
    tb = hm.normalise(be, encrypt_embedding_for_tests(be, b, lay, 9), lay)
    v = be.decrypt(hm.cosine(be, ta, tb, lay))
    assert abs(v[0] - cosine_clear(a, b)) < 1e-3


def test_engine_reserve_is_the_matching_budget():
    from cryptoface.engine.template import TEMPLATE_SCALE
    from cryptoface.params import default_parameters

    # the engine's output scale is exactly the one that makes normalisation take LEVELS.normalise
    assert hm.normalise_levels(TemplateLayout(1, 128, TEMPLATE_SCALE)) == LEVELS.normalise
    one_round = default_parameters(64, protocol="one-round")
    assert one_round.levels - LEVELS.network_levels(64) == LEVELS.matching_reserve
    assert default_parameters(64, mode="decision", protocol="one-round").levels - one_round.levels == LEVELS.decision


def test_normalisation_leaves_no_reference_cycle_holding_ciphertexts():
    """Ciphertexts are large native objects the garbage collector does not weigh: a cycle that holds them (as a
    recursive closure over the rotations did) grew an OpenFHE server by ~40 MB per normalisation."""
    import gc

    rng = np.random.default_rng(3)
    lay = TemplateLayout(1, 16)
    be = sim(13, 1, replicas=16)
    ct = encrypt_embedding_for_tests(be, embedding(rng), lay, 20)
    gc.collect()
    gc.disable()
    try:
        out = hm.normalise(be, ct, lay)
        unreachable = gc.collect()
    finally:
        gc.enable()
    assert be.level(out) == 20 - LEVELS.normalise
    assert unreachable == 0
