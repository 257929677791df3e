"""Encrypted matching on the backend protocol: normalise, 1:1 score, 1:N packed scores, decision only.

Every function takes a :class:`~cryptoface.backends.protocol.CkksBackend` (server side: no secret key) and
ciphertexts; nothing here decrypts. Levels follow the protocol's bookkeeping: each ``mul``/``mul_plain``/
``mul_scalar`` is followed by one ``rescale``; the level costs are the constants of :mod:`cryptoface.match.levels`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cryptoface.backends.protocol import CkksBackend, normalise_step
from cryptoface.errors import ParameterError
from cryptoface.match.layout import EMBEDDING_DIM, GalleryLayout, TemplateLayout, check_layout
from cryptoface.match.poly import SIGN_STAGES, ChebyshevSeries, inverse_sqrt_series, sign_stages

_TINY = 1e-13  # relative size under which a polynomial coefficient is treated as zero
_LOG_DIM = int(math.log2(EMBEDDING_DIM))


# -- keys ---------------------------------------------------------------------------------------------
def rotation_steps(layout: TemplateLayout, slots: int) -> frozenset[int]:
    """Rotation steps (0..slots-1) that normalisation, scoring and 1:N packing need for this layout."""
    s = check_layout(layout, slots)
    steps = {s << k for k in range(_LOG_DIM)}
    if EMBEDDING_DIM * s < slots:
        steps.add(normalise_step(-EMBEDDING_DIM * s, slots))  # broadcast copy for the norm
    steps.update(normalise_step(-k, slots) for k in GalleryLayout(s, slots).pack_steps())
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
    """||t||^2 in every layout slot (1 level, 9 rotations; other slots hold partial sums or zeros)."""
    s = check_layout(layout, backend.slots)
    return rotate_sum(backend, backend.rescale(backend.mul(t, t)), s, broadcast=True)


def normalise(backend: CkksBackend, t: Any, layout: TemplateLayout, series: ChebyshevSeries | None = None) -> Any:
    """t * p(||t||^2) with p ~ 1/sqrt: an (approximately) unit template in the same layout, zeros elsewhere."""
    series = series or inverse_sqrt_series()
    y = norm_squared(backend, t, layout)
    alpha, beta = series.affine
    x = backend.add_plain(_scaled(backend, y, alpha), np.full(backend.slots, beta))
    return backend.rescale(backend.mul(t, chebyshev(backend, x, series)))


def _masked(backend: CkksBackend, ct: Any, slots: np.ndarray) -> Any:
    mask = np.zeros(backend.slots)
    mask[slots] = 1.0
    return backend.rescale(backend.mul_plain(ct, backend.encode(mask, backend.level(ct))))


def cosine(backend: CkksBackend, probe: Any, template: Any, layout: TemplateLayout) -> Any:
    """<probe, template> of two normalised templates in slot 0, every other slot zero (2 levels, 8 rotations)."""
    s = check_layout(layout, backend.slots)
    prod = backend.rescale(backend.mul(probe, template))
    return _masked(backend, rotate_sum(backend, prod, s), np.array([0]))


def pack_gallery(backend: CkksBackend, templates: Sequence[Any], gallery: GalleryLayout) -> Any:
    """One ciphertext holding up to ``gallery.capacity`` normalised templates (no level, len-1 rotations)."""
    if not templates:
        raise ValueError("no templates to pack")
    if len(templates) > gallery.capacity:
        raise ValueError(f"{len(templates)} templates exceed the gallery capacity {gallery.capacity}")
    row: list[Any | None] = list(templates)
    bit = 1
    while len(row) > 1:
        step = gallery.shift(bit)
        nxt = []
        for i in range(0, len(row), 2):
            a = row[i]
            b = row[i + 1] if i + 1 < len(row) else None
            nxt.append(a if b is None else backend.add(a, backend.rotate(b, -step)))
        row = nxt
        bit *= 2
    return row[0]


def replicate_probe(backend: CkksBackend, probe: Any, gallery: GalleryLayout) -> Any:
    """The normalised probe copied into every template position of the gallery (log2(capacity) rotations)."""
    for step in gallery.pack_steps():
        probe = backend.add(probe, backend.rotate(probe, -step))
    return probe


def gallery_scores(backend: CkksBackend, probe_replicated: Any, packed: Any, gallery: GalleryLayout, count: int) -> Any:
    """Cosine of the probe with each of the first ``count`` packed templates at ``gallery.score_slot(n)``.

    2 levels, 8 rotations per gallery ciphertext; every slot that is not a score is zero.
    """
    prod = backend.rescale(backend.mul(probe_replicated, packed))
    return _masked(backend, rotate_sum(backend, prod, gallery.stride), gallery.score_slots(count))


def decision(backend: CkksBackend, scores: Any, tau: float, stages: tuple[str, ...] = SIGN_STAGES) -> Any:
    """F(score) ~ sign(score - tau) in every score slot: > 0 accept, < 0 reject (``DECISION_LEVELS`` levels)."""
    v = scores
    for series in sign_stages(tau, stages):
        v = chebyshev(backend, v, series)
    return v
