"""Linear layers as generalised diagonals between layouts, and their baby-step/giant-step evaluation plan.

A linear layer maps input ciphertexts (one or more tensors, e.g. conv2's input and the block shortcut's
``h``) to output ciphertexts. Output ciphertext ``j`` is ``sum_(i, d) rot(in_i, d) * w_(i, d)`` where
``rot(x, d)[t] = x[t + d]`` and ``w_(i, d)`` is a weight vector over the output slots ("diagonal"):
the slot of an output element gets the weight of the input element that sits ``d`` slots further in
ciphertext ``i``. Zero padding and stride are built into the weights (out-of-range taps contribute
nothing; slots that hold no output element get weight 0, so they stay exactly zero).

Everything here is pure numpy: no backend, no encryption. One module on purpose (~630 lines): the diagonal
extraction, the baby-step/giant-step split and the cost model share the same index arithmetic, and splitting
them would scatter one derivation over several files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from cryptoface.engine.layout import PlanarLayout, TemplateLayout


# -- layer terms ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ConvTerm:
    """A per-patch conv-like map from input tensor ``source`` to the output tensor.

    ``weights`` has shape (n, C_out, C_in, k, k) (per patch, no sharing); ``None`` means structure only
    (plan counting). ``channel_diagonal`` marks a per-channel scale (only c_in == c_out is nonzero).
    """

    source: int
    kernel: int
    stride: int
    pad: int
    c_out: int
    c_in: int
    weights: np.ndarray | None = None
    channel_diagonal: bool = False


@dataclass(frozen=True, eq=False)
class PoolHeadTerm:
    """Average pool of ``window`` x ``window`` blocks then a per-patch dense head, into a template.

    ``head`` has shape (n, D, C * (H/window) * (W/window)) with the flatten index c * P + (wy * PW + wx).
    ``pre_steps`` are rotate-and-add steps applied to each input ciphertext first (no level), after which
    the anchor slot of each window holds the window sum (empty = no pre-reduction).
    """

    source: int
    window: int
    dim: int
    head: np.ndarray | None = None
    pre_steps: tuple[int, ...] = ()


Term = ConvTerm | PoolHeadTerm


# -- spatial patterns ------------------------------------------------------------------------------------
def spatial_patterns(
    pos_in: np.ndarray, pos_out: np.ndarray, kernel: int, stride: int, pad: int
) -> list[tuple[int, int, np.ndarray]]:
    """For each tap t = ky * k + kx: groups (t, delta, out_positions) with delta = pos_in - pos_out.

    Output pixel (oy, ox) reads input (oy * stride + ky - pad, ox * stride + kx - pad) when in range.
    """
    hi, wi = pos_in.shape
    ho, wo = pos_out.shape
    oy, ox = np.mgrid[0:ho, 0:wo]
    out = []
    for ky in range(kernel):
        for kx in range(kernel):
            iy = oy * stride + ky - pad
            ix = ox * stride + kx - pad
            ok = (iy >= 0) & (iy < hi) & (ix >= 0) & (ix < wi)
            if not ok.any():
                continue
            po = pos_out[ok]
            delta = pos_in[iy[ok], ix[ok]] - po
            for d in np.unique(delta):
                out.append((ky * kernel + kx, int(d), po[delta == d]))
    return out


# -- diagonal extraction -----------------------------------------------------------------------------------
@dataclass
class Diagonals:
    """Diagonals of one output ciphertext: ``keys[k] = (input ct index, offset)``, ``weights[k]`` a slot vector.

    ``weights`` is None when only the structure was computed.
    """

    in_ct: np.ndarray
    offset: np.ndarray
    entries: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (diagonal, slot, value), sorted
    _bounds: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.in_ct.size)

    def set_entries(self, diag: np.ndarray, slot: np.ndarray, value: np.ndarray) -> None:
        small = diag.astype(np.uint16) if len(self) < 1 << 16 else diag
        order = np.argsort(small, kind="stable")  # radix sort for 16-bit keys
        self.entries = (diag[order], slot[order], value[order])
        self._bounds = np.searchsorted(self.entries[0], np.arange(len(self) + 1))

    def vector(self, k: int, slots: int) -> np.ndarray:
        """Dense weight vector of diagonal ``k`` (entries for the same slot are summed)."""
        lo, hi = self._bounds[k], self._bounds[k + 1]
        return np.bincount(self.entries[1][lo:hi], weights=self.entries[2][lo:hi], minlength=slots)

    @property
    def weights(self) -> np.ndarray:
        """All dense diagonals (tests and small layers only)."""
        slots = int(self.entries[1].max()) + 1 if self.entries is not None and self.entries[1].size else 1
        return np.stack([self.vector(k, slots) for k in range(len(self))]) if len(self) else np.zeros((0, 1))


def _plane_pairs(
    term: ConvTerm, lin: PlanarLayout, lout: PlanarLayout, out_ct: int
) -> tuple[np.ndarray, ...]:
    """(out base, in ct, in base, g, co, ci) of every (output plane copy in ``out_ct``, input channel) pair."""
    slots = lout.slots
    r, g, co = np.nonzero(lout.ct == out_ct)
    b_out = lout.base[r, g, co]
    if term.channel_diagonal:
        ci = co[:, None]
        g2, co2, b2 = g[:, None], co[:, None], b_out[:, None]
    else:
        ci = np.broadcast_to(np.arange(term.c_in)[None, :], (g.size, term.c_in))
        g2 = np.broadcast_to(g[:, None], ci.shape)
        co2 = np.broadcast_to(co[:, None], ci.shape)
        b2 = np.broadcast_to(b_out[:, None], ci.shape)
    g2, co2, ci, b2 = (a.ravel() for a in (g2, co2, ci, b2))
    # choose the input copy that makes copy 0 of the output plane's offset smallest (mod slots): cyclic
    # channel rotations; another output copy takes the input copy shifted like itself (same offset, so both
    # output copies share the diagonal), else its own smallest offset
    cts = lin.ct[:, g2, ci]  # (copies, P)
    bases = lin.base[:, g2, ci]
    idx = np.arange(g2.size)
    b_ref = lout.base[0, g2, co2]
    rel = np.where(cts >= 0, (bases - b_ref[None, :]) % slots, slots + 1)
    want = (bases[np.argmin(rel, axis=0), idx] + b2 - b_ref) % slots
    same = (cts >= 0) & (bases % slots == want[None, :]) & (cts == cts[np.argmin(rel, axis=0), idx][None, :])
    rel_own = np.where(cts >= 0, (bases - b2[None, :]) % slots, slots + 1)
    best = np.where(same.any(axis=0), np.argmax(same, axis=0), np.argmin(rel_own, axis=0))
    return b2, cts[best, idx], bases[best, idx], g2, co2, ci


def conv_diagonals(
    terms: Sequence[ConvTerm],
    inputs: Sequence[PlanarLayout],
    in_ct_offsets: Sequence[int],
    lout: PlanarLayout,
    out_ct: int,
    with_weights: bool = True,
) -> Diagonals:
    """Diagonals of output ciphertext ``out_ct`` for a sum of conv terms.

    ``inputs[term.source]`` is the layout of a term's input; its ciphertexts are numbered from
    ``in_ct_offsets[term.source]`` in the layer's concatenated input list.
    """
    slots = lout.slots
    entries = []  # (keys, values or None, positions rows)
    for term in terms:
        lin = inputs[term.source]
        b_out, ct_in, b_in, g, co, ci = _plane_pairs(term, lin, lout, out_ct)
        glob = ct_in + in_ct_offsets[term.source]
        for tap, delta, opos in spatial_patterns(lin.pos, lout.pos, term.kernel, term.stride, term.pad):
            key = glob * slots + (b_in - b_out + delta) % slots
            vals = None
            if with_weights:
                ky, kx = divmod(tap, term.kernel)
                vals = term.weights[g, co, ci, ky, kx]
            entries.append((key, vals, b_out, opos))
    if not entries:
        return Diagonals(np.zeros(0, np.int64), np.zeros(0, np.int64))
    keys = np.unique(np.concatenate([e[0] for e in entries]))
    diag = Diagonals(keys // slots, keys % slots)
    if with_weights:
        ks, ps, vs = [], [], []
        for key, vals, b_out, opos in entries:
            k = np.searchsorted(keys, key)
            ks.append(np.repeat(k, opos.size))
            ps.append((b_out[:, None] + opos[None, :]).ravel())
            vs.append(np.repeat(vals, opos.size))
        diag.set_entries(np.concatenate(ks), np.concatenate(ps), np.concatenate(vs))
    return diag


@dataclass(eq=False)
class ConvStructure:
    """Weight-free diagonals of one output ciphertext of a conv layer, cached per plan.

    The diagonals are the same as :func:`conv_diagonals` (same ``in_ct``/``offset`` order). Each *item* is one
    (output plane copy, input channel, spatial pattern) triple: it writes weight ``w[widx]`` (an index into the
    layer's raveled term weights concatenated) at slots ``b_out + opos[pattern]`` of diagonal ``diag``. Items
    are sorted by diagonal; ``bounds[k]:bounds[k+1]`` are diagonal k's items. A few MB per layer, where the
    expanded (slot, value) entries are ~10^7 per layer.
    """

    in_ct: np.ndarray
    offset: np.ndarray
    diag: np.ndarray  # (I,) int32 per item
    b_out: np.ndarray  # (I,) int32
    widx: np.ndarray  # (I,) int32
    pat: np.ndarray  # (I,) int32
    opos_flat: np.ndarray  # all patterns' output positions concatenated
    opos_start: np.ndarray  # (P,)
    opos_len: np.ndarray  # (P,)
    bounds: np.ndarray  # (D + 1,)

    def __len__(self) -> int:
        return int(self.in_ct.size)

    def rows(self, ks: Sequence[int], weights: np.ndarray, slots: int, shift: int = 0) -> np.ndarray:
        """(len(ks), slots) dense weight vectors of diagonals ``ks``, each rolled right by ``shift``.

        No two items of a diagonal write the same slot (one output slot and one offset fix the input element,
        hence the channel pair and the tap), so a plain scatter suffices.
        """
        ks = np.asarray(ks, np.int64)
        lo, hi = self.bounds[ks], self.bounds[ks + 1]
        n_items = hi - lo
        items = np.repeat(lo - np.cumsum(n_items) + n_items, n_items) + np.arange(int(n_items.sum()))
        start = (self.b_out[items].astype(np.int64) + shift) % slots
        row_off = np.repeat(np.arange(ks.size) * slots, n_items)
        w = weights[self.widx[items]]
        pat = self.pat[items]
        out = np.zeros(ks.size * slots)
        for p in np.unique(pat).tolist():
            sel = np.flatnonzero(pat == p)
            opos = self.opos_flat[self.opos_start[p]:self.opos_start[p] + self.opos_len[p]]
            idx = start[sel][:, None] + opos[None, :]
            np.remainder(idx, slots, out=idx)
            idx += row_off[sel][:, None]
            out[idx] = w[sel][:, None]
        return out.reshape(ks.size, slots)


def term_weights(terms: Sequence[ConvTerm]) -> np.ndarray:
    """The raveled weights of ``terms`` concatenated (the vector :meth:`ConvStructure.rows` indexes)."""
    return np.concatenate([np.asarray(t.weights, dtype=np.float64).ravel() for t in terms])


def conv_structure(
    terms: Sequence[ConvTerm],
    inputs: Sequence[PlanarLayout],
    in_ct_offsets: Sequence[int],
    lout: PlanarLayout,
    out_ct: int,
) -> ConvStructure:
    """The :class:`ConvStructure` of output ciphertext ``out_ct`` (weights not needed: terms may be bare)."""
    slots = lout.slots
    n = lout.n_patches
    parts = []  # (keys, b_out, widx, pattern id)
    opos_all: list[np.ndarray] = []
    w_off = 0
    for term in terms:
        lin = inputs[term.source]
        b_out, ct_in, b_in, g, co, ci = _plane_pairs(term, lin, lout, out_ct)
        glob = ct_in + in_ct_offsets[term.source]
        k = term.kernel
        for tap, delta, opos in spatial_patterns(lin.pos, lout.pos, k, term.stride, term.pad):
            key = glob * slots + (b_in - b_out + delta) % slots
            widx = w_off + (((g * term.c_out + co) * term.c_in + ci) * k * k + tap)
            parts.append((key, b_out, widx, np.full(key.size, len(opos_all), np.int64)))
            opos_all.append(opos.astype(np.int64))
        w_off += n * term.c_out * term.c_in * k * k
    if not parts:
        z = np.zeros(0, np.int64)
        return ConvStructure(z, z, z, z, z, z, z, z, z, np.zeros(1, np.int64))
    keys_all = np.concatenate([p[0] for p in parts])
    keys, diag = np.unique(keys_all, return_inverse=True)
    order = np.argsort(diag, kind="stable")
    lens = np.array([len(o) for o in opos_all], np.int64)
    return ConvStructure(
        in_ct=keys // slots,
        offset=keys % slots,
        diag=diag[order].astype(np.int32),  # int32 items: half the cache (all values < 2^31)
        b_out=np.concatenate([p[1] for p in parts])[order].astype(np.int32),
        widx=np.concatenate([p[2] for p in parts])[order].astype(np.int32),
        pat=np.concatenate([p[3] for p in parts])[order].astype(np.int32),
        opos_flat=np.concatenate(opos_all),
        opos_start=np.cumsum(lens) - lens,
        opos_len=lens,
        bounds=np.searchsorted(diag[order], np.arange(keys.size + 1)),
    )


def pool_anchor_steps(lin: PlanarLayout, window: int) -> tuple[int, ...] | None:
    """Rotate-and-add steps that sum each window into its top-left pixel's slot, or None if irregular."""
    pos = lin.pos
    h, w = pos.shape
    if w < 2 or h < 2:
        return None
    sx = int(pos[0, 1] - pos[0, 0])
    sy = int(pos[1, 0] - pos[0, 0])
    yy, xx = np.mgrid[0:h, 0:w]
    anchor = pos[(yy // window) * window, (xx // window) * window]
    if not np.array_equal(pos, anchor + (yy % window) * sy + (xx % window) * sx):
        return None
    steps = []
    for s in (sx, sy):
        k = 1
        while k < window:
            steps.append(k * s)
            k *= 2
    if window & (window - 1):
        return None
    return tuple(steps)


def pool_head_diagonals(
    term: PoolHeadTerm,
    lin: PlanarLayout,
    in_ct_offset: int,
    template: TemplateLayout,
    slots: int,
    with_weights: bool = True,
) -> Diagonals:
    """Diagonals of the single template ciphertext for avg-pool + head summed over patches."""
    n, c, h, w = lin.shape
    win = term.window
    pw = w // win
    ph = h // win
    yy, xx = np.mgrid[0:h, 0:w]
    widx = (yy // win) * pw + (xx // win)  # window index per pixel
    if term.pre_steps:
        sel = (yy % win == 0) & (xx % win == 0)
        wscale = 1.0 / (win * win)
    else:
        sel = np.ones((h, w), bool)
        wscale = 1.0 / (win * win)
    pix_pos = lin.pos[sel]  # (S,)
    pix_win = widx[sel]
    cts = lin.ct[0]
    bases = lin.base[0]
    out_slots = template.slots_of(term.dim)
    keys_all, vals_all, pos_all = [], [], []
    for g in range(n):
        for cc in range(c):
            in_slot = bases[g, cc] + pix_pos  # (S,)
            key = (cts[g, cc] + in_ct_offset) * slots + (in_slot[None, :] - out_slots[:, None]) % slots  # (D, S)
            keys_all.append(key.ravel())
            pos_all.append(np.broadcast_to(out_slots[:, None], key.shape).ravel())
            if with_weights:
                col = cc * ph * pw + pix_win  # (S,)
                vals_all.append((term.head[g][:, col] * (wscale * template.scale)).ravel())
    keys = np.concatenate(keys_all)
    uk, inv = np.unique(keys, return_inverse=True)
    diag = Diagonals(uk // slots, uk % slots)
    if with_weights:
        diag.set_entries(inv.ravel(), np.concatenate(pos_all), np.concatenate(vals_all))
    return diag


@dataclass
class DenseDiagonals(Diagonals):
    """Diagonals held as a dense (diagonals, slots) matrix (the replicated pool+head: every slot is used)."""

    dense: np.ndarray | None = None

    def vector(self, k: int, slots: int) -> np.ndarray:
        return self.dense[k, :slots].copy()

    @property
    def weights(self) -> np.ndarray:
        return self.dense


def _pool_sources(term: PoolHeadTerm, lin: PlanarLayout) -> tuple[np.ndarray, np.ndarray, float]:
    """(pixel positions within a plane, pooled index of each, weight): window anchors after a pre-reduction
    (``term.pre_steps``), else every pixel with the 1/window^2 average folded into the head weights."""
    _, _, h, w = lin.shape
    win = term.window
    yy, xx = np.mgrid[0:h, 0:w]
    widx = (yy // win) * (w // win) + (xx // win)
    sel = ((yy % win == 0) & (xx % win == 0)) if term.pre_steps else np.ones((h, w), bool)
    return lin.pos[sel], widx[sel], 1.0 / (win * win)


def template_reduce_steps(template: TemplateLayout, slots: int) -> tuple[int, ...]:
    """Rotate-and-add steps that sum every replica class of a replicated template (``period * 2^r``)."""
    if template.replicas == 1:
        return ()
    if template.span != slots:
        raise ValueError(f"a replicated template must fill the ring: {template.span} != {slots} slots")
    return tuple(template.period << r for r in range(template.replicas.bit_length() - 1))


def pool_head_replicated_diagonals(
    term: PoolHeadTerm,
    lin: PlanarLayout,
    in_ct_offset: int,
    template: TemplateLayout,
    slots: int,
    with_weights: bool = True,
) -> DenseDiagonals:
    """Avg-pool + head into a *replicated* template, before the replica reduction.

    Output element i owns every slot ``s = i * stride (mod period)`` (``period = 256 * stride``, the template
    fills the ring). The diagonal with offset ``delta < period`` gives slot ``s = p - delta`` the product of
    the head weight (i, k) with the input at slot ``p`` of pooled value k whenever ``p - delta`` is a slot of i,
    i.e. ``delta = (p - i * stride) mod period``: each (i, k) pair lands in exactly one (diagonal, slot), so
    ``period`` diagonals per input ciphertext carry every product (up to ``slots`` useful entries each instead
    of 256). Summing the replica classes afterwards (:func:`template_reduce_steps`, no level) leaves element i
    complete at every slot it owns. Weights include the template scale.
    """
    n, c, h, w = lin.shape
    period = template.period
    if template.span != slots:
        raise ValueError(f"a replicated template must fill the ring: {template.span} != {slots} slots")
    pix, widx, wscale = _pool_sources(term, lin)
    cts = lin.ct[0]
    bases = lin.base[0]
    outs = np.arange(term.dim) * template.stride
    offsets = {}
    for j in np.unique(cts).tolist():
        src = (bases[cts == j][:, None] + pix[None, :]).ravel() % period
        offsets[j] = np.unique((np.unique(src)[:, None] - outs[None, :]) % period)
    keys = np.concatenate([(j + in_ct_offset) * slots + offsets[j] for j in sorted(offsets)])
    diag = DenseDiagonals(keys // slots, keys % slots)
    if not with_weights:
        return diag
    dense = np.zeros((len(diag), slots))
    for g in range(n):
        for cc in range(c):
            j = int(cts[g, cc])
            src = bases[g, cc] + pix  # (S,)
            delta = (src[None, :] - outs[:, None]) % period  # (D, S)
            rows = np.searchsorted(keys, (j + in_ct_offset) * slots + delta)
            dst = (src[None, :] - delta) % slots
            col = cc * (h // term.window) * (w // term.window) + widx
            dense[rows, dst] = term.head[g][:, col] * (wscale * template.scale)
    diag.dense = dense
    return diag


# -- baby-step / giant-step ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CostModel:
    """Seconds per operation at the top level (``levels`` remaining); lower levels scale with the limbs.

    Defaults: desilofhe 2.0.0 at N = 2^16, one thread (research/fhe-backends.md §3, §6.4 tuned malloc).
    """

    rotate: float = 0.338
    rotate_hoisted: float = 0.182
    hoist_precompute: float = 0.0
    mul_plain: float = 0.098
    encode: float = 0.019
    rescale: float = 0.059
    mul: float = 0.530
    add: float = 0.002
    levels: int = 25
    special_limbs: int = 7  # key switching also works on the special primes

    def scale(self, level: int, key_switch: bool = False) -> float:
        extra = self.special_limbs if key_switch else 0
        return (level + 1 + extra) / (self.levels + 1 + extra)


COST_MODELS = {
    "desilofhe": CostModel(),
    "openfhe": CostModel(rotate=0.300, rotate_hoisted=0.150, hoist_precompute=0.154, mul_plain=0.0086,
                         encode=0.033, rescale=0.061, mul=0.300, add=0.0038),
}


def naf(step: int, slots: int) -> list[int]:
    """Signed power-of-two digits (non-adjacent form) of ``step`` taken in (-slots/2, slots/2]."""
    s = step % slots
    if s > slots // 2:
        s -= slots
    digits = []
    k = 0
    while s:
        if s & 1:
            d = 2 - (s & 3)  # +1 or -1
            digits.append(d << k)
            s -= d
        s >>= 1
        k += 1
    return sorted(digits, key=abs, reverse=True)


def compose_tree(steps: Sequence[int], slots: int) -> dict[int, tuple[int, int]]:
    """Prefix tree reaching every step from 0 with power-of-two rotations: node -> (parent, digit).

    Nodes are normalised to 0..slots-1; the number of rotations is the number of nodes.
    """
    tree: dict[int, tuple[int, int]] = {}
    for s in steps:
        if s % slots == 0:
            continue
        cur = 0
        for d in _naf_cached(s, slots):
            nxt = (cur + d) % slots
            if nxt not in tree:
                tree[nxt] = (cur, d)
            cur = nxt
    return tree


@dataclass
class BsgsSplit:
    """offset = giant + baby (mod slots), babies in [lo, lo + n1) with lo = 0 or -n1/2."""

    n1: int
    centered: bool

    def split(self, offsets: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
        off = np.asarray(offsets) % slots
        b = (off + self.n1 // 2) % self.n1 - self.n1 // 2 if self.centered else off % self.n1
        g = (off - b) % slots
        return b % slots, g


@dataclass
class LayerCount:
    """Operation counts of one linear layer under a BSGS split and a key mode."""

    diagonals: int = 0
    baby_rotations: int = 0  # hoisted (exact keys) or composed (pow2 keys)
    hoist_groups: int = 0  # input ciphertexts with at least one nontrivial baby
    giant_rotations: int = 0
    pre_rotations: int = 0
    babies_hoisted: bool = True
    keys: set[int] = field(default_factory=set)

    @property
    def rotations(self) -> int:
        return self.baby_rotations + self.giant_rotations + self.pre_rotations


def count_split(
    diags: Sequence[Diagonals], split: BsgsSplit, slots: int, key_mode: str = "exact"
) -> LayerCount:
    """Counts for evaluating all output ciphertexts ``diags`` of a layer with ``split``."""
    res = LayerCount(babies_hoisted=key_mode == "exact")
    pairs = []
    for d in diags:
        res.diagonals += len(d)
        if not len(d):
            continue
        b, g = split.split(d.offset, slots)
        pairs.append(d.in_ct * slots + b)
        giants = np.unique(g)
        giants = giants[giants != 0]
        if key_mode == "exact":
            res.giant_rotations += giants.size
            res.keys |= set(giants.tolist())
        else:
            for gg in giants.tolist():
                dig = _naf_cached(gg, slots)
                res.giant_rotations += len(dig)
                res.keys |= {x % slots for x in dig}
    if not pairs:
        return res
    allp = np.unique(np.concatenate(pairs))
    in_cts, bab = allp // slots, allp % slots
    for i in np.unique(in_cts).tolist():
        nz = bab[(in_cts == i) & (bab != 0)]
        if not nz.size:
            continue
        res.hoist_groups += 1
        if key_mode == "exact":
            res.baby_rotations += nz.size
            res.keys |= set(nz.tolist())
        else:
            tree = _tree_cached(tuple(nz.tolist()), slots)
            res.baby_rotations += len(tree)
            res.keys |= {d % slots for _, d in tree.values()}
    return res


@lru_cache(maxsize=1 << 16)
def _naf_cached(step: int, slots: int) -> tuple[int, ...]:
    return tuple(naf(step, slots))


@lru_cache(maxsize=1024)
def _tree_cached(steps: tuple[int, ...], slots: int) -> dict[int, tuple[int, int]]:
    return compose_tree(steps, slots)


def layer_cost(count: LayerCount, model: CostModel, level: int) -> float:
    """Modelled seconds for a layer whose inputs are at ``level`` (giants run one level lower)."""
    ks_in = model.scale(level, True)
    ks_out = model.scale(max(level - 1, 0), True)
    lin = model.scale(level)
    return (
        count.hoist_groups * model.hoist_precompute * ks_in
        + count.baby_rotations * (model.rotate_hoisted if count.babies_hoisted else model.rotate) * ks_in
        + count.pre_rotations * model.rotate * ks_in
        + count.giant_rotations * model.rotate * ks_out
        + count.diagonals * (model.mul_plain + model.encode) * lin
    )


def choose_split(
    diags: Sequence[Diagonals], slots: int, model: CostModel, level: int, key_mode: str = "exact",
    allowed_keys: set[int] | None = None,
) -> tuple[BsgsSplit, LayerCount]:
    """The BSGS split (n1 a power of two, plain or centered babies) of least modelled cost.

    ``allowed_keys``: with a shared key budget, splits that need keys outside it cost an extra key each
    (charged as one top-level rotation per new key) so the planner prefers reusing keys.
    """
    best: tuple[float, BsgsSplit, LayerCount] | None = None
    n1 = 1
    while n1 <= slots:
        for centered in (False, True):
            if centered and n1 < 2:
                continue
            sp = BsgsSplit(n1, centered)
            cnt = count_split(diags, sp, slots, key_mode)
            cost = layer_cost(cnt, model, level)
            if allowed_keys is not None:
                cost += len(cnt.keys - allowed_keys) * model.rotate
            if best is None or cost < best[0] - 1e-12:
                best = (cost, sp, cnt)
        n1 *= 2
    assert best is not None
    return best[1], best[2]
