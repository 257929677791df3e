"""CKKS parameter security: our HE-standard check, and OpenFHE's own check agreeing with it at N = 2^16."""

from __future__ import annotations

import pytest

from cryptoface.backends.protocol import CkksParameters
from cryptoface.errors import ParameterError


def test_defaults_are_128_bit_secure():
    CkksParameters().check_security()


def test_too_many_levels_at_n16_are_rejected():
    with pytest.raises(ParameterError):
        CkksParameters(levels=40).check_security()


@pytest.mark.parametrize(("levels", "ok"), [(30, True), (31, False)])
def test_our_bound_at_n16_dnum3(levels, ok):
    params = CkksParameters(levels=levels, key_switch_digits=3)
    if ok:
        params.check_security()
    else:
        with pytest.raises(ParameterError):
            params.check_security()


@pytest.mark.parametrize(("levels", "ok"), [(30, True), (31, False)])
def test_openfhe_own_check_agrees_with_ours(levels, ok):
    pytest.importorskip("openfhe", reason="openfhe is importable only in .venv-openfhe (scripts/openfhe-venv.sh)")
    from cryptoface.backends.openfhe import make_context

    params = CkksParameters(levels=levels, key_switch_digits=3)
    if ok:
        cc = make_context(params)  # HEStd_128_classic: OpenFHE checks the HE-standard table itself
        assert cc.GetRingDimension() == 1 << 16
        params.check_security()
    else:
        with pytest.raises(ParameterError):
            make_context(params)
        with pytest.raises(ParameterError):
            params.check_security()


def test_desilo_refuses_a_ring_it_would_not_use():
    pytest.importorskip("desilofhe", reason="desilofhe is importable only in .venv (Python 3.10-3.12)")
    from cryptoface.backends.desilo import DesiloBackend

    with pytest.raises(ParameterError, match="slots"):
        DesiloBackend(CkksParameters(log_ring=16, levels=4))  # desilofhe picks N = 2^14 for 4 levels
    assert DesiloBackend(CkksParameters(log_ring=14, levels=4)).slots == 1 << 13
