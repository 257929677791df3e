"""The engine's template contract: the scale of the encrypted embedding and the norm range it is made for.

Matching (:mod:`cryptoface.match`) normalises a template with a Chebyshev approximation of ``1/sqrt(y)``
on ``y = ||e||^2 in [NORM_SQ_LOW, NORM_SQ_HIGH]``, whose variable is ``x = 2y/(b-a) - (a+b)/(b-a)``.
The engine folds ``TEMPLATE_SCALE = sqrt(2/(b-a))`` into the head weights and bias, so the ciphertext holds
``t = TEMPLATE_SCALE * e`` and ``x = ||t||^2 - (a+b)/(b-a)`` costs a constant add instead of a level.
The cosine is scale-invariant; matching divides the scale back out for free (in a plaintext it multiplies
anyway). Matching imports these constants from here (the engine never imports matching).

Norm range: training-template statistics of the paper CryptoFaceNet4 on LFW (research/paper-net4-lfw.md,
v2 pipeline): q0.1% of ||e||^2 = 114.2, max = 576.8; the range is ``[q0.1%/2, 1.5 * max] = [57.1, 865.2]``
(see :mod:`cryptoface.match.poly` for the fit and its errors).
"""

from __future__ import annotations

import math

NORM_SQ_Q001 = 114.2  # 0.1 % quantile of ||e||^2 (paper Net4, LFW, v2 pipeline)
NORM_SQ_MAX = 576.8  # largest ||e||^2 seen
NORM_SQ_LOW = NORM_SQ_Q001 / 2.0  # a
NORM_SQ_HIGH = 1.5 * NORM_SQ_MAX  # b
TEMPLATE_SCALE = math.sqrt(2.0 / (NORM_SQ_HIGH - NORM_SQ_LOW))  # kappa: ||kappa e||^2 = 2 ||e||^2 / (b - a)
NORM_OFFSET = (NORM_SQ_HIGH + NORM_SQ_LOW) / (NORM_SQ_HIGH - NORM_SQ_LOW)  # x = ||t||^2 - NORM_OFFSET
TEMPLATE_REPLICAS = 128  # at N = 2^16: the engine's template fills the ring (element j at every slot = j mod 256)

__all__ = ["NORM_OFFSET", "NORM_SQ_HIGH", "NORM_SQ_LOW", "TEMPLATE_REPLICAS", "TEMPLATE_SCALE"]
