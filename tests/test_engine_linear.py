"""Linear layers as generalised diagonals (pure numpy, no backend) and the BSGS planner."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.engine import layout as lay
from cryptoface.engine.linear import (
    BsgsSplit,
    ConvTerm,
    CostModel,
    Diagonals,
    PoolHeadTerm,
    choose_split,
    compose_tree,
    conv_diagonals,
    count_split,
    naf,
    pool_anchor_steps,
    pool_head_diagonals,
    pool_head_replicated_diagonals,
    template_reduce_steps,
)
from cryptoface.engine.plan import build_plan
from cryptoface.model.reference import conv2d
from cryptoface.params import LEVELS

SLOTS = 1 << 15


def rot(v: np.ndarray, k: int) -> np.ndarray:
    return np.roll(v, -k)


def apply_diagonals(diag: Diagonals, ins: list[np.ndarray], split: BsgsSplit | None = None) -> np.ndarray:
    """sum_k rot(in_k, d_k) * w_k, directly or through the BSGS identity with pre-rotated weights."""
    out = np.zeros(SLOTS)
    if split is None:
        for k in range(len(diag)):
            out += rot(ins[diag.in_ct[k]], int(diag.offset[k])) * diag.vector(k, SLOTS)
        return out
    b, g = split.split(diag.offset, SLOTS)
    for gg in np.unique(g):
        inner = np.zeros(SLOTS)
        for k in np.nonzero(g == gg)[0]:
            inner += rot(ins[diag.in_ct[k]], int(b[k])) * rot(diag.vector(k, SLOTS), -int(gg))
        out += rot(inner, int(gg))
    return out


def run_terms(terms, inputs, tensors, lout, split=None):
    vecs = [v for layout, t in zip(inputs, tensors, strict=True) for v in layout.pack(t)]
    offs = list(np.cumsum([0] + [x.n_cts for x in inputs])[:-1])
    outs = []
    for j in range(lout.n_cts):
        d = conv_diagonals(terms, inputs, offs, lout, j)
        o = apply_diagonals(d, vecs, split)
        # nothing outside the output layout's slots
        mask = np.zeros(SLOTS, bool)
        mask[lout.occupied()[j]] = True
        assert np.all(o[~mask] == 0)
        outs.append(o)
    return lout.unpack(outs)


CASES = [
    # (input stage, output stage, c_in, c_out, kernel, stride, pad, channel_diagonal)
    ("input", "s1", 3, 16, 3, 1, 1, False),
    ("s1", "s1", 16, 16, 3, 1, 1, False),
    ("s1", "s2", 16, 32, 3, 2, 1, False),
    ("s1", "s2", 16, 32, 1, 2, 0, False),
    ("s2", "s2", 32, 32, 3, 1, 1, False),
    ("s2", "s3", 32, 64, 3, 2, 1, False),
    ("s3", "s3", 64, 64, 3, 1, 1, False),
    ("s3", "s3", 64, 64, 1, 1, 0, True),
]


@pytest.mark.parametrize("family", lay.FAMILIES)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{c[1]}-k{c[4]}s{c[5]}{'d' if c[7] else ''}")
def test_conv_diagonals_match_numpy(family: str, case: tuple) -> None:
    sin, sout, ci, co, k, s, pad, chdiag = case
    if family == "raster" and s == 2:
        pytest.skip("raster stride-2 has thousands of diagonals; covered by the counting test")
    n = 4
    layouts = lay.stage_layouts(n, SLOTS, family)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(layouts[sin].shape)
    w = rng.standard_normal((n, co, ci, k, k))
    if chdiag:
        w = w * np.eye(co)[None, :, :, None, None]
    term = ConvTerm(0, k, s, pad, co, ci, w, channel_diagonal=chdiag)
    got = run_terms([term], [layouts[sin]], [x], layouts[sout], BsgsSplit(256, True))
    ref = np.stack([conv2d(x[g : g + 1], w[g], s, pad)[0] for g in range(n)])
    np.testing.assert_allclose(got, ref, atol=1e-11)


def test_conv_plus_shortcut_two_sources() -> None:
    n = 9
    layouts = lay.stage_layouts(n, SLOTS, "multiplexed")
    rng = np.random.default_rng(2)
    y = rng.standard_normal(layouts["s2"].shape)
    h = rng.standard_normal(layouts["s1"].shape)
    w = rng.standard_normal((n, 32, 32, 3, 3))
    wsc = rng.standard_normal((n, 32, 16, 1, 1))
    terms = [ConvTerm(0, 3, 1, 1, 32, 32, w), ConvTerm(1, 1, 2, 0, 32, 16, wsc)]
    got = run_terms(terms, [layouts["s2"], layouts["s1"]], [y, h], layouts["s2"])
    ref = np.stack([conv2d(y[g : g + 1], w[g])[0] + conv2d(h[g : g + 1], wsc[g], 2, 0)[0] for g in range(n)])
    np.testing.assert_allclose(got, ref, atol=1e-11)


@pytest.mark.parametrize(("family", "stride"), [("multiplexed", 16), ("raster", 128), ("polyphase", 32)])
def test_pool_head_matches_numpy(family: str, stride: int) -> None:
    n = 4
    s3 = lay.stage_layouts(n, SLOTS, family)["s3"]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(s3.shape)
    head = rng.standard_normal((n, 256, 256))
    steps = pool_anchor_steps(s3, 4)
    assert steps is not None
    tmpl = lay.TemplateLayout(stride)
    term = PoolHeadTerm(0, 4, 256, head, steps)
    (vec,) = s3.pack(x)
    for st in steps:
        vec = vec + rot(vec, st)
    d = pool_head_diagonals(term, s3, 0, tmpl, SLOTS)
    out = apply_diagonals(d, [vec], BsgsSplit(512, False))
    pooled = x.reshape(n, 64, 2, 4, 2, 4).mean(axis=(3, 5)).reshape(n, 256)
    ref = np.einsum("gji,gi->j", head, pooled)
    np.testing.assert_allclose(tmpl.unpack(out), ref, atol=1e-10)
    keep = np.zeros(SLOTS, bool)
    keep[tmpl.slots_of()] = True
    assert np.all(out[~keep] == 0)


@pytest.mark.parametrize(("family", "n", "pre"), [("multiplexed", 4, False), ("multiplexed", 9, False),
                                                  ("polyphase", 4, True), ("raster", 16, False)])
def test_pool_head_replicated_matches_numpy(family: str, n: int, pre: bool) -> None:
    s3 = lay.stage_layouts(n, SLOTS, family)["s3"]
    rng = np.random.default_rng(n)
    x = rng.standard_normal(s3.shape)
    head = rng.standard_normal((n, 256, 256))
    steps = pool_anchor_steps(s3, 4) if pre else ()
    tmpl = lay.TemplateLayout(1, SLOTS // 256)
    term = PoolHeadTerm(0, 4, 256, head, tuple(steps))
    vecs = s3.pack(x)
    for st in steps:
        vecs = [v + rot(v, st) for v in vecs]
    d = pool_head_replicated_diagonals(term, s3, 0, tmpl, SLOTS)
    assert len(d) <= 256 * s3.n_cts
    split, cnt = choose_split([d], SLOTS, CostModel(), 11, "pow2")
    assert cnt.rotations <= 45 * s3.n_cts
    out = apply_diagonals(d, vecs, split)
    for st in template_reduce_steps(tmpl, SLOTS):
        out = out + rot(out, st)
    pooled = x.reshape(n, 64, 2, 4, 2, 4).mean(axis=(3, 5)).reshape(n, 256)
    ref = np.einsum("gji,gi->j", head, pooled)
    np.testing.assert_allclose(tmpl.unpack(out), ref, atol=1e-9)
    # replicated: element j (times the template scale) at every slot = j (mod 256)
    np.testing.assert_allclose(out.reshape(-1, 256), np.broadcast_to(tmpl.scale * ref, (SLOTS // 256, 256)),
                               atol=1e-9)
    # structure-only diagonals agree with the weighted ones
    np.testing.assert_array_equal(pool_head_replicated_diagonals(term, s3, 0, tmpl, SLOTS, False).offset, d.offset)


def test_plan_pool_head_counts() -> None:
    for res in (64, 96, 128):
        plan = build_plan(res, SLOTS, key_mode="pow2")
        head = plan.layers[-1]
        assert plan.template == lay.TemplateLayout(1, 128)
        assert head.count.diagonals <= 256 * head.in_layouts[0].n_cts
        assert head.count.rotations <= 55 + 25 * (head.in_layouts[0].n_cts - 1)


def test_bsgs_covers_every_offset() -> None:
    rng = np.random.default_rng(4)
    offs = np.unique(rng.integers(0, SLOTS, 500))
    for n1 in [1, 8, 64, 1024]:
        for centered in (False, True):
            sp = BsgsSplit(n1, centered)
            b, g = sp.split(offs, SLOTS)
            np.testing.assert_array_equal((b + g) % SLOTS, offs)
            bb = (b + n1 // 2) % SLOTS - n1 // 2 if centered else b
            assert np.all((bb >= -(n1 // 2)) & (bb < n1)) and np.all(g % n1 == 0)


def test_naf_and_compose_tree() -> None:
    for s in [1, 3, 7, 33, 1023, 16384, SLOTS - 1, 12345]:
        d = naf(s, SLOTS)
        assert sum(d) % SLOTS == s % SLOTS
        assert all(abs(x) & (abs(x) - 1) == 0 for x in d)
    steps = [1, 3, 32, 33, 31, SLOTS - 33]
    tree = compose_tree(steps, SLOTS)
    for s in steps:
        node, acc = s % SLOTS, 0
        while node:
            parent, digit = tree[node]
            acc += digit
            node = parent
        assert acc % SLOTS == s % SLOTS


def test_choose_split_prefers_cheaper() -> None:
    # 3x3 taps x 16 channel shifts: the best split separates taps (babies) from channel shifts (giants)
    offs = np.array([c * 2048 + dy * 32 + dx for c in range(16) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    d = Diagonals(np.zeros(offs.size, np.int64), offs % SLOTS)
    _split, cnt = choose_split([d], SLOTS, CostModel(), 20)
    assert cnt.diagonals == 144
    assert cnt.rotations <= 8 + 15 + 8
    naive = count_split([d], BsgsSplit(1, False), SLOTS)
    assert cnt.rotations < naive.rotations


@pytest.mark.parametrize("resolution", [64, 96, 128])
def test_plan_consumes_the_budgeted_network_levels(resolution: int) -> None:
    """Every model's plan ends exactly at ``reserve``: its layers take ``LEVELS.network_levels`` levels."""
    plan = build_plan(resolution, SLOTS, reserve=3)
    assert plan.start_level - plan.end_level == LEVELS.network_levels(resolution) == 23
    assert plan.end_level == 3 and plan.layers[-1].level_out == 3
    assert sum(layer.level_in - layer.level_out for layer in plan.layers) == LEVELS.network_levels(resolution)


@pytest.mark.parametrize("key_mode", ["exact", "pow2"])
def test_plan_levels_and_counts(key_mode: str) -> None:
    plan = build_plan(64, SLOTS, family="multiplexed", key_mode=key_mode, reserve=10)
    assert plan.start_level == LEVELS.network_levels(64) + 10 and plan.end_level == 10
    assert plan.layers[0].level_in == plan.start_level and plan.layers[-1].level_out == 10
    for a, b in zip(plan.layers, plan.layers[1:], strict=False):
        assert b.level_in == a.level_out
    t = plan.totals()
    assert t["levels"] == 23
    if key_mode == "pow2":
        assert all(abs(((k + SLOTS // 2) % SLOTS) - SLOTS // 2) & (abs(((k + SLOTS // 2) % SLOTS) - SLOTS // 2) - 1)
                   == 0 for k in plan.rotation_keys)
        assert t["keys"] <= 30


@pytest.mark.slow
def test_family_counts_rank_raster_last() -> None:
    res = {f: build_plan(64, SLOTS, family=f).totals() for f in lay.FAMILIES}
    assert res["raster"]["diagonals"] > 5 * res["multiplexed"]["diagonals"]
    assert res["multiplexed"]["cost_s"] < res["raster"]["cost_s"]
