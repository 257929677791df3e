"""Verification on a user CSV of pairs: columns ``image1,image2,same`` (paths relative to the CSV, same 1/0)."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from cryptoface.errors import CryptoFaceError, DataError
from cryptoface.eval import metrics
from cryptoface.eval.embedders import Embedder, cosine_scores
from cryptoface.face.pipeline import align_face

TRUE = {"1", "true", "yes", "same"}
FALSE = {"0", "false", "no", "different"}


def read_pairs_csv(csv_path: str | os.PathLike[str]) -> tuple[list[Path], list[Path], np.ndarray]:
    """Parse the CSV; returns absolute image paths (left, right) and the genuine flags."""
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"pairs CSV not found: {path}")
    base = path.resolve().parent
    left, right, same = [], [], []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {f.strip() for f in reader.fieldnames or []}
        if not {"image1", "image2", "same"} <= fields:
            raise DataError(f"{path}: the header must name the columns image1,image2,same (got {sorted(fields)})")
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            flag = row["same"].lower()
            if flag not in TRUE | FALSE:
                raise DataError(f"{path}:{line}: 'same' must be 1 or 0, got {row['same']!r}")
            if not row["image1"] or not row["image2"]:
                raise DataError(f"{path}:{line}: image1 and image2 must both be given")
            left.append(base / row["image1"])
            right.append(base / row["image2"])
            same.append(flag in TRUE)
    if not same:
        raise DataError(f"{path}: no pairs")
    return left, right, np.array(same, dtype=bool)


def evaluate_pairs(
    csv_path: str | os.PathLike[str], embedder: Embedder, threshold: float | None = None
) -> dict[str, Any]:
    """Score the CSV pairs; accuracy at the pooled EER threshold (and at ``threshold`` if given), EER, TAR.

    All rates are fractions in [0, 1]. ``accuracy_std`` is None: there are no folds.
    """
    t0 = time.perf_counter()
    left, right, same = read_pairs_csv(csv_path)
    if same.all() or not same.any():
        raise DataError(f"{csv_path}: needs at least one genuine (same=1) and one impostor (same=0) pair")
    unique = sorted(set(left) | set(right))
    crops = {}
    for p in unique:
        try:
            crops[p] = align_face(p)
        except CryptoFaceError as exc:
            raise DataError(f"{csv_path}: {p}: {exc}") from exc
    emb = dict(zip(unique, embedder.embed([crops[p] for p in unique]), strict=True))
    scores = cosine_scores(np.stack([emb[p] for p in left]), np.stack([emb[p] for p in right]))
    e, e_thr = metrics.eer(scores, same)
    result: dict[str, Any] = {
        "accuracy": metrics.accuracy(scores, same, e_thr),
        "accuracy_std": None,
        "eer": e,
        "tar_at_far_1e-2": metrics.tar_at_far(scores, same, 1e-2),
        "tar_at_far_1e-3": metrics.tar_at_far(scores, same, 1e-3),
        "n_pairs": len(scores),
        "eer_threshold": e_thr,
        "pair_scores": [float(s) for s in scores],
    }
    if threshold is not None:
        result["threshold"] = float(threshold)
        result["accuracy_at_threshold"] = metrics.accuracy(scores, same, threshold)
    result.update(seconds=round(time.perf_counter() - t0, 2), scores=scores, labels=same)
    return result
