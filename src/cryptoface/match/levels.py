"""Levels that matching consumes after the engine's output level L_out (constants the engine can reserve).

* ``NORMALISE_LEVELS`` = 7: t*t (1), the affine map of ||t||^2 onto [-1, 1] (1), the degree-15 Chebyshev
  sum for 1/sqrt (4, scalars included), t * p(||t||^2) (1). Enrolled templates are stored at L_out - 7.
* ``SCORE_LEVELS`` = 2: probe * template (1) and the mask that keeps only score slots (1).
* ``DECISION_LEVELS`` = 9: three degree-7 sign stages g3 o f3 o f3 (3 each).

``MATCH_LEVELS`` is everything (normalise + score + decision = 18): an engine that leaves that many levels at its
output supports every mode. ``SCORE_MATCH_LEVELS`` (= 9) is the minimum for 1:1 and 1:N with scores revealed
to the client; the service refuses decision-only requests when the templates have too few levels left.
"""

from __future__ import annotations

from cryptoface.match.poly import INV_SQRT_DEGREE, SIGN_STAGES, chebyshev_depth, sign_depth

NORMALISE_LEVELS = 2 + chebyshev_depth(INV_SQRT_DEGREE) + 1
SCORE_LEVELS = 2
DECISION_LEVELS = sign_depth(SIGN_STAGES)
SCORE_MATCH_LEVELS = NORMALISE_LEVELS + SCORE_LEVELS
MATCH_LEVELS = NORMALISE_LEVELS + SCORE_LEVELS + DECISION_LEVELS
# What a stored (normalised) template must still have for scoring / deciding.
TEMPLATE_MIN_LEVEL_SCORE = SCORE_LEVELS
TEMPLATE_MIN_LEVEL_DECISION = SCORE_LEVELS + DECISION_LEVELS
