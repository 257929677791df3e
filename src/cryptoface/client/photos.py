"""Photo -> encrypted probe on the client: the engine's input encryption, or a clearly labelled stand-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.client.keys import ClientKeys
from cryptoface.engine import encrypt_image
from cryptoface.match.clear import encrypt_embedding_for_tests

STANDIN_LABEL = "STAND-IN: embedding computed IN THE CLEAR on the client, then encrypted (not the CryptoFace protocol)"
STANDIN_NORM_SQ = 289.6  # mean ||e||^2 of the paper model on LFW; stand-in embeddings are rescaled to it


def encrypt_photo(keys: ClientKeys, photo: str | Path | np.ndarray, resolution: int, packing: str = "monolithic"
                  ) -> list[Any]:
    """The encrypted model input of a photo, aligned and preprocessed on the client.

    ``packing="units"``: each group of <= 4 patches packed by the Net4 plan, concatenated in unit order (for a
    patch-parallel server; the unit plan's rotation keys are a subset of every resolution's keys)."""
    from cryptoface.face import preprocess

    x = preprocess(photo, resolution)
    if packing == "units":
        from cryptoface.engine.units import encrypt_units

        return [ct for unit in encrypt_units(keys.backend, x) for ct in unit]
    return encrypt_image(keys.backend, resolution, x)


def standin_template(keys: ClientKeys, model: Any, photo: str | Path | np.ndarray, level: int | None = None) -> Any:
    """TEST/DEMO STAND-IN, NOT INFERENCE: clear embedding of the photo, rescaled, encrypted in the template layout."""
    from cryptoface.face import preprocess
    from cryptoface.model.reference import forward

    e = forward(model, preprocess(photo, model.resolution))
    e = e * np.sqrt(STANDIN_NORM_SQ) / max(float(np.linalg.norm(e)), 1e-12)
    return encrypt_embedding_for_tests(
        keys.backend, e, keys.layout, keys.backend.params.levels if level is None else level
    )
