"""The global decision threshold tau (a cosine), stored with the model under metadata key ``threshold``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

# Mean LFW 10-fold accuracy-optimal cosine threshold of the paper CryptoFaceNet4 (paper-net4-lfw.md: 0.228
# with the YuNet pipeline, 0.236 with InsightFace crops). Used until the trained model file carries its own.
DEFAULT_THRESHOLD = 0.23
METADATA_KEY = "threshold"
# A model's tau is chosen for a false-accept rate on the in-the-wild validation impostors (cryptoface.eval.wild,
# `cryptoface model calibrate`); these are the rates it reports, and the one the shipped threshold is set for.
FARS = (1e-3, 1e-2)
DEFAULT_FAR = 1e-3


def far_key(far: float) -> str:
    """How a false-accept rate is spelt in report keys: 1e-3 -> "1e-3" (``tar_at_far_1e-3``)."""
    return f"{far:.0e}".replace("e-0", "e-")


def threshold_from_metadata(metadata: Mapping[str, Any] | None) -> float:
    """tau from a model's metadata (cosine in (-1, 1)); ``DEFAULT_THRESHOLD`` when absent."""
    if metadata and metadata.get(METADATA_KEY) is not None:
        tau = float(metadata[METADATA_KEY])
        if not -1.0 < tau < 1.0:
            raise ValueError(f"model threshold {tau} is not a cosine in (-1, 1)")
        return tau
    return DEFAULT_THRESHOLD


def threshold_from_model_file(path: str | os.PathLike[str] | None) -> float:
    """tau from a model file's header, or the default without a model file."""
    if path is None:
        return DEFAULT_THRESHOLD
    from cryptoface.model.file import read_header

    return threshold_from_metadata(read_header(path).get("metadata"))
