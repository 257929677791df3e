"""What an inference benchmark encrypts: the model and the face."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cryptoface.errors import ModelFileError
from cryptoface.model.fused import FusedModel


def bench_model(path: Path | None, resolution: int, seed: int = 0) -> tuple[FusedModel, str]:
    """(model, its description): ``path``, else the bundled model when it has this resolution, else a
    deterministic random model (timings do not depend on the weights; errors are only meaningful on a trained one)."""
    from cryptoface.assets import default_model_path
    from cryptoface.model.file import load_model
    from cryptoface.model.random import random_model

    if path is not None:
        return load_model(path), str(path)
    try:
        bundled = default_model_path()
    except ModelFileError:
        bundled = None
    if bundled is not None:
        model = load_model(bundled)
        if model.resolution == resolution:
            return model, str(bundled)
    return random_model(resolution, seed), f"random_model({resolution}, seed={seed})"


def bench_face(resolution: int, photo: Path | None = None, random_input: bool = False, seed: int = 0
               ) -> tuple[np.ndarray, str]:
    """(preprocessed input (3, R, R), its description): ``photo`` (default: the bundled obama3.jpg), or uniform
    noise in [-1, 1]. Trained models are only meaningful, and their activations only bounded, on faces."""
    if random_input:
        x = np.random.default_rng(seed + 1).uniform(-1.0, 1.0, (3, resolution, resolution))
        return x, "uniform noise"
    from cryptoface.assets import SAMPLES_DIR
    from cryptoface.face import preprocess

    photo = photo or SAMPLES_DIR / "obama3.jpg"
    return preprocess(photo, resolution), str(photo)
