"""Encrypted CryptoFaceNet inference: the engine's entry points for the client and the server.

The plan (layouts, diagonals, rotation keys) depends only on the resolution and the CKKS parameters, so
the client derives the same rotation-key set and input packing as the server without seeing the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from cryptoface.engine import layout
from cryptoface.engine.layout import TemplateLayout
from cryptoface.engine.plan import Plan, build_plan
from cryptoface.errors import ParameterError
from cryptoface.model.fused import FusedModel
from cryptoface.params import LEVELS, default_parameters

DEFAULT_FAMILY = layout.DEFAULT_FAMILY
DEFAULT_KEY_MODE = "pow2"  # ~27 keys (~4.2 GB at N = 2^16, OpenFHE) instead of ~300 exact-step keys


@lru_cache(maxsize=8)
def plan_for(resolution: int, slots: int, levels: int) -> Plan:
    """The default plan for ``resolution`` on parameters with ``slots`` slots and ``levels`` levels."""
    network = LEVELS.network_levels(resolution)
    reserve = levels - network
    if reserve < 0:
        raise ParameterError(f"the network needs {network} levels, the parameters give {levels}")
    try:
        return build_plan(resolution, slots, family=DEFAULT_FAMILY, key_mode=DEFAULT_KEY_MODE, reserve=reserve)
    except ValueError as exc:  # the layouts do not fit this ring
        raise ParameterError(f"encrypted inference at {resolution}x{resolution} needs a larger ring: {exc}") from exc


def _plan(backend: Any, resolution: int) -> Plan:
    return plan_for(int(resolution), int(backend.slots), int(backend.params.levels))


def rotation_steps_for(resolution: int, slots: int, levels: int | None = None) -> frozenset[int]:
    """Rotation steps the engine needs (the client generates exactly these keys)."""
    if levels is None:
        levels = default_parameters(resolution).levels
    return plan_for(int(resolution), int(slots), int(levels)).rotation_keys


def encrypt_image(backend: Any, resolution: int, x: np.ndarray) -> list[Any]:
    """Client side: pack a preprocessed face (3, S, S) by the plan's input layout and encrypt it."""
    plan = _plan(backend, resolution)
    from cryptoface.engine.evaluator import pack_input

    return [backend.encrypt(v, plan.start_level) for v in pack_input(plan, x)]


def infer_template(
    backend: Any, model: FusedModel, cts: Sequence[Any], *, progress: bool = False, workers: int | None = None,
    plaintexts: Any = None, model_id: str = "", on_layer: Callable[[int, int, str], None] | None = None,
) -> tuple[Any, TemplateLayout]:
    """Server side: the encrypted template (one ciphertext) and its layout from encrypted face inputs
    (``workers`` engine threads; None = one per CPU, at most two, on a thread-safe backend, else one;
    ``plaintexts``: a :class:`~cryptoface.engine.plaintexts.PlaintextCache` for ``model_id``'s weights;
    ``on_layer(done, total, name)`` after every plan layer: progress, and a point where a caller may abort)."""
    from cryptoface.engine.evaluator import EncryptedModel

    engine = EncryptedModel(model, backend, _plan(backend, model.resolution), workers=workers,
                            plaintexts=plaintexts, model_id=model_id)
    hook = None
    if on_layer is not None:
        names = [layer.name for layer in engine.plan.layers]
        position = {id(layer): i for i, layer in enumerate(engine.plan.layers)}

        def hook(layer: Any, _outputs: list[Any]) -> None:
            on_layer(position[id(layer)] + 1, len(names), layer.name)

    return engine.infer(cts, progress=progress, on_layer=hook)


__all__ = [
    "TemplateLayout",
    "encrypt_image",
    "infer_template",
    "plan_for",
    "rotation_steps_for",
]
