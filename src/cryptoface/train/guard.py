"""LFW guard: no training crop may show a person of LFW's ``pairs.txt``.

The shared training set was screened when it was built (SFace against all 13,233 LFW photos, see
``faces-train/SOURCES.md``), but that screen ran outside this project with a slightly different
alignment. The training code repeats it with its own pipeline, so the rule holds for whatever folder it
is pointed at:

* image level: a crop is dropped when the cosine between its SFace teacher embedding and the SFace
  embedding of any LFW pair photo (aligned by :func:`cryptoface.eval.lfw.aligned_crops`, i.e. our YuNet
  pipeline and crop cache) is >= ``threshold``. Default 0.45, the build's calibrated value: on LFW itself
  a person's best match with another photo of the same person is >= 0.45 for 98.9 % of photos, so a crop
  of an LFW pair person is very likely caught; different people reach 0.45 for ~22 % of photos, so some
  innocent crops are dropped on purpose (cheap: they are a small share of the data). 0.5 would be the
  usual SFace verification operating point but lets more same-person photos through.
* identity level (labelled sources): the mean teacher embedding of a labelled identity is compared with
  the mean embedding of each LFW pair person; an identity matching at >= ``identity_threshold`` (0.5; on
  LFW split halves the same person scores >= 0.561, different people's 99th percentile is 0.573) is
  dropped entirely.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryptoface.eval import lfw as lfw_eval

DEFAULT_THRESHOLD = 0.45
DEFAULT_IDENTITY_THRESHOLD = 0.5


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def lfw_pair_embeddings(
    lfw_dir: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None, progress: bool = True
) -> tuple[list[str], np.ndarray]:
    """(relative paths, unit SFace embeddings (M, 128)) of every photo named in ``pairs.txt``.

    Crops come from the LFW crop cache of :mod:`cryptoface.eval.lfw` (same alignment as ``cryptoface eval
    lfw``); embeddings are cached in ``guard-sface-<hash>.npz`` next to it (seeded from the eval's SFace
    cache when its layout matches), so the photos are aligned and embedded at most once.
    """
    from cryptoface.eval.embedders import SFaceEmbedder

    pairs = lfw_eval.read_pairs(Path(lfw_dir) / "pairs.txt")
    names = sorted(set(pairs.left) | set(pairs.right))
    emb = SFaceEmbedder()
    crop_cache = lfw_eval.crop_cache_path(lfw_dir, cache)
    own = crop_cache.with_name(
        "guard-sface-" + hashlib.sha256(f"{crop_cache.name}|{emb.cache_key}".encode()).hexdigest()[:16] + ".npz"
    )
    feats: dict[str, np.ndarray] = {}
    if own.is_file():
        with np.load(own, allow_pickle=False) as data:
            feats = {str(p): f for p, f in zip(data["paths"], data["features"], strict=True)}
    else:
        try:  # reuse `cryptoface eval lfw --model sface`'s cache when its (private) layout matches
            feats = dict(lfw_eval._read_embeddings(lfw_dir, emb, cache, lfw_eval.LFW_FACE_SELECT))
        except Exception:
            feats = {}
    todo = [n for n in names if n not in feats]
    if todo or not own.is_file():
        crops, _ = lfw_eval.aligned_crops(lfw_dir, todo, cache, progress) if todo else ({}, [])
        for start in range(0, len(todo), 256):
            part = todo[start : start + 256]
            for rel, f in zip(part, emb.embed([crops[r] for r in part]), strict=True):
                feats[rel] = f
        own.parent.mkdir(parents=True, exist_ok=True)
        tmp = own.with_name(own.name + f".{os.getpid()}.tmp.npz")
        np.savez(tmp, paths=np.array(names), features=np.stack([feats[n] for n in names]))
        os.replace(tmp, own)
    return names, _unit(np.stack([feats[n] for n in names]))


@dataclass
class GuardResult:
    keep: np.ndarray  # (N,) bool over the rows checked
    max_cos: np.ndarray  # (N,) best cosine to any LFW pair photo
    nearest: list[str]  # LFW photo of the best match
    dropped_images: int
    dropped_identities: list[str]
    threshold: float
    identity_threshold: float

    def summary(self) -> dict:
        return {
            "checked": int(self.keep.size),
            "dropped": int((~self.keep).sum()),
            "dropped_image_level": self.dropped_images,
            "dropped_identities": self.dropped_identities,
            "threshold": self.threshold,
            "identity_threshold": self.identity_threshold,
        }


def person_of(relpath: str) -> str:
    return relpath.split("/", 1)[0]


def run_guard(
    train_emb: np.ndarray,
    identities: list[str],
    lfw_names: list[str],
    lfw_emb: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    identity_threshold: float = DEFAULT_IDENTITY_THRESHOLD,
) -> GuardResult:
    """Apply both rules to (N, D) teacher embeddings of training crops with their identity strings."""
    t = _unit(train_emb)
    lf = _unit(lfw_emb)
    best = np.full(len(t), -1.0)
    arg = np.zeros(len(t), np.int64)
    for start in range(0, len(t), 2048):
        sims = t[start : start + 2048] @ lf.T
        arg[start : start + 2048] = sims.argmax(axis=1)
        best[start : start + 2048] = sims.max(axis=1)
    keep = best < threshold
    dropped_images = int((~keep).sum())
    # identity level
    people = sorted({person_of(n) for n in lfw_names})
    pid = {p: i for i, p in enumerate(people)}
    person_mean = np.zeros((len(people), lf.shape[1]))
    for n, e in zip(lfw_names, lf, strict=True):
        person_mean[pid[person_of(n)]] += e
    person_mean = _unit(person_mean)
    ids = np.array(identities, dtype=object)
    dropped_ids = []
    for ident in sorted({i for i in identities if i}):
        rows = np.flatnonzero(ids == ident)
        if len(rows) < 2:
            continue  # single-image identities are covered by the image rule
        m = _unit(t[rows].mean(axis=0, keepdims=True))
        if float((person_mean @ m[0]).max()) >= identity_threshold:
            dropped_ids.append(ident)
            keep[rows] = False
    return GuardResult(
        keep=keep,
        max_cos=best,
        nearest=[lfw_names[i] for i in arg],
        dropped_images=dropped_images,
        dropped_identities=dropped_ids,
        threshold=threshold,
        identity_threshold=identity_threshold,
    )
