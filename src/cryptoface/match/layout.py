"""Slot layouts of encrypted templates and of packed galleries.

Raw template (engine contract): :class:`cryptoface.engine.layout.TemplateLayout` -- element j at slots
``j * stride + b * 256 * stride`` for ``b < replicas``, holding ``scale * e`` (the engine's default is
``TemplateLayout(1, slots // 256)`` with ``scale = TEMPLATE_SCALE``; a client may send a single copy,
``TemplateLayout(stride)``, with the same scale).

Normalised template (:func:`normalised_layout`): element j at slot ``S * j`` with ``S = slots // 256`` (128 at
N = 2^16), unit scale, zeros elsewhere: a 256-element template that fills the ring cyclically.

Gallery (1:N, :func:`gallery_layout`): ``capacity = S`` normalised templates per ciphertext (128 at N = 2^16);
template n has element j at slot ``S * j + n`` and its score is in every slot ``= n (mod S)``, slot n among
them (:meth:`GalleryLayout.score_slot`). The general :class:`GalleryLayout` (stride s, blocks of ``256 * s``
slots) is kept for smaller strides, which need a mask level. :func:`pack_gallery_slots` is the one definition
of a gallery's slot vector; the encrypted packing (:func:`cryptoface.match.homomorphic.pack_gallery`) produces
exactly it from encrypted normalised templates, and clients that encrypt a gallery directly encode it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryptoface.engine.layout import TemplateLayout
from cryptoface.errors import ParameterError

EMBEDDING_DIM = 256


def check_layout(layout: TemplateLayout, slots: int) -> int:
    """The stride, after checking it is a power of two in 1..128 whose template (all replicas) fits ``slots``."""
    s = int(layout.stride)
    if s < 1 or s > 128 or s & (s - 1):
        raise ParameterError(f"template stride must be a power of two in 1..128, got {s}")
    if layout.span > slots:
        raise ParameterError(f"a template with stride {s} x {layout.replicas} replicas needs {layout.span} slots, "
                             f"the ring has {slots}")
    return s


def normalised_layout(slots: int) -> TemplateLayout:
    """Layout of a normalised template: element j at slot ``(slots // 256) * j``, unit scale."""
    if slots < EMBEDDING_DIM or slots & (slots - 1):
        raise ParameterError(f"{slots} slots cannot hold a 256-d template")
    return TemplateLayout(slots // EMBEDDING_DIM, 1, 1.0)


def template_slots(layout: TemplateLayout) -> np.ndarray:
    """Slot index of each of the 256 template elements (replica 0)."""
    return layout.slots_of(EMBEDDING_DIM)


def place(values: np.ndarray, layout: TemplateLayout, slots: int) -> np.ndarray:
    """A length-``slots`` vector with ``layout.scale * values`` (256) at every replica, zeros elsewhere."""
    check_layout(layout, slots)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != EMBEDDING_DIM:
        raise ValueError(f"expected {EMBEDDING_DIM} values, got {v.size}")
    return layout.pack(v, slots)


def extract(slot_values: np.ndarray, layout: TemplateLayout) -> np.ndarray:
    """The 256 template values (scale removed) from decrypted slots."""
    return layout.unpack(slot_values, EMBEDDING_DIM)


@dataclass(frozen=True)
class GalleryLayout:
    """Packing of ``capacity`` templates with one stride into one ciphertext (see the module docstring)."""

    stride: int
    slots: int

    def __post_init__(self) -> None:
        check_layout(TemplateLayout(self.stride), self.slots)

    @property
    def block(self) -> int:
        return EMBEDDING_DIM * self.stride

    @property
    def blocks(self) -> int:
        return self.slots // self.block

    @property
    def capacity(self) -> int:
        return self.blocks * self.stride

    def shift(self, n: int) -> int:
        """Right shift (in slots) that moves template ``n`` from its own layout into the gallery."""
        if not 0 <= n < self.capacity:
            raise IndexError(f"template index {n} outside 0..{self.capacity - 1}")
        return (n // self.stride) * self.block + n % self.stride

    def score_slot(self, n: int) -> int:
        return self.shift(n)

    def score_slots(self, count: int | None = None) -> np.ndarray:
        return np.array([self.shift(n) for n in range(self.capacity if count is None else count)], dtype=np.int64)

    def element_slots(self, count: int) -> np.ndarray:
        """(count, 256) slot indices: row n holds the slots of template n's elements in the gallery."""
        return self.score_slots(count)[:, None] + np.arange(EMBEDDING_DIM)[None, :] * self.stride

    def pack_steps(self) -> list[int]:
        """Right shifts used to build the gallery and replicate a probe: one per bit of the template index."""
        steps = []
        bit = 1
        while bit < self.capacity:
            steps.append(self.shift(bit))
            bit *= 2
        return steps


def gallery_layout(slots: int) -> GalleryLayout:
    """The ring-filling gallery of normalised templates (capacity ``slots // 256``, scores need no mask)."""
    return GalleryLayout(normalised_layout(slots).stride, slots)


def dense_slots(position: int, count: int, gallery: GalleryLayout) -> np.ndarray:
    """Slots of the first ``count`` scores of the gallery chunk at ``position`` of a dense 1:N answer.

    A chunk's score of template n is in every slot ``= n (mod capacity)`` (ring-filling gallery); the dense
    answer keeps block ``position`` of ``capacity`` slots of it, so ``slots // capacity`` chunks share one
    ciphertext and template n of chunk ``position`` is at ``position * capacity + n``."""
    per = gallery.slots // gallery.capacity
    if gallery.blocks != 1 or not 0 <= position < per:
        raise ParameterError(f"dense scores need a ring-filling gallery and a position in 0..{per - 1}")
    if not 0 <= count <= gallery.capacity:
        raise ParameterError(f"a gallery chunk holds 0 to {gallery.capacity} templates, not {count}")
    return position * gallery.capacity + np.arange(count, dtype=np.int64)


def pack_gallery_slots(templates: np.ndarray, gallery: GalleryLayout) -> np.ndarray:
    """The slot vector of a gallery ciphertext holding ``templates`` (count x 256, count <= capacity).

    Template n's element j goes to slot ``gallery.shift(n) + j * gallery.stride``, zeros elsewhere; values are
    placed as given (normalised templates have unit scale).
    """
    t = np.asarray(templates, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != EMBEDDING_DIM:
        raise ParameterError(f"expected templates of shape (count, {EMBEDDING_DIM}), got {t.shape}")
    if t.shape[0] > gallery.capacity:
        raise ParameterError(f"{t.shape[0]} templates exceed the gallery capacity {gallery.capacity}")
    out = np.zeros(gallery.slots)
    out[gallery.element_slots(t.shape[0])] = t
    return out
