"""Patch-parallel work units: a CryptoFaceNet cut into independent Net4-sized sub-networks.

CryptoFaceNet's patch networks never mix until the head: the embedding is ``bias + sum_p head_p(net_p(x_p))``.
A *unit* is a group of at most :data:`PATCHES_PER_UNIT` (= 4) patches evaluated with the Net4 plan
(``plan_for(64, ...)``) as a sub-model whose bias is zero; its output is a *partial template* ciphertext (with a
clear tail, only for Net4's single unit, the last block's output, returned as it is) in the
engine's template layout (the same ``TemplateLayout(1, slots // 256)`` for every resolution). The template is
the sum of the partial templates plus the bias, added once: ``units - 1`` ciphertext additions and one
plaintext addition, no level.

* Net4 (64x64): 1 unit (the unit *is* the monolithic plan: same input packing, same keys, same result);
* Net9 (96x96): 3 units of 3 patches (each padded with one all-zero patch network and a zero input patch);
* Net16 (128x128): 4 units of 4 patches.

Every unit follows one plan, so the rotation keys are the Net4 plan's (a subset of the Net9 and Net16
plans' keys: a client that generated keys for its resolution already has them) and one worker can run any
unit. The client packs each unit's patches with the Net4 input layout (:func:`pack_units`,
:func:`encrypt_units`): Net16 sends 4 x 2 = 8 input ciphertexts, as many as the monolithic packing.
Cost: 4 Net4 units vs the monolithic Net16 plan, see :func:`unit_costs`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from cryptoface.engine.layout import TemplateLayout
from cryptoface.engine.plan import Plan
from cryptoface.model import spec
from cryptoface.model.fused import FusedModel, FusedPatchNet
from cryptoface.model.reference import split_patches

PATCHES_PER_UNIT = 4
UNIT_RESOLUTION = 64  # the Net4 plan: 4 patches of 32 x 32


def unit_patches(n_patches: int, per_unit: int = PATCHES_PER_UNIT) -> list[list[int]]:
    """Patch indices (raster order) of each unit: ``ceil(n / per_unit)`` balanced, contiguous groups."""
    if n_patches < 1:
        raise ValueError("no patches")
    k = -(-n_patches // per_unit)
    sizes = [n_patches // k + (1 if i < n_patches % k else 0) for i in range(k)]
    out, start = [], 0
    for s in sizes:
        out.append(list(range(start, start + s)))
        start += s
    return out


def unit_plan(slots: int, levels: int) -> Plan:
    """The plan every unit follows (the default Net4 plan for these parameters)."""
    from cryptoface.engine import plan_for

    return plan_for(UNIT_RESOLUTION, int(slots), int(levels))


def unit_rotation_steps(slots: int, levels: int) -> frozenset[int]:
    """Rotation keys the unit executor needs (the Net4 plan's)."""
    return unit_plan(slots, levels).rotation_keys


def _zero_patch(like: FusedPatchNet) -> FusedPatchNet:
    """A patch network with every weight zero: its head contribution is exactly 0 on any input."""

    def zero(obj: Any) -> Any:
        if obj is None:
            return None
        if isinstance(obj, np.ndarray):
            return np.zeros_like(obj)
        if dataclasses.is_dataclass(obj):
            return dataclasses.replace(obj, **{f.name: zero(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                                               if not isinstance(getattr(obj, f.name), int)})
        if isinstance(obj, tuple):
            return tuple(zero(o) for o in obj)
        return obj

    return zero(like)


def unit_models(model: FusedModel) -> list[FusedModel]:
    """One Net4-shaped sub-model per unit: its patches (padded with zero patches to 4), bias zero."""
    groups = unit_patches(model.n_patches)
    groups_nets = [[model.patches[i] for i in g] for g in groups]
    out = []
    for u, nets in enumerate(groups_nets):
        nets = nets + [_zero_patch(nets[0])] * (PATCHES_PER_UNIT - len(nets))
        out.append(FusedModel(
            architecture=spec.architecture_for(UNIT_RESOLUTION), resolution=UNIT_RESOLUTION, patches=tuple(nets),
            bias=np.zeros(spec.EMBEDDING_DIM),
            metadata={"unit": u, "of": len(groups_nets), "patches": groups[u], "parent": model.architecture},
        ))
    return out


def pack_units(x: np.ndarray, slots: int, levels: int) -> list[list[np.ndarray]]:
    """Client side: slot vectors of each unit's input (3, S, S) face, by the Net4 plan's input layout."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 3 or x.shape[0] != 3 or x.shape[1] != x.shape[2]:
        raise ValueError(f"input must be (3, S, S), got {x.shape}")
    grid = spec.grid_for(x.shape[1])
    patches = np.stack(split_patches(x[None], grid))[:, 0]  # (n, 3, 32, 32)
    layout = unit_plan(slots, levels).input_layout
    out = []
    for group in unit_patches(len(patches)):
        block = np.zeros((PATCHES_PER_UNIT, 3, spec.PATCH_SIZE, spec.PATCH_SIZE))
        block[: len(group)] = patches[group]
        out.append(layout.pack(block))
    return out


def encrypt_units(backend: Any, x: np.ndarray) -> list[list[Any]]:
    """Client side: each unit's input ciphertexts at the unit plan's start level."""
    plan = unit_plan(backend.slots, backend.params.levels)
    return [[backend.encrypt(v, plan.start_level) for v in unit] for unit in pack_units(x, backend.slots,
                                                                                         backend.params.levels)]


def combine(backend: Any, partials: Sequence[Any], bias: np.ndarray, layout: TemplateLayout) -> Any:
    """The template: partial templates summed in unit order, the bias added once (no level, no decryption)."""
    if not partials:
        raise ValueError("no partial templates")
    acc = partials[0]
    for p in partials[1:]:
        acc = backend.add(acc, p)
    return backend.add_plain(acc, layout.pack(np.asarray(bias, dtype=np.float64), backend.slots))


def unit_costs(resolution: int, slots: int, levels: int, cost_model: Any = None) -> dict[str, Any]:
    """Plan counts of the unit decomposition vs the monolithic plan for ``resolution`` (no encryption).

    ``cost_model`` (a :class:`~cryptoface.engine.linear.CostModel`) prices both with the same op costs."""
    from cryptoface.engine import DEFAULT_FAMILY, DEFAULT_KEY_MODE
    from cryptoface.engine.plan import plan_for_levels

    def plan(res: int) -> dict[str, float]:
        return plan_for_levels(res, slots, levels, family=DEFAULT_FAMILY, key_mode=DEFAULT_KEY_MODE,
                               cost_model=cost_model).totals()

    mono, unit = plan(resolution), plan(UNIT_RESOLUTION)
    n_units = len(unit_patches(spec.grid_for(resolution) ** 2))
    keys = ("diagonals", "rotations", "ct_ct_mults", "cost_s")
    total = {k: unit[k] * n_units for k in keys}
    return {
        "resolution": resolution, "units": n_units, "patches_per_unit": unit_patches(spec.grid_for(resolution) ** 2),
        "monolithic": {k: mono[k] for k in (*keys, "keys")},
        "per_unit": {k: unit[k] for k in (*keys, "keys")},
        "units_total": total,
        "combine": {"ct_adds": n_units - 1, "plain_adds": 1},
        "ratio_units_over_monolithic": {k: (total[k] / mono[k] if mono[k] else None) for k in keys},
    }


__all__ = [
    "PATCHES_PER_UNIT",
    "UNIT_RESOLUTION",
    "combine",
    "encrypt_units",
    "pack_units",
    "unit_costs",
    "unit_models",
    "unit_patches",
    "unit_plan",
    "unit_rotation_steps",
]
