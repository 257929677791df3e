"""CKKS parameters and the level budget: the one table that the engine, matching and the service read.

Levels = the network's 23 + ``LEVELS.matching_reserve`` = 7 left on the template for score-mode matching:

* network 23 per model: stem 1, then per block q1 1, conv1 1, q2 1, conv2(+shortcut) 1, then the pool
  quadratic 1 and pool+head 1 (1 + 5 * 4 + 2; :mod:`cryptoface.engine.plan` follows this schedule and a test
  checks every model's plan consumes exactly its entry). The three models share the block stack (they differ
  in patch count only), so their depths are equal;
* normalisation 6: ``t * t`` (1; ``||t||^2`` is mapped onto the Chebyshev interval by a constant add because
  the engine scales its output by ``TEMPLATE_SCALE``, :mod:`cryptoface.engine.template`), the degree-15
  Chebyshev 1/sqrt (4, scalars included), ``t' * p`` (1), where ``t'`` -- the template moved into the
  normalised layout -- is computed at L_out - 1 in parallel. Enrolled templates are stored at L_out - 6; a
  template whose scale is not ``TEMPLATE_SCALE`` costs one more level;
* score 1: the ct x ct product; the replicated / ring-filling layouts make every rotate-and-add sum cyclic,
  so no mask level is needed and nothing but scores is revealed;
* decision 9: the composite sign of ``score - tau``, three degree-7 stages g3 f3 f3 (3 each; a 2-stage g3 f3
  takes 6). Decision-only mode needs these on top: ``default_parameters(resolution, mode="decision")``; the
  service refuses decision-only requests when the templates have too few levels left.

The matching depths follow from :mod:`cryptoface.match.poly`'s degrees (this bottom-layer module cannot
import it); a test asserts the table equals ``chebyshev_depth(INV_SQRT_DEGREE)`` and ``sign_depth()``.

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

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from cryptoface.backends.protocol import CkksParameters
from cryptoface.errors import ParameterError
from cryptoface.model import spec

SCALE_BITS = 42  # score mode
DECISION_SCALE_BITS = 40  # 39 levels of 42 bits do not fit 128-bit security at N = 2^16
LOG_RING = 16
FIRST_MOD_BITS = 60  # q0: decryption headroom for the score at level 0
SPECIAL_MOD_BITS = 60
MODES = ("score", "decision")


@dataclass(frozen=True)
class LevelBudget:
    """Levels each stage consumes, in evaluation order: the network, then normalise, score and (decision-only
    mode) the sign on what the engine leaves on the template."""

    network: Mapping[int, int] = field(hash=False)  # per model, keyed by input resolution (spec.ARCHITECTURES)
    normalise: int
    score: int
    decision: int

    @property
    def matching_reserve(self) -> int:
        """Levels the engine leaves on its template: score-mode matching (1:1 and 1:N, scores revealed)."""
        return self.normalise + self.score

    @property
    def match(self) -> int:
        """Levels decision-only matching takes from the engine's output level."""
        return self.normalise + self.score + self.decision

    def network_levels(self, resolution: int) -> int:
        """Levels the encrypted network at ``resolution`` consumes (ValueError for an unknown resolution)."""
        spec.grid_for(resolution)
        return self.network[resolution]


def _network_depth(blocks: tuple[spec.BlockSpec, ...]) -> int:
    # stem; q1, conv1, q2, conv2 per block (the shortcut folds into conv2); pool quadratic; pool+head
    return 1 + 4 * len(blocks) + 2


LEVELS = LevelBudget(
    network=MappingProxyType({res: _network_depth(spec.BLOCKS) for res in spec.ARCHITECTURES}),
    normalise=6,  # 1 + chebyshev_depth(15) + 1
    score=1,
    decision=9,  # sign_depth(("g3", "f3", "f3"))
)


def digits_fit(towers: int, dnum: int) -> bool:
    """Whether hybrid key switching can split ``towers`` RNS limbs into exactly ``dnum`` non-empty digits of
    ceil(towers / dnum) limbs (OpenFHE refuses a digit count that leaves a digit empty, e.g. 8 limbs in 6)."""
    per = -(-towers // dnum)
    return 1 <= dnum <= towers and per * (dnum - 1) < towers


def secure_parameters(levels: int, log_ring: int = LOG_RING, scale_bits: int = SCALE_BITS) -> CkksParameters:
    """``levels`` levels with the smallest key-switching digit count that passes the 128-bit check."""
    for dnum in range(1, levels + 2):
        if not digits_fit(levels + 1, dnum):
            continue
        params = CkksParameters(log_ring=log_ring, levels=levels, scale_bits=scale_bits,
                                first_mod_bits=FIRST_MOD_BITS, special_mod_bits=SPECIAL_MOD_BITS,
                                key_switch_digits=dnum)
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
                       sign_levels: int | None = None) -> CkksParameters:
    """CKKS parameters for CryptoFaceNet at ``resolution``: N = 2^16, 42-bit scale (40 in decision mode), the
    smallest secure dnum.

    Levels: the network's + ``reserve`` (default ``LEVELS.matching_reserve``), plus ``sign_levels`` (default
    ``LEVELS.decision``) in ``mode="decision"``. Raises ParameterError when no digit count makes the level
    count secure at N = 2^16.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    levels = LEVELS.network_levels(resolution) + (LEVELS.matching_reserve if reserve is None else reserve)
    if mode == "decision":
        levels += LEVELS.decision if sign_levels is None else sign_levels
        return secure_parameters(levels, scale_bits=DECISION_SCALE_BITS)
    return secure_parameters(levels)




PARAM_FIELDS = ("log_ring", "levels", "scale_bits", "first_mod_bits", "special_mod_bits", "key_switch_digits")


def params_to_json(params: CkksParameters) -> str:
    """The canonical JSON of a parameter set (what key sets and the wire carry)."""
    return json.dumps({k: getattr(params, k) for k in PARAM_FIELDS}, sort_keys=True)


def params_from_json(text: str) -> CkksParameters:
    """Parameters from their JSON; ParameterError for anything unreadable, unknown or out of range."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        unknown = set(raw) - set(PARAM_FIELDS)
        if unknown:
            raise ParameterError(f"unknown CKKS parameter(s) {sorted(unknown)}")
        params = CkksParameters(**{k: int(v) for k, v in raw.items()})
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"unreadable CKKS parameters: {exc}") from exc
    if not 10 <= params.log_ring <= 17 or not 1 <= params.levels <= 60:
        raise ParameterError(f"CKKS parameters out of range: {asdict(params)}")
    return params


__all__ = [
    "DECISION_SCALE_BITS",
    "FIRST_MOD_BITS",
    "LEVELS",
    "LOG_RING",
    "MODES",
    "PARAM_FIELDS",
    "SCALE_BITS",
    "SPECIAL_MOD_BITS",
    "LevelBudget",
    "default_parameters",
    "digits_fit",
    "params_from_json",
    "params_to_json",
    "secure_parameters",
]
