"""CKKS parameters and the level budget: the one table that the engine, matching and the service read.

Levels = the network's 23, and in the one-round protocol ``LEVELS.matching_reserve`` = 7 more left on the
template for the server's normalisation and score (in the refresh protocol, the default, the client's fresh
templates carry matching's levels instead: ``LEVELS.fresh_template``; and for Net4 the client also evaluates the
network's last two levels in the clear, so the server's ciphertexts carry ``LEVELS.trunk_levels(64)`` = 21):

* network 23 per model: stem 1, then per block q1 1, conv1 1, q2 1, conv2(+shortcut) 1, then the pool
  quadratic 1 and pool+head 1 (1 + 5 * 4 + 2; :mod:`cryptoface.engine.plan` follows this schedule and a test
  checks every model's plan consumes exactly its entry). The three models share the block stack (they differ
  in patch count only), so their depths are equal;
* clear tail 2 (refresh protocol, Net4): the pool quadratic and pool+head take their input from one ciphertext
  (the last block's output, ``s3``), so the server can stop after the last block and return that ciphertext;
  the client decrypts it and applies the pool quadratic, the pooling and the head in the clear
  (:mod:`cryptoface.model.tail`). Net9 and Net16 spread that tensor over several ciphertexts and sum per-unit
  partial templates on the server, so they keep the whole network. :meth:`LevelBudget.plan_end` is the one rule
  that reads a level count as "whole network" or "trunk";
* normalisation 6: ``t * t`` (1; ``||t||^2`` is mapped onto the Chebyshev interval by a constant add because
  the engine scales its output by ``TEMPLATE_SCALE``, :mod:`cryptoface.engine.template`), the degree-15
  Chebyshev 1/sqrt (4, scalars included), ``t' * p`` (1), where ``t'`` -- the template moved into the
  normalised layout -- is computed at L_out - 1 in parallel. Enrolled templates are stored at L_out - 6; a
  template whose scale is not ``TEMPLATE_SCALE`` costs one more level;
* score 1: the ct x ct product; the replicated / ring-filling layouts make every rotate-and-add sum cyclic,
  so no mask level is needed and nothing but scores is revealed;
* pack 1 (refresh protocol): a 0/1 mask on the 1:N gallery, so that the scores of many chunks share one answer
  ciphertext (:func:`cryptoface.match.homomorphic.grouped_gallery`, or ``dense_scores`` when scoring is sharded);
  the client's fresh templates carry it;
* decision 9: the composite sign of ``score - tau``, three degree-7 stages g3 f3 f3 (3 each; a 2-stage g3 f3
  takes 6). One-round decision-only mode needs these on top of the template's levels:
  ``default_parameters(resolution, mode="decision", protocol="one-round")``; in the refresh protocol the client's
  fresh templates carry them. The service refuses decision-only requests when the templates have too few levels.

The matching depths follow from :mod:`cryptoface.match.poly`'s degrees (this bottom-layer module cannot
import it); a test asserts the table equals ``chebyshev_depth(INV_SQRT_DEGREE)`` and ``sign_depth()``.

Scale: 42 bits in one-round score mode, 43 in the refresh protocol, chosen for precision (as many bits as the
128-bit bound allows at the smallest dnum). CKKS noise is a fixed number of units of the scale, so
each extra bit halves the relative error: on OpenFHE at N = 2^16 a rotation's error std is 2.3e-7 at 40 bits
and 6.6e-8 at 42 (``scripts/bench_backends.py``-style probe, recorded in the README), and encrypted Net4 at
40 bits missed the 1e-3 relative-error target (1.39e-3). Headroom: the largest values the engine meets are
the monic quadratics' inputs/outputs of the early blocks (|x| up to ~2.3e3, q(x) up to ~3.1e6 on the
released Net4, research/paper-net4-lfw.md): a pending product is x^2 * 2^86 < 2^109, far below the
60 + 43 * level bits of every level >= 2 (>= 146 bits), where the network's quadratics run; the first
prime (60 bits) leaves 17 bits of integer headroom at level 0 for the raw template (refresh: values ~0.3) or the
score (one-round: 18 bits).

Key-switching digits: the smallest dnum whose log2(QP) passes the 128-bit HE-standard bound at N = 2^16
(1772 bits). P must cover the largest digit: OpenFHE cuts the levels + 1 limbs into digits of ceil((levels + 1) /
dnum) limbs, the first holding the 60-bit q0 (``CkksParameters.special_primes``). Refresh: Net4's trunk, 21 levels
x 43 + 60 = 963 bits of Q, dnum 2 (11 limbs a digit, the first 60 + 10 x 43 = 490 bits) with 9 special primes ->
1503 bits; Net9/Net16's 23 levels: 1049 bits, 12-limb digits of 533 bits, 9 special primes -> 1589 bits (dnum 1
needs P >= Q). At 42 bits Net4's error was 1.7e-4 to 1.31e-3 x max|ref| over five key sets, over the
1e-3 target for one of them; the 43rd bit halves it at no cost in keys or time; a 44th would need a tenth special
prime (keys 2.02 GB instead of 1.96, measured). One-round score mode: 30 levels x 42 + 60 = 1320 bits of Q; dnum 3
would need 8 special primes (1800 bits, too many), dnum 4 needs 6 -> 1680 bits (OpenFHE's own HEStd_128_classic
check agrees; it also rejects 41 bits at dnum 3). dnum 4 keys are ~26 % larger than dnum 3 keys at 40 bits;
rotations cost the same (measured). One-round decision mode (39 levels) has no room for 42 bits: at 40 bits Q is
1620 bits, only 152 are left for P, so dnum 20 (digits of 2 limbs, 2 special primes, 1740 bits; OpenFHE refuses
dnum 14, whose 3-limb digits need 3) -- evaluation keys about 5x larger.

The matching ring (:func:`match_parameters`): a refreshed score-mode template needs only the cosine and the merge
mask (2 levels), so the client encrypts it under a second, small key set: N = 2^13, 60 + 2 x 43 = 146 bits of Q,
dnum 3 with one 60-bit special prime = 206 bits, under the 218-bit bound at N = 2^13. A stored template is then 3
limbs of 2^13 (394 KB instead of 3.15 MB), and a key switch carries 1 special prime instead of the network's 9,
which is what 1:N scoring costs (``scripts/bench_match_chunk.py``). Decision-ready templates (cosine + sign, 10
levels) do not fit N = 2^13 at 128-bit and stay in the network's ring.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from cryptoface.backends.protocol import CkksParameters
from cryptoface.errors import ParameterError
from cryptoface.model import spec

SCALE_BITS = 42  # one-round score mode
DECISION_SCALE_BITS = 40  # 39 levels of 42 bits do not fit 128-bit security at N = 2^16
REFRESH_SCALE_BITS = 43  # the refresh protocol's 21-23 levels leave room for one more bit at the same dnum and P
LOG_RING = 16
MATCH_LOG_RING = 13  # the matching ring of client-refreshed score-mode templates
FIRST_MOD_BITS = 60  # q0: decryption headroom for the score at level 0
SPECIAL_MOD_BITS = 60
MODES = ("score", "decision")
# How a template reaches matching. "refresh" (default): the server returns the network's raw template (Net4: the
# last block's output, which the client finishes with the model's tail), the client decrypts it, normalises it in
# the clear and encrypts it afresh at the levels matching needs, so the network's ciphertexts carry the network's
# levels only (Net4: its trunk's). "one-round": the client encrypts once and decrypts scores once
# (the HE benchmark's workload); the server normalises, so every network ciphertext carries matching's levels.
PROTOCOLS = ("refresh", "one-round")
DEFAULT_PROTOCOL = "refresh"
# Where refreshed score-mode templates are stored and matched: the client's matching ring (match_parameters) or the
# network's ring.
RINGS = ("match", "network")


@dataclass(frozen=True)
class LevelBudget:
    """Levels each stage consumes, in evaluation order: the network, then normalise, score and (decision-only
    mode) the sign on what the engine leaves on the template."""

    network: Mapping[int, int] = field(hash=False)  # per model, keyed by input resolution (spec.ARCHITECTURES)
    tail: int  # the network's last levels (pool quadratic, pool+head), which a refreshing client can do in the clear
    clear_tail: frozenset[int]  # resolutions whose refresh protocol stops the server's network before the tail
    normalise: int
    score: int
    decision: int
    pack: int

    @property
    def matching_reserve(self) -> int:
        """Levels the engine leaves on its template: score-mode matching (1:1 and 1:N, scores revealed)."""
        return self.normalise + self.score

    @property
    def match(self) -> int:
        """Levels decision-only matching takes from the engine's output level."""
        return self.normalise + self.score + self.decision

    def fresh_template(self, mode: str = "score") -> int:
        """Level of a client-refreshed template or probe: the cosine and the dense 1:N mask, or the cosine and
        the sign in decision-only mode."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return self.score + (self.decision if mode == "decision" else self.pack)

    def reserve(self, protocol: str) -> int:
        """Levels the network's output keeps for matching: none when the client refreshes the template."""
        check_protocol(protocol)
        return 0 if protocol == "refresh" else self.matching_reserve

    def network_levels(self, resolution: int) -> int:
        """Levels the encrypted network at ``resolution`` consumes (ValueError for an unknown resolution)."""
        spec.grid_for(resolution)
        return self.network[resolution]

    def trunk_levels(self, resolution: int) -> int:
        """Levels of the network without its tail (what the server evaluates when the client does the tail)."""
        return self.network_levels(resolution) - self.tail

    def refresh_levels(self, resolution: int) -> int:
        """The server's levels in the refresh protocol: the trunk where the tail can be done in the clear."""
        return self.trunk_levels(resolution) if resolution in self.clear_tail else self.network_levels(resolution)

    def plan_end(self, resolution: int, levels: int) -> tuple[bool, int]:
        """How parameters with ``levels`` levels run the network at ``resolution``: (whether the server stops
        before the tail, the level its output keeps). At least the whole network's levels run the whole network;
        fewer run the trunk where the resolution has a clear tail. ParameterError when neither fits."""
        network = self.network_levels(resolution)
        if levels >= network:
            return False, levels - network
        trunk = self.trunk_levels(resolution)
        if resolution in self.clear_tail and levels >= trunk:
            return True, levels - trunk
        least = trunk if resolution in self.clear_tail else network
        raise ParameterError(f"the network at {resolution}x{resolution} needs {least} levels, the parameters give "
                             f"{levels}")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS` (ValueError otherwise)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    return protocol


def _network_depth(blocks: tuple[spec.BlockSpec, ...]) -> int:
    # stem; q1, conv1, q2, conv2 per block (the shortcut folds into conv2); pool quadratic; pool+head
    return 1 + 4 * len(blocks) + 2


LEVELS = LevelBudget(
    network=MappingProxyType({res: _network_depth(spec.BLOCKS) for res in spec.ARCHITECTURES}),
    tail=2,  # pool quadratic 1, pool+head 1
    clear_tail=frozenset({64}),  # Net4: the last block's output is one ciphertext at N = 2^16
    normalise=6,  # 1 + chebyshev_depth(15) + 1
    score=1,
    decision=9,  # sign_depth(("g3", "f3", "f3"))
    pack=1,  # one plaintext mask per gallery chunk
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
                       sign_levels: int | None = None, protocol: str = DEFAULT_PROTOCOL) -> CkksParameters:
    """CKKS parameters for CryptoFaceNet at ``resolution``: N = 2^16, the smallest secure dnum.

    ``protocol="refresh"`` (default): the levels the server evaluates (``LEVELS.refresh_levels``: the trunk for
    Net4, whose tail the client does in the clear) plus ``reserve`` (default 0; for Net4 a reserve of ``LEVELS.tail``
    or more reaches the whole network's levels, which run the whole network: :meth:`LevelBudget.plan_end`); the
    client's fresh templates carry matching's levels, so decision-only mode needs nothing more (``mode`` is
    accepted and changes nothing). ``protocol="one-round"``: the network's + ``reserve`` (default
    ``LEVELS.matching_reserve``), plus ``sign_levels`` (default ``LEVELS.decision``) at a 40-bit scale in
    ``mode="decision"``. Raises ParameterError
    when no digit count makes the level count secure at N = 2^16.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_protocol(protocol)
    extra = LEVELS.reserve(protocol) if reserve is None else reserve
    if protocol == "refresh":
        levels = LEVELS.refresh_levels(resolution) + extra
        if levels < LEVELS.fresh_template("decision"):
            raise ParameterError(f"{levels} levels cannot hold a fresh decision-mode probe "
                                 f"({LEVELS.fresh_template('decision')} levels)")
        return secure_parameters(levels, scale_bits=REFRESH_SCALE_BITS)
    levels = LEVELS.network_levels(resolution) + extra
    if mode == "decision":
        levels += LEVELS.decision if sign_levels is None else sign_levels
        return secure_parameters(levels, scale_bits=DECISION_SCALE_BITS)
    return secure_parameters(levels)


def match_parameters() -> CkksParameters:
    """The matching ring's parameters: N = 2^13, the levels of a fresh score-mode template, the refresh scale."""
    return secure_parameters(LEVELS.fresh_template("score"), log_ring=MATCH_LOG_RING, scale_bits=REFRESH_SCALE_BITS)


def ciphertext_bytes(params: CkksParameters) -> int:
    """Bytes of one fresh ciphertext at these parameters (2 x N x (levels + 1) x 8; OpenFHE's serialised size)."""
    return 2 * params.ring_degree * (params.levels + 1) * 8


def switching_key_bytes(params: CkksParameters) -> int:
    """Bytes of one relinearisation or rotation key (hybrid key switching: 2 x dnum polynomials over Q*P)."""
    return 2 * params.key_switch_digits * params.ring_degree * (params.levels + 1 + params.special_primes) * 8


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
    "DEFAULT_PROTOCOL",
    "FIRST_MOD_BITS",
    "LEVELS",
    "LOG_RING",
    "MATCH_LOG_RING",
    "MODES",
    "PARAM_FIELDS",
    "PROTOCOLS",
    "REFRESH_SCALE_BITS",
    "RINGS",
    "SCALE_BITS",
    "SPECIAL_MOD_BITS",
    "LevelBudget",
    "check_protocol",
    "ciphertext_bytes",
    "default_parameters",
    "digits_fit",
    "match_parameters",
    "params_from_json",
    "params_to_json",
    "secure_parameters",
    "switching_key_bytes",
]
