"""Face embedders used by the evaluation: a fused CryptoFaceNet (numpy, clear text) and OpenCV's SFace."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from cryptoface.errors import ModelFileError
from cryptoface.face.assets import sface_path
from cryptoface.face.resize import to_model_input
from cryptoface.model.file import load_model
from cryptoface.model.reference import forward


@runtime_checkable
class Embedder(Protocol):
    """Turns aligned 112x112 RGB uint8 crops into embeddings compared by cosine similarity."""

    name: str
    resolution: int
    # Identifies the weights (e.g. a file hash) so embeddings can be cached; an embedder may omit it.
    cache_key: str

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) float64 embeddings of B crops (not necessarily normalised)."""
        ...


class FusedEmbedder:
    """Clear-text forward of a fused CryptoFaceNet model file (numpy reference, no torch)."""

    def __init__(self, model_path: str | os.PathLike[str], batch_size: int = 64) -> None:
        self.path = Path(model_path)
        self.model = load_model(self.path)
        self.resolution = self.model.resolution
        self.name = f"{self.model.architecture} ({self.path.name})"
        self.batch_size = batch_size
        self.cache_key = "fused:" + hashlib.sha256(self.path.read_bytes()).hexdigest()

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = np.stack([to_model_input(c, self.resolution) for c in crops[start : start + self.batch_size]])
            out.append(forward(self.model, batch))
        return np.concatenate(out) if out else np.zeros((0, 256))


class SFaceEmbedder:
    """OpenCV zoo SFace (Apache-2.0): 112x112 BGR crop in, 128-d unnormalised feature out."""

    name = "sface"
    resolution = 112

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else sface_path()
        st = self.path.stat()
        self.cache_key = f"sface:{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
        try:
            self._net = cv2.FaceRecognizerSF.create(str(self.path), "")
        finally:
            cv2.utils.logging.setLogLevel(level)
        self._lock = threading.Lock()

    def embed(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(crops), 128))
        with self._lock:
            for i, crop in enumerate(crops):
                bgr = cv2.cvtColor(np.ascontiguousarray(crop, dtype=np.uint8), cv2.COLOR_RGB2BGR)
                out[i] = np.asarray(self._net.feature(bgr), dtype=np.float64).ravel()
        return out


def cosine_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two (N, D) arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return np.einsum("ij,ij->i", a, b) / np.maximum(na * nb, 1e-300)


def embedder_for(model: str | os.PathLike[str] | None, resolution: int | None = None) -> tuple[Embedder, str]:
    """(embedder, name) of ``model``: a fused file, ``"sface"``, or None for the bundled model; ModelFileError
    when ``resolution`` is given and differs from the model's."""
    from cryptoface.assets import default_model_path
    from cryptoface.model.file import read_header

    model = model if model is not None else default_model_path()
    if str(model).lower() == "sface":
        emb = SFaceEmbedder()
        if resolution not in (None, emb.resolution):
            raise ModelFileError(f"SFace takes {emb.resolution}x{emb.resolution} crops; drop --resolution")
        return emb, "sface"
    header_res = int(read_header(model)["resolution"])
    if resolution not in (None, header_res):
        raise ModelFileError(
            f"{model} is a {header_res}x{header_res} model but --resolution {resolution} was given; "
            "drop --resolution (it is read from the model file)"
        )
    return FusedEmbedder(model), str(model)
