"""The templates ``bench-match`` encrypts: the clear network output on LFW pairs, or synthetic embeddings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cryptoface.match.layout import EMBEDDING_DIM


@dataclass(frozen=True)
class PairTemplates:
    """Distinct images' embeddings and the pairs over them (``pairs[i]``: indices into ``embeddings``)."""

    names: list[str]
    embeddings: np.ndarray  # (images, 256), float64
    pairs: list[tuple[int, int]]
    same: np.ndarray  # genuine flag per pair
    source: str  # where they come from, for the report


def select_pairs(same: np.ndarray, fold: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` pairs, half genuine and half impostor, taken round-robin over the folds (in file order)."""
    groups = {}
    for genuine in (True, False):
        for k in np.unique(fold):
            groups[(genuine, int(k))] = list(np.nonzero((same == genuine) & (fold == k))[0])
    want = {True: n - n // 2, False: n // 2}
    out: list[int] = []
    for genuine in (True, False):
        taken = 0
        keys = [g for g in groups if g[0] == genuine]
        depth = 0
        while taken < want[genuine] and any(len(groups[g]) > depth for g in keys):
            for g in keys:
                if taken < want[genuine] and len(groups[g]) > depth:
                    out.append(int(groups[g][depth]))
                    taken += 1
            depth += 1
    return sorted(out)


def lfw_templates(lfw_dir: Path, model_path: Path, n_pairs: int, cache_dir: Path | None, progress: bool
                  ) -> PairTemplates:
    """The model's embeddings of ``n_pairs`` LFW pairs (:func:`select_pairs`).

    Embeddings come from the ``eval lfw`` cache when it holds them (same model file hash), else they are computed
    from the cached aligned crops with the model's numpy forward and added to the cache.
    """
    from cryptoface.eval import lfw
    from cryptoface.eval.embedders import FusedEmbedder

    pairs = lfw.read_pairs(Path(lfw_dir) / "pairs.txt")
    idx = select_pairs(pairs.same, pairs.fold, n_pairs)
    names = sorted({pairs.left[i] for i in idx} | {pairs.right[i] for i in idx})
    embedder = FusedEmbedder(model_path)
    select = lfw.LFW_FACE_SELECT
    feats = lfw._read_embeddings(lfw_dir, embedder, cache_dir, select)
    todo = [r for r in names if r not in feats]
    if todo:
        crops, _ = lfw.aligned_crops(lfw_dir, todo, cache_dir, progress, select)
        for r, f in zip(todo, embedder.embed([crops[r] for r in todo]), strict=True):
            feats[r] = f
        lfw._write_embeddings(lfw_dir, embedder, cache_dir, select, feats)
    pos = {r: k for k, r in enumerate(names)}
    emb = np.stack([np.asarray(feats[r], dtype=np.float64) for r in names])
    pair_idx = [(pos[pairs.left[i]], pos[pairs.right[i]]) for i in idx]
    same = np.array([bool(pairs.same[i]) for i in idx])
    folds = sorted({int(pairs.fold[i]) for i in idx})
    desc = (f"LFW pairs.txt ({lfw_dir}): {int(same.sum())} genuine + {int((~same).sum())} impostor pairs taken "
            f"round-robin over folds {folds} in file order")
    return PairTemplates(names, emb, pair_idx, same, desc)


def synthetic_templates(n_pairs: int, seed: int) -> PairTemplates:
    """Random 256-d embeddings with LFW-like squared norms; genuine pairs correlated, impostors not."""
    rng = np.random.default_rng(seed)
    embs, pairs, same = [], [], []
    for i in range(n_pairs):
        genuine = i % 2 == 0
        a = rng.standard_normal(EMBEDDING_DIM)
        u = a / np.linalg.norm(a)
        v = rng.standard_normal(EMBEDDING_DIM)
        v -= (v @ u) * u
        v /= np.linalg.norm(v)
        c = rng.uniform(0.3, 0.9) if genuine else rng.uniform(-0.15, 0.25)
        b = c * u + math.sqrt(1 - c * c) * v
        for e in (u, b):
            embs.append(e * math.sqrt(rng.uniform(120.0, 560.0)))
        pairs.append((2 * i, 2 * i + 1))
        same.append(genuine)
    names = [f"synthetic-{k}" for k in range(len(embs))]
    return PairTemplates(names, np.stack(embs), pairs, np.array(same), "synthetic random embeddings (no --lfw-dir)")
