"""Slot layouts of encrypted templates and of packed galleries.

Template (engine contract): one ciphertext, element j of the 256-d embedding at slot ``j * stride``, zeros
elsewhere, ``stride`` a power of two in 1..128. :class:`TemplateLayout` is taken from the engine when it
exports one (``cryptoface.engine.layout.TemplateLayout``) and defined here otherwise, with the same fields.

Gallery (1:N): ``capacity = slots // 256`` normalised templates per ciphertext (128 at N = 2^16, for every
stride). Template number ``n = block * stride + offset`` (``offset < stride``) has element j at slot
``block * 256 * stride + j * stride + offset``: templates interleave inside a block of ``256 * stride``
slots, and ``slots / (256 * stride)`` blocks fill the ciphertext. Its score lands in slot
``block * 256 * stride + offset`` (:meth:`GalleryLayout.score_slot`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cryptoface.errors import ParameterError

EMBEDDING_DIM = 256

try:  # the engine's definition wins once it exists
    from cryptoface.engine.layout import TemplateLayout  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - depends on the engine's progress

    @dataclass(frozen=True)
    class TemplateLayout:  # type: ignore[no-redef]
        """Element j of the 256-d template at slot ``j * stride``; zeros elsewhere."""

        stride: int = 1


def check_layout(layout: TemplateLayout, slots: int) -> int:
    """The stride, after checking it is a power of two in 1..128 whose template fits ``slots``."""
    s = int(layout.stride)
    if s < 1 or s > 128 or s & (s - 1):
        raise ParameterError(f"template stride must be a power of two in 1..128, got {s}")
    if EMBEDDING_DIM * s > slots:
        raise ParameterError(f"a template with stride {s} needs {EMBEDDING_DIM * s} slots, the ring has {slots}")
    return s


def template_slots(layout: TemplateLayout) -> np.ndarray:
    """Slot index of each of the 256 template elements."""
    return np.arange(EMBEDDING_DIM) * int(layout.stride)


def place(values: np.ndarray, layout: TemplateLayout, slots: int) -> np.ndarray:
    """A length-``slots`` vector with ``values`` (256) in the layout and zeros elsewhere."""
    check_layout(layout, slots)
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size != EMBEDDING_DIM:
        raise ValueError(f"expected {EMBEDDING_DIM} values, got {v.size}")
    out = np.zeros(slots)
    out[template_slots(layout)] = v
    return out


def extract(slot_values: np.ndarray, layout: TemplateLayout) -> np.ndarray:
    """The 256 template values from decrypted slots."""
    return np.asarray(slot_values)[template_slots(layout)]


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

    def pack_steps(self) -> list[int]:
        """Right shifts used to build the gallery and replicate a probe: one per bit of the template index."""
        steps = []
        bit = 1
        while bit < self.capacity:
            steps.append(self.shift(bit))
            bit *= 2
        return steps
