"""Import the CryptoFace authors' released CryptoFaceNet4 checkpoint and fuse it.

The checkpoint is a PyTorch pickle whose ``backbone`` entry is the PatchCNN state dict (603 entries for
the 64x64 model, including the training-only jigsaw head). It is loaded with ``strict=True`` into
:class:`~cryptoface.train.model.PatchCNN`, checked against the paper's parameter count, and fused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from cryptoface.errors import ModelFileError
from cryptoface.model import spec
from cryptoface.model.fused import FusedModel
from cryptoface.train.fuse import DEFAULT_A2_FLOOR, fuse
from cryptoface.train.model import PatchCNN

PAPER_CREDIT = (
    "CryptoFace authors' released CryptoFaceNet4 (Ao & Boddeti, CVPR 2025), trained on WebFace4M "
    "(non-commercial research terms)"
)
PAPER_CODE_LICENSE = "CryptoFace code: MIT (Human Analysis Lab, 2025); weights carry WebFace4M's non-commercial terms"
PREPROCESSING = {
    "alignment": "ArcFace 5-point similarity alignment to 112x112 RGB",
    "normalize": "(x / 255 - 0.5) / 0.5",
    "resize": "bilinear, antialias, 112 -> 64 after normalisation (torchvision Resize(64, antialias=True))",
    "patches": "32x32 in raster order (row * grid + col)",
}


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_paper_checkpoint(path: str | os.PathLike[str], resolution: int = 64) -> PatchCNN:
    """Build PatchCNN(resolution), load the checkpoint's ``backbone`` strictly, return it in eval mode."""
    import torch  # lazily: cryptoface.train.model is the one module importing torch at import time

    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"checkpoint not found: {p}")
    try:
        # weights_only=True: the released file holds only tensors in dicts, so no arbitrary unpickling is needed.
        ckpt: Any = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged/foreign file
        raise ModelFileError(f"{p} is not a readable PyTorch checkpoint: {exc}") from exc
    state = ckpt.get("backbone") if isinstance(ckpt, dict) else None
    if state is None:
        raise ModelFileError(f"{p}: no 'backbone' state dict; not a CryptoFace checkpoint")
    model = PatchCNN(resolution)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{p}: state dict does not match {model.architecture}: {exc}") from exc
    expected = spec.PARAMETER_COUNTS[model.architecture]
    got = model.inference_parameter_count()
    if got != expected:
        raise ModelFileError(f"{p}: {got:,} parameters (nets + linear), expected {expected:,}")
    return model.eval()


def import_paper(
    path: str | os.PathLike[str], *, resolution: int = 64, a2_floor: float = DEFAULT_A2_FLOOR
) -> FusedModel:
    """Load the released checkpoint, fuse it in float64 and attach provenance metadata."""
    model = load_paper_checkpoint(path, resolution)
    fused = fuse(model, a2_floor=a2_floor)
    meta = dict(fused.metadata)
    meta.update(
        {
            "source": {
                "file": Path(path).name,
                "sha256": sha256_file(path),
                "description": PAPER_CREDIT,
                "license": PAPER_CODE_LICENSE,
            },
            "parameters": model.inference_parameter_count(),
            "preprocessing": PREPROCESSING,
        }
    )
    return FusedModel(
        architecture=fused.architecture,
        resolution=fused.resolution,
        patches=fused.patches,
        bias=fused.bias,
        metadata=meta,
    )
