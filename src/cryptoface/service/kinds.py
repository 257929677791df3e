"""Which evaluation-key kinds a key set may hold: an explicit list derived from its CKKS parameters.

``relin`` plus ``rotation:<k>`` for every step the server can use: matching at stride 1 (normalise, score, pack
a gallery), the engine plan of the server's model, and the Net4 unit plan when the model runs as units
(``packing: "units"``). Anything else, a secret key under any spelling included, is refused by name before its
bytes are parsed, and no kind can be uploaded twice, so a key set is immutable once a kind is stored.
"""

from __future__ import annotations

import contextlib
from functools import lru_cache

from cryptoface.errors import ParameterError
from cryptoface.match.homomorphic import rotation_steps as matching_rotation_steps
from cryptoface.match.layout import TemplateLayout

RELIN = "relin"
PUBLIC = "public"


def rotation_kind(step: int) -> str:
    return f"rotation:{int(step)}"


@lru_cache(maxsize=32)
def allowed_kinds(slots: int, levels: int, resolution: int | None, units: bool = False) -> frozenset[str]:
    """Evaluation-key kinds for parameters with ``slots`` slots and ``levels`` levels and a model of ``resolution``
    (None: no model, matching only); ``units`` adds the Net4 unit plan's steps. Cached: plans take a moment."""
    steps = set(matching_rotation_steps(TemplateLayout(1), slots))
    if resolution is not None:
        from cryptoface.engine import rotation_steps_for
        from cryptoface.engine.units import unit_rotation_steps

        with contextlib.suppress(ParameterError):  # the model does not fit these parameters: no image probe will
            steps |= {int(k) % slots for k in rotation_steps_for(resolution, slots, levels)}
        if units:
            with contextlib.suppress(ParameterError):
                steps |= {int(k) % slots for k in unit_rotation_steps(slots, levels)}
    return frozenset({RELIN} | {rotation_kind(k) for k in steps if k % slots})


__all__ = ["PUBLIC", "RELIN", "allowed_kinds", "rotation_kind"]
