"""Clear-text polynomial design for encrypted matching: 1/sqrt(y) for normalisation and a composite sign.

Everything here runs on the client or at import time, in float64, never on ciphertexts; the encrypted
evaluation is in :mod:`cryptoface.match.homomorphic`.

Inverse square root
-------------------
We need p(y) ~ 1/sqrt(y) for y = ||t||^2 of a raw 256-d template. Training-template statistics of the
paper CryptoFaceNet4 on LFW (``shared/research/paper-net4-lfw.md``, v2 pipeline): mean 289.6, std 68.9,
q0.1% 114.2, q99.9% 533.3, min 82.4, max 576.8. The fitting range is ``[q0.1%/2, 1.5*max] = [57.1, 865.2]``:
the lower end sits 30 % below the smallest template ever seen (82.4) and the upper end 50 % above the largest,
so other faces, other photo pipelines (v1 had max 613.9) and the engine's CKKS error stay inside it, while the
ratio b/a = 15 keeps the degree low. Outside the range the error grows quickly (the series is fitted there only).

The fit minimises the *relative* error max |p(y) sqrt(y) - 1| (what a cosine sees: the score of two normalised
templates is cos * (1 + e1) (1 + e2)) with Lawson's iteratively re-weighted least squares in the Chebyshev basis
of x = (2y - a - b) / (b - a) on a 20,001-point grid. Measured maximum relative error on the range
(:func:`inverse_sqrt_table`), and depth = ceil(log2(d + 1)) levels for the Chebyshev sum:

====== ======= =========
degree depth   max rel err
====== ======= =========
7      3       7.0e-3
9      4       2.2e-3
11     4       7.1e-4
13     4       2.3e-4
**15** **4**   **7.6e-5**
17     5       2.5e-5
23     5       9.3e-7
31     5       1.2e-8
====== ======= =========

Degree 15 is the largest degree at depth 4; its error gives a cosine error <= 1.5e-4, below CKKS noise
effects on the decision and well inside the 1e-3 budget. Degree 31 would cost one more level.

Sign (decision only)
--------------------
The client may learn only accept/reject. With u = score (a cosine in [-1, 1]) and z = (u - tau) / R,
R = 1 + |tau| (so |z| <= 1), we evaluate a composite of odd degree-7 polynomials (Cheon, Kim, Kim & Lee,
Asiacrypt 2020): g3 first (it pushes small |z| away from 0 quickly), then f3 twice (order-4 convergence to +-1).
The first stage is written directly as a polynomial in u (shift and scale folded into its coefficients, so they
cost no level). Each stage is degree 7 = depth 3. Every stage is odd, maps [-1, 1] into [-1, 1] and has no
root in 0 < |x| <= 1 (g3 is not monotone near +-1, f3 is), so sign(F) = sign(u - tau) for every score
(up to CKKS noise where F ~ 0). Outside the *uncertain band* |u - tau| < delta, F is
within ``SIGN_TOLERANCE`` = 1e-2 of +-1, so it says (almost) nothing beyond the bit; inside the band F still has
the right sign but reveals how close the score is to tau. Measured band at tau = 0.23 (:func:`sign_table`):

================== ===== ==================
stages             depth delta (cosine)
================== ===== ==================
f3 f3              6     0.508
f3 f3 f3           9     0.241
**g3 f3 f3**       **9** **0.117**
g3 g3 f3 f3        12    0.026
g3 g3 g3 f3 f3     15    0.0058
================== ===== ==================

We use g3 f3 f3 (9 levels). A deployment with more levels to spare should take g3 g3 f3 f3.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.polynomial import chebyshev as cheb
from numpy.polynomial import polynomial as poly

from cryptoface.engine.template import NORM_SQ_HIGH, NORM_SQ_LOW, NORM_SQ_MAX, NORM_SQ_Q001  # noqa: F401

# Paper CryptoFaceNet4, LFW, v2 pipeline: ||e||^2 statistics of raw (un-normalised) embeddings; the range is the
# engine's (it scales its output so that ||t||^2 maps onto [-1, 1] with a constant add).
INV_SQRT_LOW = NORM_SQ_LOW
INV_SQRT_HIGH = NORM_SQ_HIGH
INV_SQRT_DEGREE = 15  # depth 4: LEVELS.normalise (cryptoface.params) = 1 + 4 + 1, kept equal by a test

# Odd degree-7 stages from Cheon, Kim, Kim & Lee (Asiacrypt 2020), coefficients of x^0..x^7:
# f3 = (35x - 35x^3 + 21x^5 - 5x^7) / 16 converges to +-1 with order 4 near +-1;
# g3 = (4589x - 16577x^3 + 25614x^5 - 12860x^7) / 2^10 pushes small |x| away from 0 much faster.
SIGN_POLYS: dict[str, tuple[float, ...]] = {
    "f3": (0.0, 35 / 16, 0.0, -35 / 16, 0.0, 21 / 16, 0.0, -5 / 16),
    "g3": (0.0, 4589 / 1024, 0.0, -16577 / 1024, 0.0, 25614 / 1024, 0.0, -12860 / 1024),
}
SIGN_STAGES: tuple[str, ...] = ("g3", "f3", "f3")  # depth 9 = LEVELS.decision, kept equal by a test
SIGN_TOLERANCE = 1e-2


def chebyshev_depth(degree: int) -> int:
    """Levels the encrypted Chebyshev sum of this degree costs (scalars included): ceil(log2(d + 1))."""
    return 0 if degree <= 0 else math.ceil(math.log2(degree + 1))


@dataclass(frozen=True)
class ChebyshevSeries:
    """p(y) = sum_k coeffs[k] T_k(x) with x = (2y - low - high) / (high - low)."""

    coeffs: tuple[float, ...]
    low: float = -1.0
    high: float = 1.0

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    @property
    def affine(self) -> tuple[float, float]:
        """(alpha, beta) with x = alpha * y + beta; (1, 0) when the domain is already [-1, 1]."""
        if (self.low, self.high) == (-1.0, 1.0):
            return 1.0, 0.0
        alpha = 2.0 / (self.high - self.low)
        return alpha, -(self.high + self.low) / (self.high - self.low)

    def __call__(self, y: np.ndarray | float) -> np.ndarray:
        alpha, beta = self.affine
        return cheb.chebval(alpha * np.asarray(y, dtype=np.float64) + beta, np.asarray(self.coeffs))


def fit_relative_minimax(
    func, low: float, high: float, degree: int, points: int = 20001, iterations: int = 60
) -> ChebyshevSeries:
    """Near-minimax fit of ``func`` in *relative* error (Lawson's algorithm) in the Chebyshev basis."""
    y = np.linspace(low, high, points)
    x = (2 * y - low - high) / (high - low)
    f = func(y)
    basis = cheb.chebvander(x, degree) / f[:, None]  # rows: T_k(x) / f(y), target 1
    weights = np.full(points, 1.0 / points)
    coeffs = np.zeros(degree + 1)
    for _ in range(iterations):
        sw = np.sqrt(weights)
        coeffs, *_ = np.linalg.lstsq(basis * sw[:, None], sw, rcond=None)
        err = np.abs(basis @ coeffs - 1.0)
        weights = weights * err
        total = weights.sum()
        if not total > 0:
            break
        weights /= total
    return ChebyshevSeries(tuple(float(c) for c in coeffs), float(low), float(high))


def _inv_sqrt(y: np.ndarray) -> np.ndarray:
    return 1.0 / np.sqrt(y)


@functools.lru_cache(maxsize=8)
def inverse_sqrt_series(
    degree: int = INV_SQRT_DEGREE, low: float = INV_SQRT_LOW, high: float = INV_SQRT_HIGH
) -> ChebyshevSeries:
    """The (deterministic, cached) fit of 1/sqrt(y) on [low, high] used for every template."""
    return fit_relative_minimax(_inv_sqrt, low, high, degree)


def inverse_sqrt_error(series: ChebyshevSeries, points: int = 100001) -> float:
    """Maximum relative error max |p(y) sqrt(y) - 1| over the series' range."""
    y = np.linspace(series.low, series.high, points)
    return float(np.max(np.abs(series(y) * np.sqrt(y) - 1.0)))


def inverse_sqrt_table(degrees=(7, 9, 11, 13, 15, 17, 23, 31)) -> list[tuple[int, int, float]]:
    """(degree, depth, max relative error) rows for the docstring table."""
    return [(d, chebyshev_depth(d), inverse_sqrt_error(inverse_sqrt_series(d))) for d in degrees]


# -- sign ---------------------------------------------------------------------------------------------
def sign_scale(tau: float) -> float:
    """R with z = (u - tau) / R in [-1, 1] for every cosine u in [-1, 1]."""
    return 1.0 + abs(float(tau))


def sign_stages(tau: float, stages: tuple[str, ...] = SIGN_STAGES) -> list[ChebyshevSeries]:
    """Chebyshev series of each stage on [-1, 1]; the first one takes the score u, the rest the previous value."""
    r = sign_scale(tau)
    z = np.array([-float(tau) / r, 1.0 / r])
    out = []
    for i, name in enumerate(stages):
        stage = np.asarray(SIGN_POLYS[name])
        if i == 0:  # f((u - tau) / R) expanded in powers of u: shift and scale cost no level
            shifted = np.zeros(1)
            zk = np.ones(1)
            for c in stage:
                shifted = poly.polyadd(shifted, c * zk)
                zk = poly.polymul(zk, z)
            stage = shifted
        out.append(ChebyshevSeries(tuple(float(c) for c in cheb.poly2cheb(stage))))
    return out


def sign_clear(u: np.ndarray | float, tau: float, stages: tuple[str, ...] = SIGN_STAGES) -> np.ndarray:
    """The composite sign polynomial in the clear (what the encrypted decision computes)."""
    v = np.asarray(u, dtype=np.float64)
    for s in sign_stages(tau, stages):
        v = s(v)
    return v


def sign_depth(stages: tuple[str, ...] = SIGN_STAGES) -> int:
    return sum(chebyshev_depth(len(SIGN_POLYS[name]) - 1) for name in stages)


def sign_band(
    tau: float, stages: tuple[str, ...] = SIGN_STAGES, tolerance: float = SIGN_TOLERANCE, points: int = 400001
) -> float:
    """Smallest delta such that |F(u) - sign(u - tau)| <= tolerance whenever |u - tau| >= delta, u in [-1, 1]."""
    u = np.linspace(-1.0, 1.0, points)
    bad = np.abs(sign_clear(u, tau, stages) - np.sign(u - tau)) > tolerance
    return float(np.max(np.abs(u[bad] - tau))) if bad.any() else 0.0


SIGN_CANDIDATES: tuple[tuple[str, ...], ...] = (
    ("f3", "f3"),
    ("f3", "f3", "f3"),
    ("g3", "f3", "f3"),
    ("g3", "g3", "f3", "f3"),
    ("g3", "g3", "g3", "f3", "f3"),
)


def sign_table(tau: float = 0.23, candidates=SIGN_CANDIDATES) -> list[tuple[str, int, float]]:
    """(stages, depth, band delta in cosine units) rows."""
    return [(" ".join(c), sign_depth(c), sign_band(tau, c)) for c in candidates]
