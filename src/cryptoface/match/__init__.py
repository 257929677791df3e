"""Encrypted matching: approximate L2 normalisation, 1:1 cosine, 1:N packed gallery, decision-only sign.

* :mod:`.poly` designs the polynomials in the clear (1/sqrt fit, composite sign) and documents their errors.
* :mod:`.homomorphic` evaluates them on ciphertexts through the backend protocol only.
* :mod:`.layout` defines template (engine), normalised and gallery slot layouts; :mod:`.threshold` the global
  threshold tau. The levels matching takes are rows of the budget :data:`cryptoface.params.LEVELS`.
"""

from cryptoface.match.homomorphic import (
    cosine,
    decision,
    gallery_scores,
    normalise,
    normalise_levels,
    pack_gallery,
    replicate_probe,
    rotation_steps,
)
from cryptoface.match.layout import (
    GalleryLayout,
    TemplateLayout,
    gallery_layout,
    normalised_layout,
    pack_gallery_slots,
)
from cryptoface.match.threshold import DEFAULT_THRESHOLD, threshold_from_metadata

__all__ = [
    "DEFAULT_THRESHOLD",
    "GalleryLayout",
    "TemplateLayout",
    "cosine",
    "decision",
    "gallery_layout",
    "gallery_scores",
    "normalise",
    "normalise_levels",
    "normalised_layout",
    "pack_gallery",
    "pack_gallery_slots",
    "replicate_probe",
    "rotation_steps",
    "threshold_from_metadata",
]
