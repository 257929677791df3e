"""Default CKKS parameters for encrypted CryptoFaceNet inference plus encrypted matching.

Levels = the network's 23 (see :mod:`cryptoface.engine.plan`) + ``MATCHING_RESERVE_LEVELS`` left on the
template for the matching stage: approximate L2 normalisation (~4 levels: an inverse-square-root
polynomial and the multiply by it), the score (1: a ct x ct inner product), and a sign approximation of
``score - threshold`` (~5: a composite odd polynomial). The network ends at level ``MATCHING_RESERVE_LEVELS``.

Scale: 40 bits. The largest values the engine meets are the monic quadratics' inputs/outputs of the
early blocks (|x| up to ~2.3e3, q(x) up to ~3.1e6 on the released Net4, research/paper-net4-lfw.md):
a pending product is x^2 * 2^80 < 2^103, well below the 60 + 40 * level bits available at every level
the network uses (level >= MATCHING_RESERVE_LEVELS = 10, i.e. >= 460 bits), so 40 bits is enough;
the first prime (60 bits) leaves 20 bits of integer headroom at level 0 for the template and score.

Key-switching digits: the smallest dnum whose log2(QP) passes the 128-bit HE-standard bound at
N = 2^16 (1772 bits): 33 levels x 40 + 60 = 1380 bits of Q; dnum 3 needs 8 special primes (1860 > 1772),
dnum 4 needs 6 (1740), so dnum = 4.
"""

from __future__ import annotations

from cryptoface.backends.protocol import CkksParameters
from cryptoface.engine.plan import NETWORK_LEVELS
from cryptoface.errors import ParameterError
from cryptoface.model import spec

NORMALISATION_LEVELS = 4
SCORE_LEVELS = 1
SIGN_LEVELS = 5
MATCHING_RESERVE_LEVELS = NORMALISATION_LEVELS + SCORE_LEVELS + SIGN_LEVELS  # = 10
SCALE_BITS = 40
LOG_RING = 16


def default_parameters(resolution: int = 64, reserve: int = MATCHING_RESERVE_LEVELS) -> CkksParameters:
    """CKKS parameters for CryptoFaceNet at ``resolution``: N = 2^16, 23 + reserve levels, 40-bit scale."""
    spec.grid_for(resolution)  # validates the resolution
    levels = NETWORK_LEVELS + reserve
    for dnum in range(1, levels + 1):
        params = CkksParameters(log_ring=LOG_RING, levels=levels, scale_bits=SCALE_BITS, first_mod_bits=60,
                                special_mod_bits=60, key_switch_digits=dnum)
        try:
            params.check_security()
        except ParameterError:
            continue
        return params
    raise ParameterError(f"no key-switching digit count makes {levels} levels secure at N = 2^{LOG_RING}")
