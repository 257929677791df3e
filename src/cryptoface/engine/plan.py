"""The evaluation plan: layouts, level schedule, BSGS splits, rotation keys and modelled costs per layer.

Pure functions of the architecture (resolution), the slot count, the layout family and the key mode;
no weights and no encryption. The engine (:mod:`cryptoface.engine.evaluator`) follows a plan exactly,
so the plan's ``rotation_keys`` are exactly the keys a run needs.

Level schedule (remaining levels, ``start = LEVELS.network_levels(resolution) + reserve`` or with ``clear_tail``
``LEVELS.trunk_levels(resolution) + reserve``, the budget of
:mod:`cryptoface.params`): stem 1, then per block q1 1, conv1 1, q2 1, conv2(+shortcut) 1 — the shortcut
reads ``h`` (q1's output, two levels higher) brought down to conv2's input level and is folded into conv2's
diagonals — then the pool quadratic 1 and pool+head 1: 23 levels, ending exactly at ``reserve``. A plan with
``clear_tail`` stops after the last block (21 levels): its output is the ``s3`` tensor, one ciphertext for Net4,
which the client decrypts and finishes in the clear (:mod:`cryptoface.model.tail`).

Key modes: ``exact`` — one rotation key per distinct baby/giant step, babies hoisted with
``rotate_many``; ``pow2`` — only keys for signed powers of two, every step composed from its
non-adjacent form (baby steps share prefixes in a tree; giant steps cost one rotation per digit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from cryptoface.engine import layout as lay
from cryptoface.engine.linear import (
    BsgsSplit,
    ConvTerm,
    CostModel,
    Diagonals,
    LayerCount,
    PoolHeadTerm,
    Term,
    choose_split,
    compose_tree,
    conv_diagonals,
    layer_cost,
    naf,
    pool_anchor_steps,
    pool_head_diagonals,
    pool_head_replicated_diagonals,
    template_reduce_steps,
)
from cryptoface.model import spec
from cryptoface.params import LEVELS

KEY_MODES = ("exact", "pow2")
TEMPLATE_STRIDES = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(eq=False)
class PlanLayer:
    """One step of the plan. ``kind`` is ``linear`` or ``quadratic``.

    ``weights`` names where the evaluator finds the parameters: ("stem",), ("block", i, "conv1"),
    ("block", i, "conv2"), ("block", i, "q1"|"q2"), ("pool_q",), ("head",).
    ``inputs`` names the stage tensors read (the last step's output is "x", a block's q1 output is "h").
    """

    name: str
    kind: str
    weights: tuple
    level_in: int
    level_out: int
    in_layouts: tuple[lay.PlanarLayout, ...]
    out_layout: lay.PlanarLayout | lay.TemplateLayout
    terms: tuple[Term, ...] = ()
    in_ct_offsets: tuple[int, ...] = ()
    split: BsgsSplit | None = None
    count: LayerCount | None = None
    pre_steps: tuple[int, ...] = ()
    post_steps: tuple[int, ...] = ()  # rotate-and-add after the layer (replicated template reduction), no level
    cost: float = 0.0
    out_cts: int = 0

    @property
    def n_in_cts(self) -> int:
        return sum(x.n_cts for x in self.in_layouts)


@dataclass(eq=False)
class Plan:
    family: str
    key_mode: str
    resolution: int
    n_patches: int
    slots: int
    layouts: dict[str, lay.PlanarLayout]
    template: lay.TemplateLayout | None  # None when the plan stops before the head (clear_tail)
    layers: list[PlanLayer]
    start_level: int
    end_level: int
    rotation_keys: frozenset[int] = field(default_factory=frozenset)
    clear_tail: bool = False  # the plan stops after the last block; its output is layouts["s3"], not a template

    @property
    def input_layout(self) -> lay.PlanarLayout:
        return self.layouts["input"]

    @property
    def output_layout(self) -> lay.PlanarLayout | lay.TemplateLayout:
        """What the plan's one output ciphertext holds: the template, or the last block's output."""
        return self.layouts["s3"] if self.clear_tail else self.template

    def totals(self) -> dict[str, float]:
        t = {"diagonals": 0, "rotations": 0, "baby_rotations": 0, "giant_rotations": 0, "pre_rotations": 0,
             "ct_ct_mults": 0, "cost_s": 0.0}
        for layer in self.layers:
            t["cost_s"] += layer.cost
            if layer.kind == "quadratic":
                t["ct_ct_mults"] += layer.out_cts
                t["diagonals"] += layer.out_cts  # the b * x plaintext multiply
                continue
            c = layer.count
            t["diagonals"] += c.diagonals
            t["rotations"] += c.rotations
            t["baby_rotations"] += c.baby_rotations
            t["giant_rotations"] += c.giant_rotations
            t["pre_rotations"] += c.pre_rotations
        t["keys"] = len(self.rotation_keys)
        t["levels"] = self.start_level - self.end_level
        return t

    def table(self) -> list[dict[str, object]]:
        rows = []
        for layer in self.layers:
            row: dict[str, object] = {"layer": layer.name, "kind": layer.kind, "level_in": layer.level_in,
                                      "level_out": layer.level_out, "in_cts": layer.n_in_cts,
                                      "out_cts": layer.out_cts, "cost_s": round(layer.cost, 2)}
            if layer.kind == "linear":
                c = layer.count
                row.update(diagonals=c.diagonals, baby_rot=c.baby_rotations, giant_rot=c.giant_rotations,
                           pre_rot=c.pre_rotations, n1=layer.split.n1, keys=len(c.keys), ct_ct=0)
            else:
                row.update(diagonals=layer.out_cts, baby_rot=0, giant_rot=0, pre_rot=0, n1=0, keys=0,
                           ct_ct=layer.out_cts)
            rows.append(row)
        return rows


# -- building ------------------------------------------------------------------------------------------------
def _stage_of(block: int) -> tuple[str, str]:
    stages = ["s1", "s1", "s2", "s2", "s3"]
    outs = ["s1", "s2", "s2", "s3", "s3"]
    return stages[block], outs[block]


def layer_diagonals(layer: PlanLayer, slots: int, with_weights: bool = False) -> list[Diagonals]:
    """Diagonals of every output ciphertext of a linear layer (weights taken from ``layer.terms``)."""
    if isinstance(layer.out_layout, lay.TemplateLayout):
        (term,) = layer.terms
        if layer.out_layout.replicas > 1:
            return [pool_head_replicated_diagonals(term, layer.in_layouts[0], 0, layer.out_layout, slots, with_weights)]
        return [pool_head_diagonals(term, layer.in_layouts[0], 0, layer.out_layout, slots, with_weights)]
    return [
        conv_diagonals(layer.terms, layer.in_layouts, layer.in_ct_offsets, layer.out_layout, j, with_weights)
        for j in range(layer.out_layout.n_cts)
    ]


def _finish_linear(layer: PlanLayer, slots: int, model: CostModel, key_mode: str) -> None:
    diags = layer_diagonals(layer, slots)
    split, count = choose_split(diags, slots, model, layer.level_in, key_mode)
    if layer.pre_steps:
        n_in = layer.in_layouts[0].n_cts
        if key_mode == "exact":
            count.pre_rotations = n_in * len(layer.pre_steps)
            count.keys |= {s % slots for s in layer.pre_steps}
        else:
            for s in layer.pre_steps:
                dig = naf(s, slots)
                count.pre_rotations += n_in * len(dig)
                count.keys |= {d % slots for d in dig}
    for s in layer.post_steps:  # counted with the pre-rotations: rotate-and-add outside the BSGS
        dig = [s] if key_mode == "exact" else naf(s, slots)
        count.pre_rotations += len(dig)
        count.keys |= {d % slots for d in dig}
    layer.split, layer.count = split, count
    layer.out_cts = len(diags)
    layer.cost = layer_cost(count, model, layer.level_in)


def _quadratic(name: str, weights: tuple, layout: lay.PlanarLayout, level: int, model: CostModel) -> PlanLayer:
    layer = PlanLayer(name, "quadratic", weights, level, level - 1, (layout,), layout, out_cts=layout.n_cts)
    s = model.scale(level)
    layer.cost = layout.n_cts * (model.mul * model.scale(level, True) + (model.mul_plain + model.encode
                                                                           + model.rescale) * s)
    return layer


def build_plan(
    resolution: int,
    slots: int,
    *,
    family: str = lay.DEFAULT_FAMILY,
    key_mode: str = "exact",
    reserve: int = 0,
    cost_model: CostModel | None = None,
    template_stride: int | None = None,
    clear_tail: bool = False,
) -> Plan:
    """The plan for CryptoFaceNet at ``resolution`` with ``slots`` slots, ending at level ``reserve``.

    ``clear_tail``: stop after the last block (``LEVELS.tail`` fewer levels); ValueError where that output spans
    more than one ciphertext.
    The template is replicated (``TemplateLayout(1, slots // 256)``, pool+head with ~256 diagonals per input
    ciphertext and a replica reduction) unless ``template_stride`` asks for the single-copy strided layout.
    """
    if key_mode not in KEY_MODES:
        raise ValueError(f"key_mode must be one of {KEY_MODES}")
    model = cost_model or CostModel()
    n = spec.grid_for(resolution) ** 2
    layouts = lay.stage_layouts(n, slots, family)
    if reserve < 0:
        raise ValueError(f"a plan cannot end below level 0 (reserve {reserve})")
    if clear_tail and layouts["s3"].n_cts != 1:
        raise ValueError(f"the last block's output spans {layouts['s3'].n_cts} ciphertexts at {resolution}x{resolution}"
                         "; a clear tail needs one")
    start = (LEVELS.trunk_levels(resolution) if clear_tail else LEVELS.network_levels(resolution)) + reserve
    level = start
    layers: list[PlanLayer] = []

    def linear(name, weights, ins, out, terms, pre=(), post=()):
        nonlocal level
        offs = tuple(int(v) for v in np.cumsum([0] + [x.n_cts for x in ins])[:-1])
        layer = PlanLayer(name, "linear", weights, level, level - 1, tuple(ins), out, tuple(terms), offs,
                          pre_steps=tuple(pre), post_steps=tuple(post))
        _finish_linear(layer, slots, model, key_mode)
        layers.append(layer)
        level -= 1
        return layer

    def quad(name, weights, layout):
        nonlocal level
        layers.append(_quadratic(name, weights, layout, level, model))
        level -= 1

    linear("stem", ("stem",), [layouts["input"]], layouts["s1"],
           [ConvTerm(0, 3, 1, 1, spec.STEM_CHANNELS, 3)])
    for i, bs in enumerate(spec.BLOCKS):
        sin, sout = _stage_of(i)
        lin, lout = layouts[sin], layouts[sout]
        quad(f"block{i}.q1", ("block", i, "q1"), lin)
        linear(f"block{i}.conv1", ("block", i, "conv1"), [lin], lout, [ConvTerm(0, 3, bs.stride, 1, bs.c_out, bs.c_in)])
        quad(f"block{i}.q2", ("block", i, "q2"), lout)
        if bs.identity_shortcut:
            sc = ConvTerm(1, 1, 1, 0, bs.c_out, bs.c_in, channel_diagonal=True)
        else:
            sc = ConvTerm(1, 1, bs.stride, 0, bs.c_out, bs.c_in)
        linear(f"block{i}.conv2", ("block", i, "conv2"), [lout, lin], lout,
               [ConvTerm(0, 3, 1, 1, bs.c_out, bs.c_out), sc])
    s3 = layouts["s3"]
    if clear_tail:
        return Plan(family, key_mode, resolution, n, slots, layouts, None, layers, start, level, _keys(layers),
                    clear_tail=True)
    quad("pool.q", ("pool_q",), s3)
    pre = pool_anchor_steps(s3, s3.pos.shape[0] // spec.POOL_GRID) or ()
    window = s3.pos.shape[0] // spec.POOL_GRID
    term = PoolHeadTerm(0, window, spec.EMBEDDING_DIM, pre_steps=tuple(pre))
    if template_stride is None:  # replicated template, pooling folded into the head (no pre-rotations)
        tmpl = lay.TemplateLayout(1, slots // spec.EMBEDDING_DIM)
        best = linear("pool+head", ("head",), [s3], tmpl, [PoolHeadTerm(0, window, spec.EMBEDDING_DIM)], (),
                      template_reduce_steps(tmpl, slots))
        strides = ()
    else:
        strides = (template_stride,)
        best = None
    saved = level
    for stride in strides:
        level = saved
        layer = linear("pool+head", ("head",), [s3], lay.TemplateLayout(stride), [term], pre)
        layers.pop()
        if best is None or layer.cost < best.cost:
            best = layer
    if strides:
        layers.append(best)
        level = saved - 1
    return Plan(family, key_mode, resolution, n, slots, layouts, best.out_layout, layers, start, level,
                _keys(layers))


def plan_for_levels(resolution: int, slots: int, levels: int, **kw) -> Plan:
    """:func:`build_plan` for parameters with ``levels`` levels: the whole network or its trunk, ending at the
    level :meth:`~cryptoface.params.LevelBudget.plan_end` reads from the count (ParameterError when too few)."""
    clear_tail, reserve = LEVELS.plan_end(resolution, levels)
    return build_plan(resolution, slots, reserve=reserve, clear_tail=clear_tail, **kw)


def _keys(layers: list[PlanLayer]) -> frozenset[int]:
    """The rotation keys the layers need (step 0 is no rotation)."""
    keys: set[int] = set()
    for layer in layers:
        if layer.count is not None:
            keys |= layer.count.keys
    keys.discard(0)
    return frozenset(keys)


def compare_families(resolution: int, slots: int, cost_model: CostModel | None = None,
                     key_mode: str = "exact") -> dict[str, dict[str, float]]:
    """Totals of :func:`build_plan` for every layout family (diagonals, rotations, keys, modelled s)."""
    return {fam: build_plan(resolution, slots, family=fam, key_mode=key_mode, cost_model=cost_model).totals()
            for fam in lay.FAMILIES}


def best_family(resolution: int, slots: int, cost_model: CostModel | None = None, key_mode: str = "exact") -> str:
    res = compare_families(resolution, slots, cost_model, key_mode)
    return min(res, key=lambda f: res[f]["cost_s"])


__all__ = ["Plan", "PlanLayer", "build_plan", "compare_families", "compose_tree", "plan_for_levels"]
