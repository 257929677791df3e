"""Encrypted CryptoFaceNet inference following a :class:`~cryptoface.engine.plan.Plan` on any CKKS backend.

Zero-slot invariant: every slot that holds no tensor element is exactly zero after every step. Linear
layers write only output slots (their diagonals are zero elsewhere); a quadratic
``q(x) = x^2 + b x + c`` adds ``c`` only on the slots of valid elements, so an empty slot stays
``0^2 + 0 + 0``. The only exception is the rotate-and-add pooling pre-reduction before the head, whose
garbage in non-anchor slots is never read: the head's diagonals only take anchor slots.

Linear layers: output ciphertext ``j`` = ``sum_g rot(sum_(i, b) rot(in_i, b) * rot(w_(i, g+b), -g), g)``:
baby rotations of every input ciphertext once per layer (hoisted with ``rotate_many``, or composed from
power-of-two keys with the children of each tree node hoisted together), one ``multiply_accumulate`` (hence
one rescale, one level) per giant step, each weight plaintext encoded at the level where it is used right
before its product and dropped after it -- or, given a :class:`~cryptoface.engine.plaintexts.PlaintextCache`
(the GPU mode), encoded once and kept.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from cryptoface.engine import layout as lay
from cryptoface.engine.linear import (
    ConvStructure,
    Diagonals,
    PoolHeadTerm,
    compose_tree,
    conv_diagonals,
    conv_structure,
    naf,
    pool_head_diagonals,
    pool_head_replicated_diagonals,
    term_weights,
)
from cryptoface.engine.plaintexts import PlaintextCache
from cryptoface.engine.plan import Plan, PlanLayer, layer_diagonals, plan_for_levels
from cryptoface.errors import ParameterError
from cryptoface.model import spec
from cryptoface.model.fused import FusedModel
from cryptoface.model.reference import split_patches


@dataclass
class LayerRecord:
    """What one plan step took: wall seconds, levels, ciphertexts and the modelled cost."""

    name: str
    kind: str
    level_in: int
    level_out: int
    seconds: float
    out_cts: int
    diagonals: int
    rotations: int
    modelled_s: float


# Engine threads used by default. Two threads on this project's 2-CPU machine take encrypted Net4 from
# 565 s to 272 s (OpenFHE, one OpenMP thread, with hoisted composed rotations; README); more than two
# has not been measured.
MAX_DEFAULT_WORKERS = 2


def default_workers() -> int:
    """Engine threads by default: one per CPU this process may use, at most :data:`MAX_DEFAULT_WORKERS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(MAX_DEFAULT_WORKERS, cpus))


def _stack(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(a, dtype=np.float64) for a in arrays])


_STRUCTURES: weakref.WeakKeyDictionary[PlanLayer, list[ConvStructure]] = weakref.WeakKeyDictionary()
_STRUCTURE_LOCK = threading.Lock()


@dataclass
class EngineCaches:
    """What an engine would otherwise build before its first inference, by plan layer name: the weight-free
    conv structures (per plan) and the weighted diagonals of the other linear layers (pool+head, per model).

    Made once by :mod:`cryptoface.engine.artefact` and loaded from its files; must come from the same plan
    and model as the engine that receives it."""

    structures: dict[str, list[ConvStructure]]
    diagonals: dict[str, list[Diagonals]]


def weighted_terms(model: FusedModel, layer: PlanLayer) -> tuple:
    """The layer's terms with the model's per-patch weights filled in."""
    nets = model.patches
    key = layer.weights
    out = []
    for term in layer.terms:
        if isinstance(term, PoolHeadTerm):
            out.append(replace(term, head=_stack([p.head for p in nets])))
            continue
        if key[0] == "stem":
            w = _stack([p.stem for p in nets])
        elif term.source == 0:
            w = _stack([getattr(p.blocks[key[1]], key[2]) for p in nets])
        else:  # shortcut of block key[1]
            blocks = [p.blocks[key[1]] for p in nets]
            if term.channel_diagonal:
                s = _stack([b.shortcut_scale for b in blocks])  # (n, C)
                c = s.shape[1]
                w = np.zeros((len(nets), c, c, 1, 1))
                w[:, np.arange(c), np.arange(c), 0, 0] = s
            else:
                w = _stack([b.shortcut_conv for b in blocks])[:, :, :, None, None]
        out.append(replace(term, weights=w))
    return tuple(out)


def pack_input(plan: Plan, x: np.ndarray) -> list[np.ndarray]:
    """Slot vectors of a preprocessed face (3, S, S) in the plan's input layout (client side, no weights)."""
    x = np.asarray(x, dtype=np.float64)
    s = plan.resolution
    if x.shape != (3, s, s):
        raise ValueError(f"input must be (3, {s}, {s}), got {x.shape}")
    grid = s // spec.PATCH_SIZE
    patches = np.stack(split_patches(x[None], grid))[:, 0]  # (n, 3, 32, 32)
    return plan.input_layout.pack(patches)


class EncryptedModel:
    """A fused model evaluated under CKKS by ``backend`` following ``plan`` (built if not given)."""

    def __init__(self, model: FusedModel, backend: Any, plan: Plan | None = None, *, workers: int | None = None,
                 family: str = lay.DEFAULT_FAMILY, key_mode: str = "pow2", caches: EngineCaches | None = None,
                 plaintexts: PlaintextCache | None = None, model_id: str = "") -> None:
        """``plaintexts``: keep weight plaintexts there between inferences (bound to this backend's name and
        parameters and ``model_id``, which must name the model's weights)."""
        self.model = model
        self.backend = backend
        if plan is None:
            plan = plan_for_levels(model.resolution, backend.slots, backend.params.levels, family=family,
                                   key_mode=key_mode)
        if plan.slots != backend.slots or plan.resolution != model.resolution:
            raise ParameterError("the plan was made for another slot count or resolution")
        if plan.start_level > backend.params.levels:
            raise ParameterError(f"the plan starts at level {plan.start_level} > {backend.params.levels}")
        self.plan = plan
        # Threads for independent giant steps and rotations (the backends release the GIL inside their
        # operations); None = default_workers(), or 1 on a backend that is not thread-safe.
        safe = bool(getattr(backend, "thread_safe", False))
        if workers is None:
            workers = default_workers() if safe else 1
        if int(workers) > 1 and not safe:
            raise ParameterError(f"the {getattr(backend, 'name', 'given')} backend cannot be called from several "
                                 f"threads at once; use workers=1 (--workers 1), not {workers}")
        self.workers = max(1, int(workers))
        self.records: list[LayerRecord] = []
        self.plaintexts = plaintexts
        if plaintexts is not None:
            plaintexts.check_scope(backend, model_id or f"{model.architecture}:{id(model)}")
        self._weighted: dict[str, list[Diagonals]] = {}
        if caches is not None:
            self._use_caches(caches)

    def _use_caches(self, caches: EngineCaches) -> None:
        """Seed the plan's structure cache and this engine's weighted diagonals from prepared ones."""
        for layer in self.plan.layers:
            if layer.name in caches.structures:
                with _STRUCTURE_LOCK:
                    _STRUCTURES[layer] = caches.structures[layer.name]
        self._weighted = dict(caches.diagonals)

    # -- client side --------------------------------------------------------------------------------------
    def pack_input(self, x: np.ndarray) -> list[np.ndarray]:
        return pack_input(self.plan, x)

    def encrypt_input(self, x: np.ndarray) -> list[Any]:
        """Client side: pack ``x`` (3, S, S) by the plan's input layout and encrypt at its start level."""
        return [self.backend.encrypt(v, self.plan.start_level) for v in self.pack_input(x)]

    def decrypt_template(self, ct: Any) -> np.ndarray:
        """Client side: the (256,) embedding from the output ciphertext (the template, or the last block's output
        finished in the clear by the model's tail)."""
        from cryptoface.engine import decrypt_embedding

        return decrypt_embedding(self.backend, self.plan, self.model, ct)

    # -- server side --------------------------------------------------------------------------------------
    def infer(
        self,
        cts: Sequence[Any],
        progress: bool = True,
        on_layer: Callable[[PlanLayer, list[Any]], None] | None = None,
    ) -> tuple[Any, lay.TemplateLayout | lay.PlanarLayout]:
        """Evaluate the plan; returns its output ciphertext and layout: the template, or with a clear tail the
        last block's output (:attr:`Plan.output_layout`).

        ``on_layer(layer, outputs)`` is called after every plan step (diagnostics: a client-side tool can
        decrypt intermediate ciphertexts to locate precision loss)."""
        if len(cts) != self.plan.input_layout.n_cts:
            raise ValueError(f"expected {self.plan.input_layout.n_cts} input ciphertexts, got {len(cts)}")
        self.records = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(self.plan.layers), desc="encrypted inference", unit="layer")
        x = list(cts)
        h: list[Any] = []
        try:
            for layer in self.plan.layers:
                if bar is not None:
                    bar.set_postfix_str(layer.name)
                t0 = time.perf_counter()
                if layer.kind == "quadratic":
                    x = self._quadratic(layer, x)
                    if layer.weights[-1] == "q1":
                        h = x
                else:
                    if layer.weights[0] == "block" and layer.weights[2] == "conv1":
                        ins = h
                    elif layer.weights[0] == "block":
                        ins = x + [self.backend.level_down(c, layer.level_in) for c in h]
                    else:
                        ins = x
                    x = self._linear(layer, ins)
                    x = self._add_bias(layer, x)
                dt = time.perf_counter() - t0
                c = layer.count
                self.records.append(LayerRecord(layer.name, layer.kind, layer.level_in, layer.level_out, dt,
                                                len(x), c.diagonals if c else layer.out_cts,
                                                c.rotations if c else 0, layer.cost))
                if on_layer is not None:
                    on_layer(layer, x)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        (out,) = x
        return out, self.plan.output_layout

    # -- steps --------------------------------------------------------------------------------------------
    def _quadratic(self, layer: PlanLayer, cts: list[Any]) -> list[Any]:
        be = self.backend
        key = layer.weights
        if key[0] == "pool_q":
            qs = [p.pool_q for p in self.model.patches]
        else:
            qs = [getattr(p.blocks[key[1]], key[2]) for p in self.model.patches]
        lout = layer.out_layout
        bvecs = lout.channel_vector(_stack([q.b for q in qs]))
        cvecs = lout.channel_vector(_stack([q.c for q in qs]))

        def one(j: int) -> Any:
            ct = cts[j]
            sq = be.mul(ct, ct)
            (pt,) = self._encoded((layer.name, j, 0), be.level(ct), lambda: [bvecs[j]])
            bx = be.mul_plain(ct, pt)
            return be.add_plain(be.rescale(be.add(sq, bx)), cvecs[j])

        return self._map(one, range(len(cts)))

    def _add_bias(self, layer: PlanLayer, cts: list[Any]) -> list[Any]:
        be = self.backend
        key = layer.weights
        if key[0] == "head":
            return [be.add_plain(cts[0], self.plan.template.pack(self.model.bias, be.slots))]
        if key[0] == "block" and key[2] == "conv2":
            blocks = [p.blocks[key[1]] for p in self.model.patches]
            if blocks[0].shortcut_bias is not None:
                vecs = layer.out_layout.channel_vector(_stack([b.shortcut_bias for b in blocks]))
                return [be.add_plain(c, v) for c, v in zip(cts, vecs, strict=True)]
        return cts

    def _encoded(self, key: tuple[str, int, int], level: int,
                 vectors: Callable[[], Any]) -> Iterator[Any]:
        """Plaintexts of ``vectors()`` at ``level``: from the cache when there is one, else encoded lazily."""
        if self.plaintexts is not None:
            return self.plaintexts.plaintexts(key, self.backend, level, vectors)
        return (self.backend.encode(v, level) for v in vectors())

    def _map(self, fn: Callable[[Any], Any], items: Any) -> list[Any]:
        items = list(items)
        if self.workers == 1 or len(items) == 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(fn, items))

    def _rotate(self, ct: Any, step: int) -> Any:
        slots = self.backend.slots
        if step % slots == 0:
            return ct
        if self.plan.key_mode == "exact":
            return self.backend.rotate(ct, step)
        for d in naf(step, slots):
            ct = self.backend.rotate(ct, d)
        return ct

    def _babies(self, ct: Any, steps: set[int]) -> dict[int, Any]:
        """ct rotated by every step in ``steps`` (normalised), hoisted or composed."""
        be = self.backend
        slots = be.slots
        out = {0: ct}
        nz = sorted(s for s in steps if s % slots)
        if not nz:
            return out
        if self.plan.key_mode == "exact":
            for s, r in zip(nz, self._rotate_many(ct, nz), strict=True):
                out[s] = r
            return out
        tree = compose_tree(nz, slots)
        depth: dict[int, int] = {0: 0}

        def dep(node: int) -> int:
            chain = []
            while node not in depth:
                chain.append(node)
                node = tree[node][0]
            for n in reversed(chain):
                depth[n] = depth[tree[n][0]] + 1
            return depth[chain[0]] if chain else depth[node]

        levels: dict[int, list[int]] = {}
        for node in sorted(tree):
            levels.setdefault(dep(node), []).append(node)
        first = levels.pop(1)
        nodes = {0: ct, **dict(zip(first, self._rotate_many(ct, [tree[n][1] for n in first]), strict=True))}
        for d in sorted(levels):
            # Children of one parent share a hoisted key-switch decomposition; parents of one depth are
            # independent (one thread each when workers > 1).
            families: dict[int, list[int]] = {}
            for n in levels[d]:
                families.setdefault(tree[n][0], []).append(n)
            fams = list(families.items())
            rotated = self._map(lambda f: be.rotate_many(nodes[f[0]], [tree[n][1] for n in f[1]]), fams)
            for (_, children), rs in zip(fams, rotated, strict=True):
                nodes.update(zip(children, rs, strict=True))
        for s in nz:
            out[s] = nodes[s]
        return out

    def _rotate_many(self, ct: Any, steps: list[int]) -> list[Any]:
        """Hoisted rotations, split into ``workers`` hoisted batches run in parallel when workers > 1."""
        if self.workers == 1 or len(steps) < 2:
            return self.backend.rotate_many(ct, steps)
        k = min(self.workers, len(steps))
        chunks = [steps[i::k] for i in range(k)]
        parts = self._map(lambda c: self.backend.rotate_many(ct, c), chunks)
        got = {s: r for c, rs in zip(chunks, parts, strict=True) for s, r in zip(c, rs, strict=True)}
        return [got[s] for s in steps]

    def _linear(self, layer: PlanLayer, ins: list[Any]) -> list[Any]:
        be = self.backend
        slots = be.slots
        level = layer.level_in
        ins = [be.level_down(c, level) if be.level(c) > level else c for c in ins]
        if layer.pre_steps:
            pre = []
            for c in ins:
                for s in layer.pre_steps:
                    c = be.add(c, self._rotate(c, s))
                pre.append(c)
            ins = pre
        conv = not isinstance(layer.out_layout, lay.TemplateLayout)
        weighted = None if conv else self._weighted.get(layer.name)  # prepared: structure and weights in one
        if conv:
            structure = self._conv_structures(layer)
        else:
            structure = weighted or layer_diagonals(layer, slots, with_weights=False)
        split = layer.split
        need: dict[int, set[int]] = {}
        for d in structure:
            if not len(d):
                continue
            b, _ = split.split(d.offset, slots)
            for i, bb in zip(d.in_ct.tolist(), b.tolist(), strict=True):
                need.setdefault(i, set()).add(bb)
        babies = {i: self._babies(ins[i], steps) for i, steps in need.items()}
        wlayer = replace(layer, terms=weighted_terms(self.model, layer))
        n_out = len(structure)
        outs = []
        if conv:  # cached structure, per inference only the weight gather and scatter
            wflat = term_weights(wlayer.terms)
            for j, st in enumerate(structure):
                outs.append(self._giants(st, babies, split, level, (layer.name, j),
                                         lambda ks, gg, st=st: st.rows(ks, wflat, slots, gg)))
        for j in range(n_out if not conv else 0):
            diag = weighted[j] if weighted else self._diagonals(wlayer, j)
            outs.append(self._giants(diag, babies, layer.split, level, (layer.name, j)))
            del diag
        for step in layer.post_steps:  # replicated template: sum the replica classes (no level)
            outs = [be.add(c, self._rotate(c, step)) for c in outs]
        return outs

    def _diagonals(self, layer: PlanLayer, j: int) -> Diagonals:
        slots = self.backend.slots
        if isinstance(layer.out_layout, lay.TemplateLayout):
            (term,) = layer.terms
            if layer.out_layout.replicas > 1:
                return pool_head_replicated_diagonals(term, layer.in_layouts[0], 0, layer.out_layout, slots)
            return pool_head_diagonals(term, layer.in_layouts[0], 0, layer.out_layout, slots)
        return conv_diagonals(layer.terms, layer.in_layouts, layer.in_ct_offsets, layer.out_layout, j)

    def _conv_structures(self, layer: PlanLayer) -> list[ConvStructure]:
        """The layer's per-output-ciphertext :class:`ConvStructure`: weight-free, so cached per plan layer
        (shared by every model and engine using the plan, dropped with the plan)."""
        with _STRUCTURE_LOCK:
            cached = _STRUCTURES.get(layer)
        if cached is None:
            cached = [conv_structure(layer.terms, layer.in_layouts, layer.in_ct_offsets, layer.out_layout, j)
                      for j in range(layer.out_layout.n_cts)]
            with _STRUCTURE_LOCK:
                _STRUCTURES[layer] = cached
        return cached

    def _giants(self, diag: Diagonals | ConvStructure, babies: dict[int, dict[int, Any]], split: Any, level: int,
                out: tuple[str, int], rows: Callable[[list[int], int], Any] | None = None) -> Any:
        """Output ciphertext ``out`` = (layer, index); ``rows(ks, g)`` gives diagonals ``ks`` rolled by ``g``
        (dense vectors)."""
        be = self.backend
        slots = be.slots
        if rows is None:
            def rows(ks: list[int], gg: int) -> list[np.ndarray]:
                return [np.roll(diag.vector(k, slots), gg) for k in ks]
        b, g = split.split(diag.offset, slots)
        order = np.argsort(g, kind="stable")
        groups: dict[int, list[int]] = {}
        for k in order.tolist():
            groups.setdefault(int(g[k]), []).append(k)

        def one(gg: int) -> Any:
            ks = groups[gg]
            cts = [babies[int(diag.in_ct[k])][int(b[k])] for k in ks]

            def vectors() -> Iterator[np.ndarray]:
                # Encoded one at a time, right before their product (unless cached): a plaintext at the top
                # level is 16 MB, and a giant step sums up to ~100 of them per worker.
                for lo in range(0, len(ks), 64):  # bounded float64 temporaries (64 x 256 KB)
                    yield from rows(ks[lo:lo + 64], gg)

            pts = self._encoded((out[0], out[1], gg), level, vectors)
            return self._rotate(be.multiply_accumulate(cts, pts), gg)

        parts = self._map(one, sorted(groups))
        acc = parts[0]
        for p in parts[1:]:
            acc = be.add(acc, p)
        return acc
