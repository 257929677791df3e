"""Cached conv diagonal structure (ConvStructure): the same diagonals and weight vectors as conv_diagonals."""

from __future__ import annotations

import numpy as np
import pytest

from cryptoface.engine import layout as lay
from cryptoface.engine.linear import ConvTerm, conv_diagonals, conv_structure, term_weights

SLOTS = 1 << 15


def _terms(rng, n, specs):
    out = []
    for source, k, s, pad, co, ci, chdiag in specs:
        w = rng.standard_normal((n, co, ci, k, k))
        if chdiag:
            w = np.zeros((n, co, ci, 1, 1))
            w[:, np.arange(co), np.arange(co), 0, 0] = rng.standard_normal((n, co))
        out.append(ConvTerm(source, k, s, pad, co, ci, w, channel_diagonal=chdiag))
    return out


@pytest.mark.parametrize("family", ["multiplexed", "interleaved", "phased"])
@pytest.mark.parametrize("n", [4, 9])
@pytest.mark.parametrize("case", ["s1", "b1", "b3sc", "s3id"])
def test_structure_rows_match_conv_diagonals(family: str, n: int, case: str) -> None:
    rng = np.random.default_rng(7)
    L = lay.stage_layouts(n, SLOTS, family)
    ins, lout, specs = {
        "s1": ([L["s1"]], L["s1"], [(0, 3, 1, 1, 16, 16, False)]),
        "b1": ([L["s1"]], L["s2"], [(0, 3, 2, 1, 32, 16, False)]),
        "b3sc": ([L["s3"], L["s2"]], L["s3"], [(0, 3, 1, 1, 64, 64, False), (1, 1, 2, 0, 64, 32, False)]),
        "s3id": ([L["s3"], L["s3"]], L["s3"], [(0, 3, 1, 1, 64, 64, False), (1, 1, 1, 0, 64, 64, True)]),
    }[case]
    terms = _terms(rng, n, specs)
    offs = list(np.cumsum([0] + [x.n_cts for x in ins])[:-1])
    w = term_weights(terms)
    for j in range(lout.n_cts):
        ref = conv_diagonals(terms, ins, offs, lout, j)
        st = conv_structure(terms, ins, offs, lout, j)
        np.testing.assert_array_equal(st.in_ct, ref.in_ct)
        np.testing.assert_array_equal(st.offset, ref.offset)
        ks = rng.choice(len(st), size=min(len(st), 40), replace=False)
        shift = int(rng.integers(SLOTS))
        rows = st.rows(ks, w, SLOTS, shift)
        for r, k in zip(rows, ks, strict=True):
            np.testing.assert_array_equal(r, np.roll(ref.vector(int(k), SLOTS), shift))
