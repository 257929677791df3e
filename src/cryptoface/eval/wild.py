"""In-the-wild verification: pairs from whole identities of the training crops that training never sees.

LFW is one curated benchmark; choosing a model on it alone let a fine-tune drift from what the authors' weights
knew. The second measure comes from the CelebA identities of ``faces-train`` (celebrity photos in the wild, 239
identities of ~18 photos): a fixed hash of the identity name puts :data:`VALIDATION_PERCENT` % of them, whole,
in the validation set, and ``cryptoface train`` drops every crop of those identities (:func:`is_validation_identity`
is the one rule both use). Pairs: every genuine pair within a validation identity and every impostor pair across
two, so FAR = 1e-3 rests on ~10^6 impostor scores.

The crops take the client pipeline's path for aligned 112x112 inputs (:func:`cryptoface.face.pipeline.align_face`
returns them unchanged; the embedder resizes them to the model's input), as a client given such a crop would.
They were aligned by YuNet when the set was built, not re-detected here.

Uncertainty: the 95 % interval of TAR@FAR (and the thresholds) is a bootstrap over identities (identities drawn
with replacement; a genuine pair weighs its identity's count, an impostor pair the product of its two), because
pairs of one person are not independent.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from cryptoface.errors import DataError
from cryptoface.eval import metrics
from cryptoface.eval.embedders import Embedder
from cryptoface.match.threshold import FARS, far_key
from cryptoface.train.data import TrainIndex, decode_crop, iter_crop_bytes, read_index

VALIDATION_PERCENT = 40  # of the CelebA identities; the rest may be used for training
SPLIT_SALT = "cryptoface-wild-v1"  # changing it (or the percentage) changes the split: retrain after
WILD_SOURCE = "celeba"  # the only source with several photos per named identity
BOOTSTRAP = 200
MIN_IDENTITIES = 10


def is_validation_identity(identity: str) -> bool:
    """True for a CelebA identity held out of training for the in-the-wild validation (a fixed hash split)."""
    if not identity.startswith(WILD_SOURCE + ":"):
        return False
    digest = hashlib.sha256(f"{SPLIT_SALT}|{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100 < VALIDATION_PERCENT


@dataclass(frozen=True)
class WildSet:
    """The validation crops (N, 112, 112, 3) RGB uint8 and their identity labels (N,) as indices into ``names``."""

    crops: np.ndarray
    labels: np.ndarray
    names: tuple[str, ...]


def validation_rows(index: TrainIndex) -> list[int]:
    """Rows of ``index`` whose identity is in the validation split (identities with at least two crops)."""
    rows = [i for i, ident in enumerate(index.identity) if is_validation_identity(ident)]
    counts: dict[str, int] = {}
    for i in rows:
        counts[index.identity[i]] = counts.get(index.identity[i], 0) + 1
    return [i for i in rows if counts[index.identity[i]] >= 2]


def load_wild(train_dir: str | os.PathLike[str], progress: bool = True) -> WildSet:
    """Decode the validation crops of a ``faces-train`` folder; DataError when it holds too few identities."""
    index = read_index(train_dir)
    rows = validation_rows(index)
    names = tuple(sorted({index.identity[i] for i in rows}))
    if len(names) < MIN_IDENTITIES:
        raise DataError(f"{train_dir}: only {len(names)} validation identities with two or more crops "
                        f"(need {MIN_IDENTITIES}); is this the faces-train folder?")
    order = {r: k for k, r in enumerate(rows)}
    crops = np.zeros((len(rows), 112, 112, 3), np.uint8)
    bar = tqdm(total=len(rows), desc="reading validation crops", unit="img", disable=not progress)
    for i, data in iter_crop_bytes(index, rows):
        crops[order[i]] = decode_crop(data, f"{index.shard[i]}:{index.member[i]}")
        bar.update(1)
    bar.close()
    label_of = {n: k for k, n in enumerate(names)}
    labels = np.array([label_of[index.identity[r]] for r in rows], dtype=np.int64)
    return WildSet(crops, labels, names)


def pair_scores(embeddings: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cosine of every unordered pair: (scores, same, identity of the first, identity of the second)."""
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-300)
    a, b = np.triu_indices(len(e), k=1)
    scores = (e @ e.T)[a, b]  # (N, N) then the upper triangle: N ~ 2,000 is 32 MB, pairs of rows would be GBs
    return scores, labels[a] == labels[b], labels[a], labels[b]


def _threshold_at(imp_sorted: np.ndarray, weights_sorted: np.ndarray, far: float) -> float:
    """Smallest threshold whose weighted share of impostor scores strictly above it is at most ``far``."""
    total = weights_sorted.sum()
    above = total - np.cumsum(weights_sorted)  # weight strictly above imp_sorted[k] (ascending, ties aside)
    k = int(np.searchsorted(-above, -far * total))  # first k with above[k] <= far * total
    return float(imp_sorted[min(k, len(imp_sorted) - 1)])


def _tar(gen: np.ndarray, gen_w: np.ndarray, threshold: float) -> float:
    return float(gen_w[gen > threshold].sum() / max(gen_w.sum(), 1e-300))


def _interval(values: list[float]) -> list[float] | None:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def summarize_wild(scores: np.ndarray, same: np.ndarray, id_a: np.ndarray, id_b: np.ndarray, n_ids: int,
                   fars: tuple[float, ...] = FARS, bootstrap: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """EER, TAR and threshold at each FAR (point estimate over all pairs) and their identity-bootstrap 95 %
    intervals (None with ``bootstrap=0``); ``accuracy`` is 1 - EER, the balanced accuracy at the EER threshold
    (the classes are very unequal)."""
    e, e_thr = metrics.eer(scores, same)
    gen, gen_id = scores[same], id_a[same]
    order = np.argsort(scores[~same], kind="stable")
    imp, ia, ib = scores[~same][order], id_a[~same][order], id_b[~same][order]
    out: dict[str, Any] = {"accuracy": 1.0 - e, "accuracy_std": None, "eer": e, "eer_threshold": e_thr}
    rng = np.random.default_rng(seed)
    boot: dict[float, tuple[list[float], list[float]]] = {far: ([], []) for far in fars}
    for _ in range(bootstrap):
        w = np.bincount(rng.integers(0, n_ids, n_ids), minlength=n_ids).astype(np.float64)
        imp_w, gen_w = w[ia] * w[ib], w[gen_id]
        for far in fars:
            t = _threshold_at(imp, imp_w, far)
            boot[far][0].append(_tar(gen, gen_w, t))
            boot[far][1].append(t)
    for far in fars:
        thr = _threshold_at(imp, np.ones(len(imp)), far)
        key = far_key(far)
        out[f"tar_at_far_{key}"] = _tar(gen, np.ones(len(gen)), thr)
        out[f"threshold_at_far_{key}"] = thr
        out[f"tar_at_far_{key}_ci95"] = _interval(boot[far][0])
        out[f"threshold_at_far_{key}_ci95"] = _interval(boot[far][1])
    # the draws themselves: two models scored on the same pairs with the same seed share them, so their
    # difference has a paired interval (paired_difference)
    out["bootstrap_tar"] = {far_key(f): boot[f][0] for f in fars} if bootstrap else None
    out["bootstrap_seed"] = seed
    return out


def paired_difference(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """TAR(a) - TAR(b) at each FAR with a paired 95 % interval: both results must come from the same validation
    pairs and the same bootstrap draws (same identities, seed and count); DataError otherwise."""
    ba, bb = a.get("bootstrap_tar"), b.get("bootstrap_tar")
    keys = ("n_identities", "n_pairs", "bootstrap_seed")
    same = all(a.get(k) is not None and a.get(k) == b.get(k) for k in keys) and ba and bb and ba.keys() == bb.keys()
    same = same and all(len(ba[k]) == len(bb[k]) for k in ba)
    same = same and ("labels" not in a or "labels" not in b or np.array_equal(a["labels"], b["labels"]))
    if not same:
        raise DataError("a paired difference needs two results on the same validation pairs with the same bootstrap")
    out: dict[str, Any] = {}
    for key in ba:
        diffs = np.asarray(ba[key]) - np.asarray(bb[key])
        out[f"tar_at_far_{key}"] = a[f"tar_at_far_{key}"] - b[f"tar_at_far_{key}"]
        out[f"tar_at_far_{key}_ci95"] = _interval(list(diffs))
    return out


def evaluate_wild(train_dir: str | os.PathLike[str], embedder: Embedder, progress: bool = True,
                  wild: WildSet | None = None) -> dict[str, Any]:
    """The in-the-wild protocol for one embedder; returns the fields of the JSON report (fractions in [0, 1])."""
    t0 = time.perf_counter()
    wild = load_wild(train_dir, progress) if wild is None else wild
    feats = []
    for start in tqdm(range(0, len(wild.crops), 256), desc=f"embedding ({embedder.name})", unit="batch",
                      disable=not progress):
        feats.append(embedder.embed(list(wild.crops[start:start + 256])))
    result = wild_result(np.concatenate(feats), wild.labels)
    result.update(n_images=len(wild.crops), seconds=round(time.perf_counter() - t0, 2))
    return result


def wild_result(embeddings: np.ndarray, labels: np.ndarray, bootstrap: int = BOOTSTRAP) -> dict[str, Any]:
    """Metrics, counts and the pair scores of validation ``embeddings`` with identity ``labels`` (0..k-1);
    DataError with fewer than :data:`MIN_IDENTITIES` identities (no meaningful FAR, nor interval)."""
    n_ids = int(labels.max()) + 1 if len(labels) else 0
    if n_ids < MIN_IDENTITIES:
        raise DataError(f"only {n_ids} in-the-wild validation identities (need {MIN_IDENTITIES})")
    scores, same, a, b = pair_scores(embeddings, labels)
    result = summarize_wild(scores, same, a, b, n_ids, bootstrap=bootstrap)
    result.update(
        n_pairs=len(scores),
        n_genuine=int(same.sum()),
        n_impostor=int((~same).sum()),
        n_identities=n_ids,
        split=f"{SPLIT_SALT}: {VALIDATION_PERCENT} % of the {WILD_SOURCE} identities",
        scores=scores,
        labels=same,
    )
    return result


def calibration(result: dict[str, Any], far: float) -> dict[str, Any]:
    """The model metadata's ``threshold_detail`` for a threshold chosen at ``far`` on the validation impostors."""
    key = far_key(far)
    if f"threshold_at_far_{key}" not in result:
        raise DataError(f"no threshold at FAR {far:g} in this evaluation (have {', '.join(map(str, FARS))})")
    return {
        "rule": f"cosine threshold at FAR {key} on the in-the-wild validation impostor pairs (cryptoface.eval.wild)",
        "far": far,
        "threshold": result[f"threshold_at_far_{key}"],
        "threshold_ci95": result[f"threshold_at_far_{key}_ci95"],
        "tar": result[f"tar_at_far_{key}"],
        "tar_ci95": result[f"tar_at_far_{key}_ci95"],
        "thresholds": {far_key(f): result[f"threshold_at_far_{far_key(f)}"] for f in FARS},
        "eer": result["eer"],
        "split": result["split"],
        "genuine_pairs": result["n_genuine"],
        "impostor_pairs": result["n_impostor"],
        "identities": result["n_identities"],
    }


__all__ = [
    "MIN_IDENTITIES",
    "VALIDATION_PERCENT",
    "WildSet",
    "calibration",
    "evaluate_wild",
    "is_validation_identity",
    "load_wild",
    "pair_scores",
    "paired_difference",
    "summarize_wild",
    "validation_rows",
    "wild_result",
]
