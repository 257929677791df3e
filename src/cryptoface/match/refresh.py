"""Client-refreshed templates: the raw template normalised in the clear and laid out for encrypted matching.

In the ``refresh`` protocol (:data:`cryptoface.params.PROTOCOLS`) the server returns the network's raw template,
the client decrypts it, divides it by its norm exactly (no Chebyshev 1/sqrt, no levels) and encrypts the result
afresh in the normalised layout (:func:`~cryptoface.match.layout.normalised_layout`) at the level matching needs
(:meth:`cryptoface.params.LevelBudget.fresh_template`). The server then only multiplies and sums. The client sees
its own template, which it could always decrypt; the decrypted values never go back to the server, only a new
encryption of their normalised copy.

These are the pure slot functions; :class:`cryptoface.client.Client` decrypts and encrypts around them.
"""

from __future__ import annotations

import numpy as np

from cryptoface.engine.layout import TemplateLayout
from cryptoface.errors import CiphertextError
from cryptoface.match.layout import EMBEDDING_DIM, check_layout, normalised_layout, place

# A raw template this close to zero is noise, not a face: an honest network output has ||e||^2 inside the range
# the head was fitted to (cryptoface.engine.template.NORM_SQ_LOW .. NORM_SQ_HIGH).
MIN_NORM = 1e-6


def raw_embedding(slot_values: np.ndarray, layout: TemplateLayout) -> np.ndarray:
    """The 256 template values from a decrypted raw template, averaged over its replicas (less CKKS noise)."""
    v = np.asarray(slot_values, dtype=np.float64).ravel()
    check_layout(layout, v.size)
    return v[layout.all_slots(EMBEDDING_DIM)].mean(axis=0) / layout.scale


def normalised(embedding: np.ndarray) -> np.ndarray:
    """``e / ||e||`` in the clear; CiphertextError when the template is empty or not finite."""
    e = np.asarray(embedding, dtype=np.float64).ravel()
    if e.size != EMBEDDING_DIM:
        raise CiphertextError(f"expected a {EMBEDDING_DIM}-d template, got {e.size} values")
    norm = float(np.linalg.norm(e))
    if not np.isfinite(norm) or norm < MIN_NORM:
        raise CiphertextError(f"the decrypted template has norm {norm:.3g}: it is not a face template")
    return e / norm


def fresh_slots(unit: np.ndarray, slots: int) -> np.ndarray:
    """The slot vector a client encrypts for a normalised template: the normalised layout of a ring with ``slots``
    slots (the network's, or the matching ring's), unit scale."""
    return place(unit, normalised_layout(slots), slots)


def refreshed_slots(slot_values: np.ndarray, layout: TemplateLayout) -> np.ndarray:
    """The slot vector of the normalised template in the same ring, from a decrypted raw one."""
    return fresh_slots(normalised(raw_embedding(slot_values, layout)), np.asarray(slot_values).size)


__all__ = ["MIN_NORM", "fresh_slots", "normalised", "raw_embedding", "refreshed_slots"]
