"""Default CKKS parameters for encrypted CryptoFaceNet inference plus encrypted matching.

Levels = the network's 23 (see :mod:`cryptoface.engine.plan`) + ``MATCHING_RESERVE_LEVELS`` = 7 left on the
template for score-mode matching (:mod:`cryptoface.match.levels` must not need more; a test checks it):

* normalisation 6: ``t * t`` (1; ``||t||^2`` is mapped onto the Chebyshev interval by a constant add because
  the engine scales its output by ``TEMPLATE_SCALE``, :mod:`cryptoface.engine.template`), the degree-15
  Chebyshev 1/sqrt (4, scalars included), ``t * p`` (1);
* score 1: the ct x ct product; the replicated / ring-filling layouts make every rotate-and-add sum cyclic,
  so no mask level is needed and nothing but scores is revealed.

The decision-only mode (a composite sign of ``score - tau``, ``SIGN_LEVELS`` = 9 for g3 f3 f3) needs its levels
on top: ``default_parameters(resolution, mode="decision")``.

Scale: 42 bits in score mode, chosen for precision. CKKS noise is a fixed number of units of the scale, so
each extra bit halves the relative error: on OpenFHE at N = 2^16 a rotation's error std is 2.3e-7 at 40 bits
and 6.6e-8 at 42 (``scripts/bench_backends.py``-style probe, recorded in the README), and encrypted Net4 at
40 bits missed the 1e-3 relative-error target (1.39e-3). Headroom: the largest values the engine meets are
the monic quadratics' inputs/outputs of the early blocks (|x| up to ~2.3e3, q(x) up to ~3.1e6 on the
released Net4, research/paper-net4-lfw.md): a pending product is x^2 * 2^84 < 2^107, far below the
60 + 42 * level bits at every level the network uses (level >= 7: >= 354 bits); the first prime (60 bits)
leaves 18 bits of integer headroom at level 0 for the score.

Key-switching digits: the smallest dnum whose log2(QP) passes the 128-bit HE-standard bound at N = 2^16
(1772 bits). Score mode: 30 levels x 42 + 60 = 1320 bits of Q; dnum 3 would need 8 special primes
(1800 bits, too many), dnum 4 needs 6 -> 1680 bits (OpenFHE's own HEStd_128_classic check agrees; it also
rejects 41 bits at dnum 3). dnum 4 keys are ~26 % larger than dnum 3 keys at 40 bits; rotations cost the
same (measured). Decision mode (39 levels) has no room for 42 bits: at 40 bits Q is 1620 bits, only 152
are left for P, so dnum 14 (2 special primes, 1740 bits) -- evaluation keys about 5x larger.
"""

from __future__ import annotations

from cryptoface.backends.protocol import CkksParameters
from cryptoface.engine.plan import NETWORK_LEVELS
from cryptoface.errors import ParameterError
from cryptoface.model import spec

NORMALISATION_LEVELS = 6
SCORE_LEVELS = 1
SIGN_LEVELS = 9  # g3 f3 f3 (three degree-7 stages); a 2-stage g3 f3 takes 6
MATCHING_RESERVE_LEVELS = NORMALISATION_LEVELS + SCORE_LEVELS  # = 7
SCALE_BITS = 42  # score mode
DECISION_SCALE_BITS = 40  # 39 levels of 42 bits do not fit 128-bit security at N = 2^16
LOG_RING = 16
MODES = ("score", "decision")


def secure_parameters(levels: int, log_ring: int = LOG_RING, scale_bits: int = SCALE_BITS) -> CkksParameters:
    """``levels`` levels with the smallest key-switching digit count that passes the 128-bit check."""
    for dnum in range(1, levels + 2):
        params = CkksParameters(log_ring=log_ring, levels=levels, scale_bits=scale_bits, first_mod_bits=60,
                                special_mod_bits=60, key_switch_digits=dnum)
        try:
            params.check_security()
        except ParameterError:
            continue
        return params
    raise ParameterError(
        f"{levels} levels do not fit the 128-bit bound at N = 2^{log_ring} for any key-switching digit count; "
        "use fewer levels (score mode) or bootstrapping"
    )


def default_parameters(resolution: int = 64, reserve: int | None = None, *, mode: str = "score",
                       sign_levels: int = SIGN_LEVELS) -> CkksParameters:
    """CKKS parameters for CryptoFaceNet at ``resolution``: N = 2^16, 42-bit scale (40 in decision mode), the
    smallest secure dnum.

    Levels: 23 + ``reserve`` (default ``MATCHING_RESERVE_LEVELS``), plus ``sign_levels`` in ``mode="decision"``.
    Raises ParameterError when no digit count makes the level count secure at N = 2^16.
    """
    spec.grid_for(resolution)  # validates the resolution
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    levels = NETWORK_LEVELS + (MATCHING_RESERVE_LEVELS if reserve is None else reserve)
    if mode == "decision":
        return secure_parameters(levels + sign_levels, scale_bits=DECISION_SCALE_BITS)
    return secure_parameters(levels)
