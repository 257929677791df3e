"""Encrypted 1:1 scores of template pairs, on the server (public keys only), packed for the trip back.

A pair score is what :meth:`cryptoface.service.core.MatchService.verify` computes for one probe and one enrolled
template. One-round protocol, both sides raw engine templates: each is normalised (``LEVELS.normalise`` levels,
one more when its scale is not the engine's) and their encrypted cosine taken (``LEVELS.score``); refresh
protocol, both sides client-normalised (:mod:`cryptoface.match.refresh`): the cosine alone. The cosine holds the
score in every slot ``= 0 (mod S)`` (``S = slots // 256``) and zeros elsewhere, so up to ``S`` scores are packed
into one ciphertext by :func:`cryptoface.match.homomorphic.pack_gallery`'s rotations (no level): pair k of a batch is in
slot ``k`` (:func:`score_slots`). Nothing here decrypts; the client reads the scores with :func:`unpack_scores`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from cryptoface.backends.protocol import CkksBackend
from cryptoface.errors import CiphertextError, ParameterError
from cryptoface.match import homomorphic as hm
from cryptoface.match.layout import TemplateLayout, check_layout, gallery_layout
from cryptoface.params import LEVELS


@dataclass(frozen=True)
class PackedScores:
    """One ciphertext holding the scores of pairs ``first .. first + count - 1`` (pair ``first + k`` in slot k)."""

    ciphertext: Any
    first: int
    count: int


def pair_levels(layout: TemplateLayout | None) -> int:
    """Levels a template needs for one pair score: normalisation then the cosine for a raw template in ``layout``,
    the cosine alone for a client-normalised one (``layout`` None)."""
    return LEVELS.score if layout is None else hm.normalise_levels(layout) + LEVELS.score


def batch_capacity(slots: int) -> int:
    """Most pair scores one ciphertext carries: ``slots // 256`` (128 at N = 2^16)."""
    return gallery_layout(slots).capacity


def _check_template(backend: CkksBackend, ct: Any, layout: TemplateLayout | None, side: str) -> None:
    """Refuse a template with too few levels left, as the service does before normalising a probe."""
    need = pair_levels(layout)
    level = backend.level(ct)
    if level < need:
        what = "scoring" if layout is None else "normalising and scoring"
        raise CiphertextError(f"the {side} template is at level {level}; {what} it needs {need} levels (one-round "
                              "templates need parameters with a matching reserve: default_parameters(protocol="
                              "'one-round'))")


def compare_templates(backend: CkksBackend, a: Any, b: Any, layout: TemplateLayout | None) -> Any:
    """Encrypted cosine of two templates: raw ones in ``layout`` are normalised first, client-normalised ones
    (``layout`` None, :mod:`cryptoface.match.refresh`) are only multiplied and summed.

    The same steps and levels as the service's verify (``hm.normalise`` then ``hm.cosine``); the result is at
    ``level - pair_levels(layout)`` with the score in every slot ``= 0 (mod slots // 256)``."""
    if layout is not None:
        try:
            check_layout(layout, backend.slots)
        except ParameterError as exc:
            raise CiphertextError(f"template layout does not fit these parameters: {exc}") from exc
    _check_template(backend, a, layout, "first")
    _check_template(backend, b, layout, "second")
    if layout is None:
        return hm.cosine(backend, a, b)
    return hm.cosine(backend, hm.normalise(backend, a, layout), hm.normalise(backend, b, layout))


def score_pairs(
    backend: CkksBackend, pairs: Iterable[tuple[Any, Any]], layout: TemplateLayout | None, *,
    capacity: int | None = None,
) -> Iterator[PackedScores]:
    """Score each (a, b) template pair and yield packed batches of at most ``capacity`` scores, in input order
    (``layout`` None: client-normalised templates, see :func:`compare_templates`).

    Lazy on purpose: ``pairs`` may be a generator that runs the encrypted inference, and only one batch's score
    ciphertexts are held at a time. ``capacity`` defaults to :func:`batch_capacity`; 1 sends each score alone."""
    gallery = gallery_layout(backend.slots)
    size = gallery.capacity if capacity is None else int(capacity)
    if not 1 <= size <= gallery.capacity:
        raise ParameterError(f"a score batch holds 1 to {gallery.capacity} pairs at these parameters, not {size}")
    batch: list[Any] = []
    first = 0
    for a, b in pairs:
        batch.append(compare_templates(backend, a, b, layout))
        if len(batch) == size:
            yield PackedScores(hm.pack_gallery(backend, batch, gallery), first, len(batch))
            first += len(batch)
            batch = []
    if batch:
        yield PackedScores(hm.pack_gallery(backend, batch, gallery), first, len(batch))


def score_slots(slots: int, count: int) -> np.ndarray:
    """Slot of each of the first ``count`` pair scores in a packed batch (client side)."""
    gallery = gallery_layout(slots)
    if not 1 <= count <= gallery.capacity:
        raise ParameterError(f"a score batch holds 1 to {gallery.capacity} pairs at {slots} slots, not {count}")
    return gallery.score_slots(count)


def unpack_scores(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` pair scores from a packed batch's decrypted slot vector (client side)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[score_slots(v.size, count)].copy()


__all__ = [
    "PackedScores",
    "batch_capacity",
    "compare_templates",
    "pair_levels",
    "score_pairs",
    "score_slots",
    "unpack_scores",
]
