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

Scale: 40 bits. The largest values the engine meets are the monic quadratics' inputs/outputs of the
early blocks (|x| up to ~2.3e3, q(x) up to ~3.1e6 on the released Net4, research/paper-net4-lfw.md):
a pending product is x^2 * 2^80 < 2^103, well below the 60 + 40 * level bits available at every level
the network uses (level >= 7, i.e. >= 340 bits), so 40 bits is enough; the first prime (60 bits) leaves
20 bits of integer headroom at level 0 for the score.

Key-switching digits: the smallest dnum whose log2(QP) passes the 128-bit HE-standard bound at N = 2^16
(1772 bits). Score mode: 30 levels x 40 + 60 = 1260 bits of Q; dnum 3 needs 7 special primes -> 1680 bits.
Decision mode (39 levels, 1620 bits of Q): only 152 bits are left for P, so dnum 14 (2 special primes,
1740 bits) -- evaluation keys about 5x larger than at dnum 3.
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
SCALE_BITS = 40
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
    """CKKS parameters for CryptoFaceNet at ``resolution``: N = 2^16, 40-bit scale, the smallest secure dnum.

    Levels: 23 + ``reserve`` (default ``MATCHING_RESERVE_LEVELS``), plus ``sign_levels`` in ``mode="decision"``.
    Raises ParameterError when no digit count makes the level count secure at N = 2^16.
    """
    spec.grid_for(resolution)  # validates the resolution
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    levels = NETWORK_LEVELS + (MATCHING_RESERVE_LEVELS if reserve is None else reserve)
    if mode == "decision":
        levels += sign_levels
    return secure_parameters(levels)
