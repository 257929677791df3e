"""Teacher embeddings for distillation: OpenCV's SFace on every training crop (and its mirror), cached.

SFace (OpenCV zoo, Apache-2.0) scores 99.25 % on our YuNet-aligned LFW photos against 97.92 % for the
paper's CryptoFaceNet4, so its similarity structure is worth copying. The L2-normalised 128-d features
are stored as float32 ``(n, V, 128)`` chunks of 256 crops under ``<cache>/teacher-<kind>-<hash>/``
(V = 2: original and horizontally flipped crop; V = 1 without flips). The hash covers the teacher's
identity (file path, size, mtime), the training-folder digest and V, so a changed model or data set never
reuses a stale cache.

Chunked because SFace is slow on a shared CPU (~0.1 s per crop under load, i.e. over an hour for 24k crops
and their mirrors): the cache can be filled in the background (``cryptoface train --teacher-only``),
chunks are visited in a seeded random order so a partial cache covers every source, and training can start
on the crops whose chunk is done (``require_complete=False``). ``kind="random"`` gives seeded random unit
vectors (tests and smoke runs without the ONNX file).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cryptoface.errors import DataError
from cryptoface.train.data import cache_dir

TEACHER_DIM = 128
CHUNK = 256


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def teacher_key(kind: str) -> str:
    if kind == "sface":
        from cryptoface.eval.embedders import SFaceEmbedder

        return SFaceEmbedder().cache_key
    if kind == "random":
        return "random-v1"
    raise ValueError(f"unknown teacher {kind!r} (expected 'sface' or 'random')")


def teacher_cache_dir(kind: str, data_digest: str, views: int, cache: str | os.PathLike[str] | None = None) -> Path:
    digest = hashlib.sha256(f"{teacher_key(kind)}|{data_digest}|{views}".encode()).hexdigest()[:16]
    return cache_dir(cache) / f"teacher-{kind}-{digest}"


def embed_sface(crops: np.ndarray, views: int = 2) -> np.ndarray:
    """(N, views, 128) unit SFace features of RGB uint8 crops (view 1: mirror image)."""
    from cryptoface.eval.embedders import SFaceEmbedder

    emb = SFaceEmbedder()
    part = np.asarray(crops)
    out = np.zeros((len(part), views, TEACHER_DIM), np.float32)
    out[:, 0] = _unit(emb.embed(list(part)))
    if views > 1:
        out[:, 1] = _unit(emb.embed(list(part[:, :, ::-1])))
    return out


def _chunk_order(n_chunks: int) -> np.ndarray:
    return np.random.default_rng(12345).permutation(n_chunks)


def fill_teacher_cache(
    crops: np.ndarray,
    data_digest: str,
    kind: str = "sface",
    views: int = 2,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    time_limit_s: float | None = None,
) -> Path:
    """Compute the missing chunks (seeded random order), each written atomically; returns the folder."""
    folder = teacher_cache_dir(kind, data_digest, views, cache)
    folder.mkdir(parents=True, exist_ok=True)
    n_chunks = (len(crops) + CHUNK - 1) // CHUNK
    todo = [int(c) for c in _chunk_order(n_chunks) if not (folder / f"chunk-{c:05d}.npy").is_file()]
    t0 = time.monotonic()
    rng = np.random.default_rng(0)
    for c in tqdm(todo, desc=f"teacher ({kind}, {views} view(s))", unit="chunk", disable=not progress):
        if time_limit_s is not None and time.monotonic() - t0 > time_limit_s:
            break
        lo, hi = c * CHUNK, min((c + 1) * CHUNK, len(crops))
        if kind == "sface":
            arr = embed_sface(crops[lo:hi], views)
        else:
            arr = _unit(rng.standard_normal((hi - lo, views, TEACHER_DIM))).astype(np.float32)
        tmp = folder / f"chunk-{c:05d}.{os.getpid()}.tmp.npy"
        np.save(tmp, arr)
        os.replace(tmp, folder / f"chunk-{c:05d}.npy")
    return folder


def teacher_embeddings(
    crops: np.ndarray,
    data_digest: str,
    kind: str = "sface",
    views: int = 2,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
    require_complete: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """``(emb (N, views, 128) float32, available (N,) bool)``; fills the cache first when ``require_complete``."""
    if require_complete:
        fill_teacher_cache(crops, data_digest, kind, views, cache, progress)
    folder = teacher_cache_dir(kind, data_digest, views, cache)
    out = np.zeros((len(crops), views, TEACHER_DIM), np.float32)
    ok = np.zeros(len(crops), bool)
    n_chunks = (len(crops) + CHUNK - 1) // CHUNK
    for c in range(n_chunks):
        path = folder / f"chunk-{c:05d}.npy"
        if not path.is_file():
            continue
        lo, hi = c * CHUNK, min((c + 1) * CHUNK, len(crops))
        arr = np.load(path)
        if arr.shape != (hi - lo, views, TEACHER_DIM):
            raise DataError(f"{path}: shape {arr.shape}, expected {(hi - lo, views, TEACHER_DIM)}; delete it")
        out[lo:hi], ok[lo:hi] = arr, True
    if require_complete and not ok.all():
        raise DataError(f"teacher cache {folder} is incomplete")
    return out, ok
