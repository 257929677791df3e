"""Levels that matching consumes after the engine's output level L_out (the engine reserves the score levels).

* ``NORMALISE_LEVELS`` = 6: ``t*t`` (1; the engine's ``TEMPLATE_SCALE`` makes ``||t||^2`` the Chebyshev variable
  up to a constant add), the degree-15 Chebyshev sum for 1/sqrt (4, scalars included), ``t' * p`` (1), where
  ``t'`` -- the template moved into the normalised layout -- is computed at L_out - 1 in parallel. Enrolled
  templates are stored at L_out - 6. A template whose scale is not ``TEMPLATE_SCALE`` costs one more level.
* ``SCORE_LEVELS`` = 1: probe * template; the ring-filling layouts make the sums cyclic, so no mask.
* ``DECISION_LEVELS`` = 9: three degree-7 sign stages g3 o f3 o f3 (3 each).

``SCORE_MATCH_LEVELS`` (= 7) is what 1:1 and 1:N with scores revealed to the client need; the engine's default
parameters reserve exactly that (``cryptoface.engine.params.MATCHING_RESERVE_LEVELS``). ``MATCH_LEVELS``
(= 16) adds the decision-only sign, which needs ``default_parameters(..., mode="decision")``; the service
refuses decision-only requests when the templates have too few levels left.
"""

from __future__ import annotations

from cryptoface.match.poly import INV_SQRT_DEGREE, SIGN_STAGES, chebyshev_depth, sign_depth

NORMALISE_LEVELS = 1 + chebyshev_depth(INV_SQRT_DEGREE) + 1
SCORE_LEVELS = 1
DECISION_LEVELS = sign_depth(SIGN_STAGES)
SCORE_MATCH_LEVELS = NORMALISE_LEVELS + SCORE_LEVELS
MATCH_LEVELS = NORMALISE_LEVELS + SCORE_LEVELS + DECISION_LEVELS
# What a stored (normalised) template must still have for scoring / deciding.
TEMPLATE_MIN_LEVEL_SCORE = SCORE_LEVELS
TEMPLATE_MIN_LEVEL_DECISION = SCORE_LEVELS + DECISION_LEVELS
