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
from cryptoface.engine.plan import Plan, plan_for_levels
from cryptoface.errors import ParameterError
from cryptoface.model.fused import FusedModel
from cryptoface.model.tail import ModelTail
from cryptoface.params import default_parameters

DEFAULT_FAMILY = layout.DEFAULT_FAMILY
DEFAULT_KEY_MODE = "pow2"  # ~27 keys (~4.2 GB at N = 2^16, OpenFHE) instead of ~300 exact-step keys


@lru_cache(maxsize=8)
def plan_for(resolution: int, slots: int, levels: int) -> Plan:
    """The default plan for ``resolution`` on parameters with ``slots`` slots and ``levels`` levels: the whole
    network, or its trunk where the levels say so (:meth:`~cryptoface.params.LevelBudget.plan_end`)."""
    try:
        return plan_for_levels(resolution, slots, levels, family=DEFAULT_FAMILY, key_mode=DEFAULT_KEY_MODE)
    except ValueError as exc:  # the layouts do not fit this ring
        raise ParameterError(f"encrypted inference at {resolution}x{resolution} needs a larger ring: {exc}") from exc


def _plan(backend: Any, resolution: int) -> Plan:
    return plan_for(int(resolution), int(backend.slots), int(backend.params.levels))


def rotation_steps_for(resolution: int, slots: int, levels: int | None = None) -> frozenset[int]:
    """Rotation steps the engine needs (the client generates exactly these keys)."""
    if levels is None:
        levels = default_parameters(resolution).levels
    return plan_for(int(resolution), int(slots), int(levels)).rotation_keys


def output_embedding(plan: Plan, values: np.ndarray, tail: ModelTail | None = None) -> np.ndarray:
    """Client side: the (256,) embedding in the decrypted slots of ``plan``'s output: the template read from its
    first copy, or the last block's output finished in the clear by ``tail`` (required then)."""
    if not plan.clear_tail:
        return plan.template.unpack(values)
    if tail is None:
        raise ValueError("the plan stops before the tail: finishing its output needs the model's tail")
    return tail.embedding(plan.output_layout.unpack([values]))


def decrypt_embedding(backend: Any, plan: Plan, model: FusedModel, ct: Any) -> np.ndarray:
    """Client side (tools, benchmarks): the (256,) embedding of ``plan``'s output ciphertext under ``backend``,
    finished with ``model``'s tail where the plan stops before it."""
    return output_embedding(plan, backend.decrypt(ct), ModelTail.of(model) if plan.clear_tail else None)


def encrypt_image(backend: Any, resolution: int, x: np.ndarray) -> list[Any]:
    """Client side: pack a preprocessed face (3, S, S) by the plan's input layout and encrypt it."""
    plan = _plan(backend, resolution)
    from cryptoface.engine.evaluator import pack_input

    return [backend.encrypt(v, plan.start_level) for v in pack_input(plan, x)]


def infer_template(
    backend: Any, model: FusedModel, cts: Sequence[Any], *, progress: bool = False, workers: int | None = None,
    plaintexts: Any = None, model_id: str = "", on_layer: Callable[[int, int, str], None] | None = None,
) -> tuple[Any, TemplateLayout | layout.PlanarLayout]:
    """Server side: the encrypted template (one ciphertext; with a clear tail the last block's output) and its
    layout from encrypted face inputs
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
    "decrypt_embedding",
    "encrypt_image",
    "infer_template",
    "output_embedding",
    "plan_for",
    "rotation_steps_for",
]
