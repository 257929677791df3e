"""Encrypted matching on the backend protocol: normalise, 1:1 score, 1:N packed scores, decision only.

Every function takes a :class:`~cryptoface.backends.protocol.CkksBackend` (server side: no secret key) and
ciphertexts; nothing here decrypts. Levels follow the protocol's bookkeeping: each ``mul``/``mul_plain``/
``mul_scalar`` is followed by one ``rescale``; the level costs are rows of :data:`cryptoface.params.LEVELS`.

Normalisation takes a raw template in any :class:`TemplateLayout` (the engine's replicated one, or a single
copy with any stride, which is first replicated over the ring by rotations) and returns the *normalised
layout* (:func:`normalised_layout`): element j at slot ``S * j`` with ``S = slots / 256``, zeros elsewhere.
In that layout every score sum is a cyclic rotate-and-add over the whole ring (steps ``S * 2^k``), so

* 1:1: every slot ``= 0 (mod S)`` holds the cosine, all others are zero: no mask level;
* 1:N: template n of a gallery sits at slots ``S * j + n`` (a rotation, no level) and slot s of the result
  holds the score of template ``s mod S``: every slot is a score, so again no mask level. With one level to
  spare (the refresh protocol's fresh templates), :func:`grouped_gallery` turns 16 chunks into 16 masked,
  rotated ciphertexts once, so that scoring them takes 16 products and 4 rotations and one answer carries their
  scores (scoring in process), and :func:`dense_scores` masks each chunk's scores to one block so that one answer
  carries ``slots`` scores (scoring sharded over an executor).

The move from the engine's replicated layout (element j at every slot ``= j mod 256``) into the normalised
layout is a 0/1 permutation with 256 diagonals (BSGS 16 x 16, 30 rotations): one level, computed in parallel
with ``||t||^2`` and the Chebyshev sum, so it costs no depth. Levels: ``t*t`` 1, Chebyshev 4, ``t'*p`` 1 = 6;
score 1.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from cryptoface.backends.protocol import CkksBackend, normalise_step
from cryptoface.engine.linear import compose_tree, naf
from cryptoface.errors import ParameterError
from cryptoface.match.layout import (
    EMBEDDING_DIM,
    GalleryLayout,
    TemplateLayout,
    check_layout,
    dense_slots,
    gallery_layout,
    normalised_layout,
)
from cryptoface.match.poly import SIGN_STAGES, ChebyshevSeries, inverse_sqrt_series, sign_stages
from cryptoface.params import LEVELS

_TINY = 1e-13  # relative size under which a polynomial coefficient is treated as zero
_LOG_DIM = int(math.log2(EMBEDDING_DIM))
_BABIES = 16  # baby steps of the layout permutation (256 = 16 x 16 diagonals)
# 1:N: gallery chunks per group of a grouped gallery (grouped_gallery). R chunks cost R products and log2(256 / R)
# rotations, and one answer carries R chunks' scores: 16 keeps 10,000 templates within 40 answers (5.2 MB on the
# matching ring) at 4 rotations per 16 chunks instead of 8 per chunk
GROUP_CHUNKS = 16


# -- layouts ------------------------------------------------------------------------------------------
def _filled(layout: TemplateLayout, slots: int) -> TemplateLayout:
    """The layout after replicating ``layout`` over the whole ring."""
    check_layout(layout, slots)
    return TemplateLayout(layout.stride, slots // layout.period, layout.scale)


def _fill_steps(layout: TemplateLayout, slots: int) -> list[int]:
    steps = []
    span = layout.span
    while span < slots:
        steps.append(-span)
        span *= 2
    return steps


def _permutation_offsets(stride: int, slots: int) -> np.ndarray:
    """Offset (a multiple of ``stride`` below ``256 * stride``) that brings element j to slot ``S * j``."""
    m = (slots // EMBEDDING_DIM) // stride
    j = np.arange(EMBEDDING_DIM)
    return stride * ((j * (1 - m)) % EMBEDDING_DIM)


def _permutation_steps(stride: int, slots: int) -> tuple[list[int], list[int]]:
    """(baby, giant) rotation steps of the move into the normalised layout (empty if already there)."""
    if stride * EMBEDDING_DIM == slots:
        return [], []
    off = _permutation_offsets(stride, slots)
    unit = _BABIES * stride
    babies = sorted({int(o % unit) for o in off} - {0})
    giants = sorted({int(o - o % unit) for o in off} - {0})
    return babies, giants


def normalise_levels(layout: TemplateLayout) -> int:
    """Levels :func:`normalise` takes for this layout: 6, or 7 when its scale is not the engine's."""
    return LEVELS.normalise + (0 if _scale_matches(layout, inverse_sqrt_series()) else 1)


def _scale_matches(layout: TemplateLayout, series: ChebyshevSeries) -> bool:
    alpha, _ = series.affine
    return abs(layout.scale**2 / alpha - 1.0) < 1e-12


# -- keys ---------------------------------------------------------------------------------------------
def rotation_steps(layout: TemplateLayout, slots: int) -> frozenset[int]:
    """Rotation steps (0..slots-1) that normalisation, scoring and 1:N packing need for this layout."""
    check_layout(layout, slots)
    s = layout.stride
    steps = {normalise_step(k, slots) for k in _fill_steps(layout, slots)}
    steps |= {s << k for k in range(_LOG_DIM)}  # ||t||^2
    babies, giants = _permutation_steps(s, slots)  # composed from signed powers of two: no extra keys
    steps |= {normalise_step(d, slots) for k in babies + giants for d in naf(k, slots)}
    gallery = gallery_layout(slots)
    steps |= {gallery.stride << k for k in range(_LOG_DIM)}  # scores
    steps |= {normalise_step(-k, slots) for k in gallery.pack_steps()}
    return frozenset(k for k in steps if k)


# -- building blocks ----------------------------------------------------------------------------------
def rotate_sum(backend: CkksBackend, ct: Any, stride: int, count: int = EMBEDDING_DIM, broadcast: bool = False) -> Any:
    """Slot i gets sum_{m < count} ct[i + m * stride] (log2(count) rotations).

    With ``broadcast`` every layout slot ``j * stride`` (j < count) gets the full sum: a copy rotated right by
    ``count * stride`` is added first (one more rotation), unless the layout already fills the ring cyclically.
    """
    if broadcast and count * stride != backend.slots:
        if 2 * count * stride > backend.slots:
            raise ParameterError(f"broadcast sum of {count} x stride {stride} needs {2 * count * stride} slots")
        ct = backend.add(ct, backend.rotate(ct, -count * stride))
    step = stride
    while step < count * stride:
        ct = backend.add(ct, backend.rotate(ct, step))
        step *= 2
    return ct


def replicate(backend: CkksBackend, t: Any, layout: TemplateLayout) -> tuple[Any, TemplateLayout]:
    """A single-copy (or partly replicated) template copied over the whole ring (no level)."""
    for step in _fill_steps(layout, backend.slots):
        t = backend.add(t, backend.rotate(t, step))
    return t, _filled(layout, backend.slots)


def _tree_rotations(backend: CkksBackend, t: Any, steps: list[int]) -> dict[int, Any]:
    """``t`` rotated by every step, composed along a shared power-of-two prefix tree: {step: ciphertext}.

    Iterative on purpose: a recursive closure over the result dict is a reference cycle, and the ciphertexts
    it holds (tens of MB of C++ memory each, invisible to the garbage collector's thresholds) then outlive
    the call; on OpenFHE that grew a server by ~40 MB per normalisation.
    """
    tree = compose_tree(steps, backend.slots)
    rotated = {0: t}
    for step in steps:
        path, node = [], step
        while node not in rotated:
            path.append(node)
            node = tree[node][0]
        for node in reversed(path):
            parent, digit = tree[node]
            rotated[node] = backend.rotate(rotated[parent], digit)
    return rotated


def to_normalised_layout(backend: CkksBackend, t: Any, layout: TemplateLayout) -> Any:
    """A ring-filling template moved to slot ``S * j`` per element j, zeros elsewhere (1 level, scale kept).

    256 0/1 diagonals in a 16 x 16 baby-step/giant-step split, one rescale per giant; every rotation is composed
    from signed powers of two (babies share prefixes in a tree), so it needs no keys beyond the engine's.
    """
    slots = backend.slots
    if layout.span != slots:
        raise ParameterError("the template must fill the ring first (see replicate)")
    target = np.arange(EMBEDDING_DIM) * (slots // EMBEDDING_DIM)
    if layout.stride * EMBEDDING_DIM == slots:  # already there (single copy at stride S)
        return t
    off = _permutation_offsets(layout.stride, slots)
    unit = _BABIES * layout.stride
    baby = off % unit
    giant = off - baby
    rotated = _tree_rotations(backend, t, sorted(set(baby.tolist()) - {0}))
    level = backend.level(t)
    acc = None
    for g in sorted(set(giant.tolist())):
        cts, pts = [], []
        for j in np.nonzero(giant == g)[0].tolist():
            w = np.zeros(slots)
            w[(target[j] + g) % slots] = 1.0  # rot(w_d, -g): the giant rotation moves it back to S * j
            cts.append(rotated[int(baby[j])])
            pts.append(backend.encode(w, level))
        part = backend.multiply_accumulate(cts, pts)
        for d in naf(g, slots) if g else []:
            part = backend.rotate(part, d)
        acc = part if acc is None else backend.add(acc, part)
    return acc


def _scaled(backend: CkksBackend, ct: Any, value: float) -> Any:
    return backend.rescale(backend.mul_scalar(ct, float(value)))


def _add(backend: CkksBackend, a: Any | None, b: Any | None) -> Any | None:
    if a is None:
        return b
    if b is None:
        return a
    return backend.add(a, b)


class _Chebyshev:
    """Evaluates sum_k c_k T_k(x) on a ciphertext x with depth ceil(log2(d + 1)), scalars included.

    T_k are built by T_2k = 2 T_k^2 - 1 and T_2k+1 = 2 T_k T_k+1 - T_1 (depth ceil(log2 k)). A series of
    degree d in [b, 2b) with b = 2^(m-1) is split as low(x) + 2 T_b(x) q(x) using T_{b+a} = 2 T_a T_b - T_{b-a}:
    q has degree < b (depth m-1) and T_b depth m-1, so the product costs depth m and no scalar multiplication
    sits on top of it; the scalars go on the low-degree terms, which have a level to spare.
    """

    def __init__(self, backend: CkksBackend, x: Any) -> None:
        self.backend = backend
        self.powers: dict[int, Any] = {1: x}

    def t(self, k: int) -> Any:
        if k not in self.powers:
            be = self.backend
            h = k // 2
            p = be.mul(self.t(h), self.t(k - h))
            r = be.rescale(be.add(p, p))
            self.powers[k] = be.add_plain(r, np.full(be.slots, -1.0)) if k % 2 == 0 else be.sub(r, self.t(1))
        return self.powers[k]

    def sum(self, coeffs: Sequence[float]) -> tuple[Any | None, float]:
        """(ciphertext of the non-constant part or None, constant term)."""
        c = list(coeffs)
        scale = max((abs(v) for v in c), default=0.0)
        while len(c) > 1 and abs(c[-1]) <= _TINY * scale:
            c.pop()
        d = len(c) - 1
        if d <= 0:
            return None, (c[0] if c else 0.0)
        if d & (d - 1) == 0:  # power of two: c_d T_d costs log2(d) + 1 = ceil(log2(d + 1))
            low_ct, low_c = self.sum(c[:d])
            return _add(self.backend, _scaled(self.backend, self.t(d), c[d]), low_ct), low_c
        b = 1 << (math.ceil(math.log2(d + 1)) - 1)
        low = c[: b + 1]
        q = [0.0] * (d - b + 1)
        for a in range(1, d - b + 1):
            q[a] = c[b + a]
            low[b - a] -= c[b + a]
        q_ct, q_c = self.sum(q)
        low[b] += 2.0 * q_c
        prod = None
        if q_ct is not None:
            p = self.backend.mul(self.t(b), q_ct)
            prod = self.backend.rescale(self.backend.add(p, p))
        low_ct, low_c = self.sum(low)
        return _add(self.backend, prod, low_ct), low_c


def chebyshev(backend: CkksBackend, x: Any, series: ChebyshevSeries) -> Any:
    """Encrypted p(x) for a series on [-1, 1] (x must already be in the series' variable)."""
    ct, const = _Chebyshev(backend, x).sum(series.coeffs)
    if ct is None:
        raise ValueError("constant polynomial: nothing to evaluate")
    return backend.add_plain(ct, np.full(backend.slots, const)) if const else ct


# -- matching -----------------------------------------------------------------------------------------
def norm_squared(backend: CkksBackend, t: Any, layout: TemplateLayout) -> Any:
    """||t||^2 in every slot ``= 0 (mod stride)`` of a ring-filling template (1 level, 8 rotations)."""
    s = check_layout(layout, backend.slots)
    return rotate_sum(backend, backend.rescale(backend.mul(t, t)), s)


def normalise(backend: CkksBackend, t: Any, layout: TemplateLayout, series: ChebyshevSeries | None = None) -> Any:
    """e * p(||e||^2) with p ~ 1/sqrt for the template ``t = scale * e``, in :func:`normalised_layout`.

    6 levels when ``layout.scale`` is the engine's ``TEMPLATE_SCALE`` (``||t||^2`` is already the Chebyshev
    variable up to a constant), 7 otherwise (one scalar multiply). ``1 / scale`` is folded into the
    Chebyshev coefficients; the layout permutation runs at the top level, in parallel with the norm.
    """
    series = series or inverse_sqrt_series()
    t, full = replicate(backend, t, layout)
    y = norm_squared(backend, t, full)
    alpha, beta = series.affine
    ratio = alpha / full.scale**2
    # the constant only where ||t||^2 is: the empty slots (y = 0) stay at x = 0, inside [-1, 1]
    shift = np.zeros(backend.slots)
    shift[:: full.stride] = beta
    if _scale_matches(full, series):
        x = backend.add_plain(y, shift) if beta else y
    else:
        x = backend.add_plain(_scaled(backend, y, ratio), shift)
    unscaled = ChebyshevSeries(tuple(c / full.scale for c in series.coeffs))
    p = chebyshev(backend, x, unscaled)
    moved = to_normalised_layout(backend, t, full)
    return backend.rescale(backend.mul(moved, p))


def cosine(backend: CkksBackend, probe: Any, template: Any, layout: TemplateLayout | None = None) -> Any:
    """<probe, template> of two normalised templates in every slot ``= 0 (mod S)``, zeros elsewhere.

    1 level, 8 rotations; the sum is cyclic over the ring, so nothing but the score is in the result.
    ``layout`` is accepted for compatibility and ignored (normalised templates have one layout).
    """
    s = normalised_layout(backend.slots).stride
    return rotate_sum(backend, backend.rescale(backend.mul(probe, template)), s)


def pack_gallery(backend: CkksBackend, templates: Sequence[Any], gallery: GalleryLayout | None = None) -> Any:
    """One ciphertext holding up to ``gallery.capacity`` normalised templates (no level, len-1 rotations).

    It decrypts to :func:`~cryptoface.match.layout.pack_gallery_slots` of the templates: a binary tree whose
    round k shifts the odd entries by ``gallery.pack_steps()[k]`` (the slot arithmetic stays in the layout).
    """
    gallery = gallery or gallery_layout(backend.slots)
    if not templates:
        raise ValueError("no templates to pack")
    if len(templates) > gallery.capacity:
        raise ValueError(f"{len(templates)} templates exceed the gallery capacity {gallery.capacity}")
    row: list[Any | None] = list(templates)
    for step in gallery.pack_steps():
        if len(row) == 1:
            break
        nxt = []
        for i in range(0, len(row), 2):
            a = row[i]
            b = row[i + 1] if i + 1 < len(row) else None
            nxt.append(a if b is None else backend.add(a, backend.rotate(b, -step)))
        row = nxt
    return row[0]


def replicate_probe(backend: CkksBackend, probe: Any, gallery: GalleryLayout | None = None) -> Any:
    """The normalised probe copied into every template position of the gallery (log2(capacity) rotations)."""
    gallery = gallery or gallery_layout(backend.slots)
    for step in gallery.pack_steps():
        probe = backend.add(probe, backend.rotate(probe, -step))
    return probe


def _masked(backend: CkksBackend, ct: Any, slots: np.ndarray) -> Any:
    mask = np.zeros(backend.slots)
    mask[slots] = 1.0
    return backend.rescale(backend.mul_plain(ct, backend.encode(mask, backend.level(ct))))


def gallery_scores(backend: CkksBackend, probe_replicated: Any, packed: Any, gallery: GalleryLayout, count: int) -> Any:
    """Cosine of the probe with each of the first ``count`` packed templates.

    Ring-filling gallery (the default, :func:`gallery_layout`): 1 level, 8 rotations, the score of template n
    in every slot ``= n (mod capacity)`` (``gallery.score_slot(n)`` = n among them) and zeros for empty
    positions. A gallery that does not fill the ring needs a mask (one more level) to hide partial sums.
    """
    prod = backend.rescale(backend.mul(probe_replicated, packed))
    summed = rotate_sum(backend, prod, gallery.stride)
    if gallery.block * gallery.blocks == backend.slots and gallery.blocks == 1:
        return summed
    return _masked(backend, summed, gallery.score_slots(count))


def map_in_order(backend: CkksBackend, work: Callable[..., Any], items: Iterable[tuple[Any, ...]], workers: int
                 ) -> Iterator[Any]:
    """``work(*item)`` for each item, in order; ``workers`` at a time on a thread-safe backend (OpenFHE releases the
    GIL in its products and rotations), at most ``2 * workers`` in flight so that a large gallery is never held."""
    if workers <= 1 or not backend.thread_safe:
        for item in items:
            yield work(*item)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="gallery") as pool:
        pending: deque[Future[Any]] = deque()
        for item in items:
            pending.append(pool.submit(work, *item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _loaded(backend: CkksBackend, ct: Any) -> Any:
    """A ciphertext, deserialised first if it came as bytes (the server's own stored galleries)."""
    return backend.deserialize(ct) if isinstance(ct, bytes | bytearray | memoryview) else ct


def scored_chunks(backend: CkksBackend, probe_replicated: Any, chunks: Iterable[tuple[Any, int]],
                  gallery: GalleryLayout, workers: int = 1) -> Iterator[Any]:
    """:func:`gallery_scores` of each ``(gallery ciphertext, count)``, in order, ``workers`` chunks at a time."""
    def score(ct: Any, n: int) -> Any:
        return gallery_scores(backend, probe_replicated, _loaded(backend, ct), gallery, n)

    return map_in_order(backend, score, chunks, workers)


def _binary_rotations(backend: CkksBackend, ct: Any, unit: int, count: int) -> list[Any]:
    """``ct`` rotated by ``unit * k`` for k < ``count``: each from an earlier one by a power-of-two multiple of
    ``unit`` (count - 1 rotations, positive steps only: the keys of the score sums, ``unit << m``)."""
    out = [ct]
    for k in range(1, count):
        high = 1 << (k.bit_length() - 1)
        out.append(backend.rotate(out[k - high], unit * high))
    return out


def _check_grouped(backend: CkksBackend, gallery: GalleryLayout) -> None:
    if gallery.blocks != 1 or gallery.block != backend.slots:
        raise ParameterError("grouped galleries need the ring-filling gallery")


def grouped_gallery(backend: CkksBackend, chunks: Sequence[Any], gallery: GalleryLayout) -> list[Any]:
    """Up to ``GROUP_CHUNKS`` packed gallery chunks turned into the group's ``GROUP_CHUNKS`` ciphertexts (1 level).

    Chunk r holds template (i, r) at slots ``S * u + i`` (element u, :func:`pack_gallery`). Group ciphertext k
    is ``C_k = sum_r M_r * rot(G_r, S * k)`` with M_r the slots whose element index u is r mod R (R =
    GROUP_CHUNKS): it holds element ``u + k`` of template (i, u mod R) at slot ``S * u + i``. Scoring against the
    probe rotated alike (:func:`grouped_scores`) then needs R products and only log2(256 / R) rotations for R
    chunks, instead of 8 rotations per chunk; building costs R - 1 rotations and R masks per chunk, once."""
    _check_grouped(backend, gallery)
    if not 1 <= len(chunks) <= GROUP_CHUNKS:
        raise ParameterError(f"a gallery group holds 1 to {GROUP_CHUNKS} chunks, not {len(chunks)}")
    s = gallery.stride
    element = (np.arange(backend.slots) // s) % EMBEDDING_DIM
    acc: list[Any | None] = [None] * GROUP_CHUNKS
    for r, chunk in enumerate(chunks):
        chunk = _loaded(backend, chunk)
        mask = backend.encode((element % GROUP_CHUNKS == r).astype(np.float64), backend.level(chunk))
        for k, rotated in enumerate(_binary_rotations(backend, chunk, s, GROUP_CHUNKS)):
            part = backend.mul_plain(rotated, mask)
            acc[k] = part if acc[k] is None else backend.add(acc[k], part)
    return [backend.rescale(a) for a in acc]


def build_galleries(backend: CkksBackend, templates: Sequence[Any], gallery: GalleryLayout, grouped: bool,
                    workers: int = 1) -> Iterator[list[Any]]:
    """The gallery ciphertexts of normalised ``templates`` (in order; bytes are deserialised on the workers):
    packed chunks of ``gallery.capacity`` templates, one ciphertext each, or with ``grouped`` groups of
    ``GROUP_CHUNKS`` chunks, ``GROUP_CHUNKS`` ciphertexts each (:func:`grouped_gallery`)."""
    cap = gallery.capacity
    per = cap * (GROUP_CHUNKS if grouped else 1)

    def build(part: Sequence[Any]) -> list[Any]:
        chunks = [pack_gallery(backend, [_loaded(backend, t) for t in part[a:a + cap]], gallery)
                  for a in range(0, len(part), cap)]
        return grouped_gallery(backend, chunks, gallery) if grouped else chunks

    return map_in_order(backend, build, ((templates[a:a + per],) for a in range(0, len(templates), per)), workers)


def gallery_rows(backend: CkksBackend, galleries: Iterable[Sequence[Any]], ids: Sequence[int], gallery: GalleryLayout,
                 grouped: bool) -> list[tuple[bytes, list[int], int]]:
    """The store rows ``(ciphertext bytes, template ids, level)`` of :func:`build_galleries`' output for templates
    ``ids``: one row per chunk with its ids, or ``GROUP_CHUNKS`` rows per group with the group's ids on the first
    and none on the others -- a row without ids is how the grouped form is told apart (:func:`stored_galleries`)."""
    per = gallery.capacity * (GROUP_CHUNKS if grouped else 1)
    rows = []
    for start, cts in zip(range(0, len(ids), per), galleries, strict=True):
        part = [int(i) for i in ids[start:start + per]]
        rows += [(backend.serialize(c), part if k == 0 else [], backend.level(c)) for k, c in enumerate(cts)]
    return rows


def stored_galleries(rows: Sequence[tuple[bytes, Sequence[int]]]) -> tuple[bool, list[tuple[list[bytes], list[int]]]]:
    """(grouped, [(ciphertexts, template ids)] per gallery) of store rows written by :func:`gallery_rows`."""
    grouped = any(not ids for _, ids in rows)
    step = GROUP_CHUNKS if grouped else 1
    return grouped, [([c for c, _ in rows[a:a + step]], list(rows[a][1])) for a in range(0, len(rows), step)]


def gallery_counts(templates: int, gallery: GalleryLayout, grouped: bool) -> list[list[int]]:
    """Templates per chunk of each gallery ciphertext list :func:`build_galleries` makes for ``templates``."""
    cap = gallery.capacity
    per = cap * (GROUP_CHUNKS if grouped else 1)
    return [[min(cap, n - a) for a in range(0, n, cap)] for n in (min(per, templates - b)
                                                             for b in range(0, templates, per))]


def probe_rotations(backend: CkksBackend, probe_replicated: Any, gallery: GalleryLayout) -> list[Any]:
    """The replicated probe rotated by ``S * k`` for k < ``GROUP_CHUNKS`` (once per request; no level)."""
    _check_grouped(backend, gallery)
    return _binary_rotations(backend, probe_replicated, gallery.stride, GROUP_CHUNKS)


def grouped_scores(backend: CkksBackend, probes: Sequence[Any], group: Sequence[Any], gallery: GalleryLayout) -> Any:
    """Scores of a gallery group against :func:`probe_rotations`: ``sum_k C_k * P_k`` (1 level), then the sum over
    the 256 / R elements u of each residue (steps ``S * R * 2^m``, cyclic over the ring). Slot ``S * u + i`` holds
    the full score of template (i, u mod R) -- no partial sum anywhere --, so template i of chunk r is read at
    ``S * r + i`` (:func:`grouped_slots`)."""
    if len(probes) != GROUP_CHUNKS or len(group) != GROUP_CHUNKS:
        raise ParameterError(f"a gallery group and its probe have {GROUP_CHUNKS} ciphertexts each")
    acc = None
    for c, p in zip(group, probes, strict=True):
        prod = backend.mul(_loaded(backend, c), p)
        acc = prod if acc is None else backend.add(acc, prod)
    acc = backend.rescale(acc)
    step = gallery.stride * GROUP_CHUNKS
    while step < backend.slots:
        acc = backend.add(acc, backend.rotate(acc, step))
        step *= 2
    return acc


def grouped_slots(gallery: GalleryLayout, counts: Sequence[int]) -> list[int]:
    """Slot of each score in a group's answer: template i of chunk r (``counts[r]`` templates) at ``S * r + i``."""
    if len(counts) > GROUP_CHUNKS or any(not 0 <= n <= gallery.capacity for n in counts):
        raise ParameterError(f"a gallery group holds at most {GROUP_CHUNKS} chunks of {gallery.capacity} templates")
    return [gallery.stride * r + i for r, n in enumerate(counts) for i in range(n)]


def grouped_answers(backend: CkksBackend, probe_replicated: Any, groups: Iterable[tuple[Sequence[Any], Sequence[int]]],
                    gallery: GalleryLayout, workers: int = 1) -> Iterator[tuple[Any, list[int]]]:
    """1:N answers of grouped galleries ``(group ciphertexts, chunk counts)``: one answer of up to
    ``GROUP_CHUNKS * capacity`` scores per group, with the slots of its scores in order."""
    probes = probe_rotations(backend, probe_replicated, gallery)
    return map_in_order(backend, lambda group, counts: (grouped_scores(backend, probes, group, gallery),
                                                     grouped_slots(gallery, counts)), groups, workers)


def dense_scores(backend: CkksBackend, chunks: Iterable[tuple[Any, int]], gallery: GalleryLayout
                 ) -> Iterator[tuple[Any, list[int]]]:
    """Score ciphertexts of gallery chunks ``(scores, count)`` gathered ``slots // capacity`` to one answer.

    Chunk k of a group keeps only block k (its first ``count`` slots; ``LEVELS.pack`` = 1 level, no rotation),
    and the group's masked chunks are added: yields (answer, the slot of each chunk's scores in order). At
    N = 2^16 one answer holds 256 chunks of 128 = 32,768 scores instead of 128; the empty positions stay zero.
    Lazy: ``chunks`` may compute each chunk's scores as it is asked for, and one group is held at a time."""
    per = gallery.slots // gallery.capacity
    acc, slots, position = None, [], 0
    for ct, count in chunks:
        where = dense_slots(position, count, gallery)
        mask = np.zeros(backend.slots)
        mask[where] = 1.0
        part = backend.rescale(backend.mul_plain(ct, backend.encode(mask, backend.level(ct))))
        acc = part if acc is None else backend.add(acc, part)
        slots += where.tolist()
        position += 1
        if position == per:
            yield acc, slots
            acc, slots, position = None, [], 0
    if acc is not None:
        yield acc, slots


def gallery_answers(backend: CkksBackend, scores: Iterable[tuple[Any, int]], gallery: GalleryLayout, dense: bool
                    ) -> Iterator[tuple[Any, list[int]]]:
    """The 1:N answers the client downloads from ``(chunk scores, count)``: dense ones (:func:`dense_scores`) or
    one per chunk, each with the slots of its scores in order."""
    if dense:
        yield from dense_scores(backend, scores, gallery)
        return
    for s, count in scores:
        yield s, gallery.score_slots(count).tolist()


def lowest_level(backend: CkksBackend, ct: Any) -> Any:
    """``ct`` dropped to level 0 (values unchanged): what is sent to a client that only decrypts it, one RNS
    limb instead of ``level + 1``."""
    return backend.level_down(ct, 0) if backend.level(ct) > 0 else ct


def decision(backend: CkksBackend, scores: Any, tau: float, stages: tuple[str, ...] = SIGN_STAGES) -> Any:
    """F(score) ~ sign(score - tau) in every score slot: > 0 accept, < 0 reject (``LEVELS.decision`` levels)."""
    v = scores
    for series in sign_stages(tau, stages):
        v = chebyshev(backend, v, series)
    return v
