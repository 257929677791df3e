"""The parameter table's choices: secure digit counts that a real backend can also build."""

from __future__ import annotations

import pytest

from cryptoface.backends.protocol import CkksParameters
from cryptoface.errors import ParameterError
from cryptoface.params import default_parameters, digits_fit, params_from_json, params_to_json, secure_parameters


def test_digit_counts_leave_no_digit_empty():
    assert digits_fit(8, 4) and digits_fit(8, 8) and digits_fit(31, 4) and digits_fit(40, 14)
    assert not digits_fit(8, 6) and not digits_fit(8, 5) and not digits_fit(8, 9)


def test_small_rings_get_a_secure_buildable_digit_count():
    p = secure_parameters(7, log_ring=14)
    p.check_security()
    assert digits_fit(p.levels + 1, p.key_switch_digits) and p.key_switch_digits == 8


def test_defaults_are_unchanged():
    assert (default_parameters(64).levels, default_parameters(64).key_switch_digits) == (21, 2)  # refresh
    assert default_parameters(64, mode="decision") == default_parameters(64)
    one_round = default_parameters(64, protocol="one-round")
    assert (one_round.levels, one_round.key_switch_digits) == (30, 4)
    decision = default_parameters(64, mode="decision", protocol="one-round")
    # 40 limbs in digits of 2: the largest digit (q0 + one 40-bit prime, 100 bits) needs 2 special primes; with
    # dnum 14 (digits of 3 limbs) it would need 3 and pass 1772 bits (OpenFHE refuses that set at 128 bits)
    assert (decision.levels, decision.key_switch_digits, decision.special_primes) == (39, 20, 2)


@pytest.mark.parametrize("text", ["[]", "1", "null", '{"levels": "x"}', '{"bogus": 1}', "{", '{"log_ring": 40}'])
def test_unreadable_parameters_are_parameter_errors(text):
    with pytest.raises(ParameterError):
        params_from_json(text)


def test_json_round_trip():
    p = CkksParameters(log_ring=13, levels=9, scale_bits=40, key_switch_digits=2)
    assert params_from_json(params_to_json(p)) == p
